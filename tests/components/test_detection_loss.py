"""DETR's matching and set loss against torchvision's GIoU and transformers' DETR matcher and loss.

The normaliser is checked against DETR's definition (boxes summed over workers ÷ world size),
not against transformers: under accelerate, transformers' ``reduce`` already averages, and it
divides by the world size a second time.

transformers is the reference and is imported inside the tests that use it (its import
alone takes seconds).
"""

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision.ops

from components.losses.box_ops import (box_area, box_cxcywh_to_xyxy, box_iou, box_xywh_to_xyxy, box_xyxy_to_cxcywh,
                                       generalized_box_iou)
from components.losses.detection import DetectionLoss, mean_box_count, targets_from_padded
from components.losses.matcher import HungarianMatcher
from components.tasks.targets import pad_items

NUM_CLASSES = 4


def random_xyxy(n, generator):
    centre, size = torch.rand(n, 2, generator=generator), 0.05 + 0.5 * torch.rand(n, 2, generator=generator)
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)  # (n, 4), x1 > x0, y1 > y0


def random_outputs(batch=3, queries=6, aux_layers=2, seed=0):
    """Model-like outputs: last layer plus aux layers, logits (B, Q, C+1) and sigmoid cxcywh boxes."""
    g = torch.Generator().manual_seed(seed)
    layers = [{"logits": torch.randn(batch, queries, NUM_CLASSES + 1, generator=g),
               "boxes": torch.randn(batch, queries, 4, generator=g).sigmoid()} for _ in range(aux_layers + 1)]
    return {**layers[-1], "aux": layers[:-1]}


def random_targets(counts, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"labels": torch.randint(0, NUM_CLASSES, (k,), generator=g),
             "boxes": box_xyxy_to_cxcywh(random_xyxy(k, g))} for k in counts]


# -- box operations -----------------------------------------------------------------------------------------

def test_box_conversions_agree_with_torchvision_and_invert():
    g = torch.Generator().manual_seed(0)
    xyxy = random_xyxy(10, g)
    cxcywh = box_xyxy_to_cxcywh(xyxy)
    torch.testing.assert_close(cxcywh, torchvision.ops.box_convert(xyxy, "xyxy", "cxcywh"))
    torch.testing.assert_close(box_cxcywh_to_xyxy(cxcywh), xyxy)
    xywh = torchvision.ops.box_convert(xyxy, "xyxy", "xywh")
    torch.testing.assert_close(box_xywh_to_xyxy(xywh), xyxy)
    torch.testing.assert_close(box_area(xyxy), torchvision.ops.box_area(xyxy))
    # leading batch dimensions pass through
    assert box_cxcywh_to_xyxy(cxcywh.view(2, 5, 4)).shape == (2, 5, 4)


def test_iou_and_generalized_iou_equal_torchvision_on_valid_boxes():
    g = torch.Generator().manual_seed(0)
    a, b = random_xyxy(7, g), random_xyxy(5, g)
    b[0] = a[0]  # an identical pair: GIoU 1
    b[1] = torch.tensor([2.0, 2.0, 3.0, 3.0])  # far from all: GIoU near -1
    iou, union = box_iou(a, b)
    torch.testing.assert_close(iou, torchvision.ops.box_iou(a, b), atol=1e-6, rtol=0)
    torch.testing.assert_close(union, box_area(a)[:, None] + box_area(b)[None] - iou * union)
    giou = generalized_box_iou(a, b)
    assert giou.shape == (7, 5)
    torch.testing.assert_close(giou, torchvision.ops.generalized_box_iou(a, b), atol=1e-6, rtol=0)
    assert giou[0, 0].item() == pytest.approx(1.0) and giou.min() >= -1
    # half precision is computed in float32
    assert generalized_box_iou(a.half(), b.half()).dtype == torch.float32


def test_generalized_iou_of_degenerate_boxes_is_finite_where_torchvision_is_nan():
    boxes = torch.tensor([[0.1, 0.1, 0.4, 0.5],   # a proper box
                          [0.2, 0.2, 0.2, 0.6],   # zero width
                          [0.3, 0.3, 0.7, 0.3],   # zero height
                          [0.5, 0.5, 0.5, 0.5],   # a point
                          [0.2, 0.2, 0.2, 0.6]], requires_grad=True)  # the zero-width box again
    reference = torchvision.ops.generalized_box_iou(boxes.detach(), boxes.detach())
    giou = generalized_box_iou(boxes, boxes)
    finite = reference.isfinite()
    assert not finite.all()  # torchvision has NaN for pairs with zero union, e.g. the point with itself
    torch.testing.assert_close(giou[finite], reference[finite], atol=1e-6, rtol=0)
    assert giou.isfinite().all() and (giou >= -1).all() and (giou <= 1).all()
    assert giou[1, 4] == 0 and giou[3, 3] == 0  # zero union and zero enclosing area: IoU 0, no penalty
    giou.sum().backward()
    assert boxes.grad.isfinite().all()


