"""DETR as a task: pictures with boxes in, the set loss out (Hungarian matching, CE + L1 + GIoU, auxiliary
layers); COCO AP on the held-out split with pictures of detections and decoder attention.

Shards carry ``.jpg`` and ``.json`` (boxes in COCO xywh pixels, category ids, crowd flags) as ``tvp ingest
coco`` writes them; the manifest's ``classes`` names the category ids. The class index is the category id
(COCO's are sparse, 1..90), so the model has max id + 1 classes plus "no object".

Batches keep fixed shapes: every picture is augmented (box-aware multi-scale resize, crop, flip, drawn from
its own generator) and padded to ``augment.pad_to`` with a mask; boxes are padded to ``max_objects`` with
counts (``components/data/loading/detection_augment.py``). The loss normalises by the number of boxes across
all workers, as DETR does.

Fine-tuning onto a new label set keeps everything but the class head.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from components.data.loading.detection_augment import DetectionAugmentConfig, detection_batch
from components.evaluation.coco_map import GROUND_TRUTH_COLUMNS, coco_metrics, coco_results_json, detection_outputs
from components.losses.detection import DetectionLoss, targets_from_padded
from components.losses.matcher import HungarianMatcher
from components.models.detr import DETR, DetrConfig
from components.tasks.task import EvalFacts, Task
from components.training.checkpoint import CheckpointError

CLASS_HEAD = "class_embed."
TRAINING_COLUMNS = ("image", "mask", "boxes", "labels", "num_boxes")
PICTURE_SAMPLES = 6  # held-out pictures drawn with their detections at each evaluation


@dataclass
class DetrLossConfig:
    """The matcher's costs and the loss's weights (DETR's defaults)."""

    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    eos_coef: float = 0.1  # class weight of "no object" in the cross-entropy
    weight_ce: float = 1.0
    weight_bbox: float = 5.0
    weight_giou: float = 2.0

    __pydantic_config__ = {"extra": "forbid"}


@dataclass
class DetrTaskConfig:
    model: DetrConfig = field(default_factory=DetrConfig)  # num_classes follows classes
    classes: dict[int, str] = field(default_factory=dict)  # category id → name; empty: the training set's
    augment: DetectionAugmentConfig = field(default_factory=DetectionAugmentConfig)
    loss: DetrLossConfig = field(default_factory=DetrLossConfig)
    max_objects: int = 100  # boxes kept per training picture (more are counted and left out)
    max_eval_objects: int = 300  # ground-truth boxes per held-out picture (more is an error: it would change AP)
    score_threshold: float = 0.5  # the registered model returns detections scoring at least this

    __pydantic_config__ = {"extra": "forbid"}

    def __post_init__(self) -> None:
        if self.classes:
            wanted = max(self.classes) + 1
            if self.model.num_classes != wanted:
                self.model = replace(self.model, num_classes=wanted)


def _example_png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 0, 0)).save(out, format="PNG")
    return out.getvalue()