# -- matcher ------------------------------------------------------------------------------------------------

def reference_targets(targets):
    return [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]


def test_matcher_assignments_equal_transformers_detr_matcher():
    from transformers.loss.loss_for_object_detection import HungarianMatcher as DetrHungarianMatcher

    mine, theirs = HungarianMatcher(1, 5, 2), DetrHungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2)
    for seed, counts in enumerate([(3, 0, 5), (1, 6, 2), (8, 4, 0)]):  # an empty image; more targets than queries
        outputs, targets = random_outputs(seed=seed), random_targets(counts, seed=seed + 10)
        got = mine(outputs["logits"], outputs["boxes"], targets)
        expected = theirs({"logits": outputs["logits"], "pred_boxes": outputs["boxes"]}, reference_targets(targets))
        for (i, j), (ri, rj), k in zip(got, expected, counts):
            assert i.dtype == j.dtype == torch.int64 and len(i) == min(6, k)
            assert torch.equal(i, ri) and torch.equal(j, rj)
    # other weights too
    outputs, targets = random_outputs(seed=5), random_targets((4, 2, 3), seed=6)
    got = HungarianMatcher(2, 1, 0.5)(outputs["logits"], outputs["boxes"], targets)
    expected = DetrHungarianMatcher(2, 1, 0.5)({"logits": outputs["logits"], "pred_boxes": outputs["boxes"]},
                                               reference_targets(targets))
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(got, expected))


def test_matcher_handles_a_batch_without_targets_and_rejects_all_zero_weights():
    outputs = random_outputs()
    assignments = HungarianMatcher()(outputs["logits"], outputs["boxes"], random_targets((0, 0, 0)))
    assert [(len(i), len(j)) for i, j in assignments] == [(0, 0)] * 3
    with pytest.raises(ValueError):
        HungarianMatcher(0, 0, 0)


# -- set loss -----------------------------------------------------------------------------------------------

def transformers_detr_loss(outputs, targets, eos=0.1, costs=(1, 5, 2), weights=(5, 2)):
    """transformers' DETR loss (the one DetrForObjectDetection calls), the aux loss on; DETR's weights by default."""
    from transformers import DetrConfig
    from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss
    from transformers.loss.loss_utils import LOSS_MAPPING

    # DetrForObjectDetection has no entry of its own: its class name resolves to this one
    assert "DetrForObjectDetection" not in LOSS_MAPPING and LOSS_MAPPING["ForObjectDetection"] is ForObjectDetectionLoss

    layers = [*outputs["aux"], outputs]
    config = DetrConfig(num_labels=NUM_CLASSES, decoder_layers=len(layers), auxiliary_loss=True,
                        use_pretrained_backbone=False, eos_coefficient=eos, class_cost=costs[0], bbox_cost=costs[1],
                        giou_cost=costs[2], bbox_loss_coefficient=weights[0], giou_loss_coefficient=weights[1])
    loss, terms, _ = ForObjectDetectionLoss(
        outputs["logits"], reference_targets(targets), outputs["logits"].device, outputs["boxes"], config,
        torch.stack([layer["logits"] for layer in layers]), torch.stack([layer["boxes"] for layer in layers]))
    return loss, terms


def leaf_outputs(outputs):
    """The same outputs with every tensor a fresh leaf, to compare gradients."""
    copy = lambda layer: {k: layer[k].detach().clone().requires_grad_() for k in ("logits", "boxes")}  # noqa: E731
    return {**copy(outputs), "aux": [copy(layer) for layer in outputs["aux"]]}


@pytest.mark.parametrize("counts, eos, costs, weights", [
    ((3, 0, 5), 0.1, (1, 5, 2), (5, 2)),  # DETR's settings, an image without targets
    ((8, 2, 1), 0.25, (2, 1, 3), (3, 1)),  # other settings, more targets than queries
])
def test_loss_terms_and_gradients_equal_transformers_detr_loss(counts, eos, costs, weights):
    outputs, targets = random_outputs(batch=3, queries=6, aux_layers=2), random_targets(counts)
    mine, theirs = leaf_outputs(outputs), leaf_outputs(outputs)
    criterion = DetectionLoss(NUM_CLASSES, HungarianMatcher(*costs), eos_coef=eos, weight_ce=1,
                              weight_bbox=weights[0], weight_giou=weights[1])
    losses = criterion(mine, targets)
    reference_loss, reference = transformers_detr_loss(theirs, targets, eos, costs, weights)
    expected_keys = {f"{name}{suffix}" for name in ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error")
                     for suffix in ("", "_0", "_1")}
    assert set(reference) == expected_keys
    assert set(losses) == expected_keys | {"class_error", "loss"}
    for key, value in reference.items():
        torch.testing.assert_close(losses[key], torch.as_tensor(value, dtype=torch.float32), atol=1e-5, rtol=0,
                                   msg=key)
    torch.testing.assert_close(losses["loss"], reference_loss, atol=1e-5, rtol=0)
    losses["loss"].backward()
    reference_loss.backward()
    for layer, reference_layer in zip([mine, *mine["aux"]], [theirs, *theirs["aux"]]):
        for key in ("logits", "boxes"):
            torch.testing.assert_close(layer[key].grad, reference_layer[key].grad, atol=1e-6, rtol=1e-5)
    assert 0 <= losses["class_error"] <= 100