class DetrTask(Task):
    """Batches hold ``image`` (B, 3, P, P), ``mask`` (B, P, P) True on padding, ``boxes`` (B, M, 4) normalised
    cxcywh, ``labels`` (B, M) category ids and ``num_boxes`` (B,)."""

    name = "detr"
    config_type = DetrTaskConfig
    columns = ("jpg", "json")
    eval_columns = ("jpg", "json")
    backbone_prefixes = ("backbone.",)
    inference_inputs = {"image": "binary"}
    inference_example = {"image": [_example_png()]}

    def __init__(self, config: Any, files: dict[str, str] | None = None):
        super().__init__(config, files)
        loss = config.loss
        self.criterion = DetectionLoss(config.model.num_classes,
                                       HungarianMatcher(loss.cost_class, loss.cost_bbox, loss.cost_giou),
                                       loss.eos_coef, loss.weight_ce, loss.weight_bbox, loss.weight_giou)

    # -- data facts -------------------------------------------------------------------------------------------
    def fit_to_data(self, training_facts: Callable[[], EvalFacts]) -> "DetrTask":
        """Category names from the training set's manifest when the config has none."""
        if self.config.classes:
            return self
        classes = training_facts().classes
        if not classes:
            raise CheckpointError("DETR training needs a training set whose manifest names its categories "
                                  "(tvp ingest coco writes them)")
        return type(self)(replace(self.config, classes=dict(classes)), self.files)

    # -- model ------------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        if not self.config.classes:
            raise CheckpointError("this DETR has no categories: task.classes is empty (train on a set whose "
                                  "manifest names them)")
        return DETR(self.config.model)

    def adapt_weights(self, weights: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """Everything carries over but a class head of another size, which starts fresh."""
        target = model.state_dict()
        kept = {k: v for k, v in weights.items()
                if not (k.startswith(CLASS_HEAD) and (k not in target or v.shape != target[k].shape))}
        return super().adapt_weights(kept, model)

    # -- training ---------------------------------------------------------------------------------------------
    def transform_batch(self, batch: dict[str, np.ndarray],
                        rngs: Sequence[np.random.Generator] | None = None) -> dict[str, np.ndarray]:
        out = detection_batch(list(batch["jpg"]), list(batch["json"]), rngs, self.config.augment,
                              self.config.max_objects, ground_truth=False)
        self._check_labels(out["labels"], out["num_boxes"])
        return {k: out[k] for k in TRAINING_COLUMNS}

    def _check_labels(self, labels: np.ndarray, counts: np.ndarray) -> None:
        real = labels[np.arange(labels.shape[1])[None, :] < counts[:, None]]
        if real.size and (real.min() < 0 or real.max() >= self.config.model.num_classes):
            raise CheckpointError(f"category id {int(real.max())} in the data, but this DETR knows ids below "
                                  f"{self.config.model.num_classes}: fine-tune with task.classes empty to refit")

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        outputs = model(batch["image"], batch["mask"])
        targets = targets_from_padded(batch["labels"], batch["boxes"], batch["num_boxes"])
        terms = self.criterion(outputs, targets)
        shown = ("loss", "loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error")
        return terms["loss"], {name: float(terms[name].detach()) for name in shown}

    # -- evaluation -------------------------------------------------------------------------------------------
    def eval_transform(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = detection_batch(list(batch["jpg"]), list(batch["json"]), None, self.config.augment,
                              self.config.max_objects, ground_truth=True, max_gt=self.config.max_eval_objects)
        return {k: v for k, v in out.items() if k not in ("boxes", "labels", "num_boxes", "num_truncated")}

    @torch.no_grad()
    def eval_step(self, model: nn.Module, batch: dict[str, torch.Tensor], context: Any) -> dict[str, torch.Tensor]:
        outputs = model(batch["image"], batch["mask"])
        return detection_outputs(outputs["logits"], outputs["boxes"], batch["orig_size"], batch["image_id"],
                                 top_k=self.config.model.num_queries,
                                 ground_truth={c: batch[c] for c in GROUND_TRUTH_COLUMNS})

    def eval_reduce(self, outputs: dict[str, np.ndarray], facts: EvalFacts) -> dict[str, float]:
        metrics = coco_metrics(outputs, classes=facts.classes or self.config.classes)
        return {k: (0.0 if v != v else v) for k, v in metrics.items()}  # NaN (undefined) logged as 0

    def eval_documents(self, outputs: dict[str, np.ndarray], facts: EvalFacts) -> dict[str, Any]:
        """The held-out detections in COCO's results format (what pycocotools' ``loadRes`` and the COCO server
        read): every image's top ``num_queries`` boxes in its own pixels, with category ids and scores."""
        return {"coco_results": coco_results_json(outputs)}

    @torch.no_grad()
    def visualize(self, model: nn.Module, samples: list[dict[str, bytes]], facts: EvalFacts) -> Any:
        """Held-out pictures with predicted (red) and true (green) boxes, and the last decoder layer's attention
        of the first picture's best queries over its feature map."""
        from components.viz.detections import decoder_attention_picture, detections_picture

        samples = samples[:PICTURE_SAMPLES]
        if not samples:
            return None
        batch = {k: torch.from_numpy(v) for k, v in
                 self.eval_transform({c: np.array([s[c] for s in samples], dtype=object)
                                      for c in self.eval_columns}).items()}
        outputs = _unwrap(model)(batch["image"], batch["mask"], output_attentions=True)
        found = detection_outputs(outputs["logits"], outputs["boxes"], batch["orig_size"], batch["image_id"],
                                  top_k=self.config.model.num_queries,
                                  ground_truth={c: batch[c] for c in GROUND_TRUTH_COLUMNS})
        pictures = {"detections": detections_picture([s["jpg"] for s in samples], found, self.config.classes,
                                                     self.config.score_threshold)}
        best = outputs["logits"][0].softmax(-1)[:, :-1].max(-1).values.topk(min(4, self.config.model.num_queries))
        attention = outputs["cross_attentions"][-1][0]  # (heads, Q, h, w) or (Q, h, w)
        attention = attention.mean(0) if attention.dim() == 4 else attention
        cells = (~outputs["feature_mask"][0]).nonzero()
        extent = (int(cells[:, 0].max()) + 1, int(cells[:, 1].max()) + 1) if len(cells) else None
        order = found["det_scores"][0].argsort(descending=True)[: len(best.indices)]
        pictures["decoder_attention"] = decoder_attention_picture(
            samples[0]["jpg"], attention[best.indices].cpu().numpy(), found["det_boxes"][0][order].cpu().numpy(),
            [f"{self.config.classes.get(int(found['det_labels'][0][i]), '?')} "
             f"{float(found['det_scores'][0][i]):.2f}" for i in order], extent=extent)
        return pictures

    # -- inference --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: nn.Module, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``image`` (encoded bytes) → ``boxes`` (pixel xyxy of the input image), ``scores``, ``labels`` (category
        ids) and ``names``, for detections scoring at least ``score_threshold``."""
        from PIL import Image

        images = [bytes(r["image"]) for r in records]
        metas = []
        for i, data in enumerate(images):
            width, height = Image.open(io.BytesIO(data)).size
            metas.append({"image_id": i, "width": width, "height": height, "boxes": [], "category_ids": []})
        batch = {k: torch.from_numpy(v) for k, v in
                 detection_batch(images, metas, None, self.config.augment, 1, ground_truth=False).items()}
        outputs = model(batch["image"], batch["mask"])
        found = detection_outputs(outputs["logits"], outputs["boxes"], batch["orig_size"], batch["image_id"],
                                  top_k=self.config.model.num_queries)
        results = []
        for i in range(len(records)):
            keep = found["det_scores"][i] >= self.config.score_threshold
            labels = found["det_labels"][i][keep].tolist()
            results.append({"boxes": found["det_boxes"][i][keep].tolist(),
                            "scores": found["det_scores"][i][keep].tolist(), "labels": labels,
                            "names": [self.config.classes.get(label, str(label)) for label in labels]})
        return results


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)