def test_loss_without_targets_or_aux_layers_is_the_no_object_cross_entropy():
    outputs = random_outputs(aux_layers=0)
    del outputs["aux"]
    outputs["logits"].requires_grad_()
    losses = DetectionLoss(NUM_CLASSES)(outputs, random_targets((0, 0, 0)))
    assert set(losses) == {"loss_ce", "loss_bbox", "loss_giou", "cardinality_error", "class_error", "loss"}
    no_object = torch.full(outputs["logits"].shape[:2], NUM_CLASSES)
    torch.testing.assert_close(losses["loss_ce"], torch.nn.functional.cross_entropy(outputs["logits"].transpose(1, 2),
                                                                                    no_object))
    assert losses["loss_bbox"] == 0 and losses["loss_giou"] == 0 and losses["class_error"] == 0
    losses["loss"].backward()
    assert outputs["logits"].grad.isfinite().all()


def test_bf16_outputs_are_scored_in_float32_and_a_wrong_class_count_is_refused():
    outputs, targets = random_outputs(aux_layers=1), random_targets((2, 1, 3))
    full = DetectionLoss(NUM_CLASSES)(outputs, targets)
    half = DetectionLoss(NUM_CLASSES)({**{k: outputs[k].bfloat16() for k in ("logits", "boxes")},
                                       "aux": [{k: v.bfloat16() for k, v in outputs["aux"][0].items()}]}, targets)
    assert half["loss"].dtype == torch.float32
    torch.testing.assert_close(half["loss"], full["loss"], atol=0.05, rtol=0.02)
    with pytest.raises(ValueError, match="num_classes"):
        DetectionLoss(NUM_CLASSES + 1)(outputs, targets)


def test_targets_from_padded_batch():
    labels, counts = pad_items([np.array([1, 3]), np.array([], dtype=np.int64), np.array([2])], max_items=4)
    boxes, _ = pad_items([np.full((2, 4), 0.5), np.zeros((0, 4)), np.full((1, 4), 0.25)], max_items=4)
    targets = targets_from_padded(torch.as_tensor(labels), torch.as_tensor(boxes), torch.as_tensor(counts))
    assert [t["labels"].tolist() for t in targets] == [[1, 3], [], [2]]
    assert [tuple(t["boxes"].shape) for t in targets] == [(2, 4), (0, 4), (1, 4)]
    assert targets[0]["labels"].dtype == torch.int64


# -- the normaliser across workers --------------------------------------------------------------------------

def _normaliser_worker(rank, world, init_file, results):
    torch.set_num_threads(1)  # as DataLoader's forked workers do: the parent's OpenMP pool did not survive the fork
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    counts = {0: (3, 0), 1: (6, 1)}[rank]  # two rounds: 3 and 6 boxes, then 0 and 1
    means = [mean_box_count(count).item() for count in counts]
    # the loss divides this worker's box terms by the mean over workers, not by its own count
    outputs, targets = random_outputs(aux_layers=0, seed=rank), random_targets((counts[0], 0, 0), seed=rank)
    loss = DetectionLoss(NUM_CLASSES)(outputs, targets)
    alone = DetectionLoss(NUM_CLASSES)(outputs, targets, num_boxes=1.0)
    results.put((rank, means, (loss["loss_bbox"] / alone["loss_bbox"]).item()))
    dist.destroy_process_group()


def test_box_count_normaliser_is_the_mean_over_two_gloo_workers(tmp_path):
    # forked, not spawned: a spawned worker re-imports torch and torchvision, ~7 s each on 2 cores
    results = mp.get_context("fork").SimpleQueue()
    mp.start_processes(_normaliser_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, start_method="fork")
    got = sorted(results.get() for _ in range(2))
    for rank, means, ratio in got:
        assert means == [4.5, 1.0]  # (3 + 6) / 2, and (0 + 1) / 2 clamped to 1
        assert ratio == pytest.approx(1 / 4.5)
    # without a process group: this process's count, clamped
    assert mean_box_count(0).item() == 1.0 and mean_box_count(torch.tensor(7)).item() == 7.0
    assert math.isclose(mean_box_count(2.5).item(), 2.5)
