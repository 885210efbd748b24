import math

import pytest
import torch

from components.losses.contrastive import clip_loss, supcon_loss


def test_clip_loss_matches_a_hand_computed_value():
    # Two pairs; image 0 matches text 0 exactly, image 1 is orthogonal to text 0.
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = torch.tensor(2.0)
    # logits = 2 * image @ text.T = [[2, 1.2], [0, 1.6]]
    row0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2)))
    row1 = -math.log(math.exp(1.6) / (math.exp(0) + math.exp(1.6)))
    col0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))
    col1 = -math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    expected = ((row0 + row1) / 2 + (col0 + col1) / 2) / 2
    assert math.isclose(clip_loss(image, text, scale).item(), expected, rel_tol=1e-6)


def test_clip_loss_is_symmetric_and_falls_as_pairs_align():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(8, 4), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(8, 4), dim=-1)
    scale = torch.tensor(10.0)
    assert torch.isclose(clip_loss(a, b, scale), clip_loss(b, a, scale))
    assert clip_loss(a, a, scale) < clip_loss(a, b, scale)


# -- across workers --------------------------------------------------------------------------------------------
# Two gloo workers, forked (a spawned worker re-imports torch, seconds each on 2 cores), share one global batch
# of GLOBAL pairs: worker r holds rows r·LOCAL .. (r+1)·LOCAL. Each worker reports plain lists through a queue.

WORLD, LOCAL, IN, EMB = 2, 4, 6, 5
GLOBAL = WORLD * LOCAL


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return torch.randn(GLOBAL, IN, generator=generator), torch.randn(GLOBAL, IN, generator=generator)


class _TinyDualEncoder(torch.nn.Module):
    """Two linear towers and a learned temperature: enough parameters for DDP to average."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image, self.text = torch.nn.Linear(IN, EMB), torch.nn.Linear(IN, EMB)
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(5.0)))

    def forward(self, images, texts):
        norm = torch.nn.functional.normalize
        return norm(self.image(images), dim=-1), norm(self.text(texts), dim=-1), self.log_scale.exp()


def _grads(model) -> dict[str, list]:
    return {name: p.grad.tolist() for name, p in model.named_parameters()}


def _open_clip_loss_class():
    """open_clip's ClipLoss from its loss module alone: importing the package pulls in timm and the hub
    (~10 s); loss.py itself needs torch only."""
    import importlib.util
    from pathlib import Path

    path = Path(importlib.util.find_spec("open_clip").submodule_search_locations[0]) / "loss.py"
    spec = importlib.util.spec_from_file_location("open_clip_loss_alone", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ClipLoss


def _clip_worker(rank, world, init_file, results, ClipLoss):
    import torch.distributed as dist

    torch.set_num_threads(1)  # the parent's OpenMP pool does not survive the fork
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    images, texts = _global_batch()
    mine = slice(rank * LOCAL, (rank + 1) * LOCAL)
    out = {"rank": rank}
    for local_loss in (False, True):
        # (1) parameter gradients averaged over workers as DDP's reducer averages them (DDP itself would import
        # torch._dynamo in each worker: seconds on 2 cores)
        model = _TinyDualEncoder()
        loss = clip_loss(*model(images[mine], texts[mine]), local_loss=local_loss)
        loss.backward()
        for param in model.parameters():
            dist.all_reduce(param.grad)
            param.grad /= world
        out[f"ddp_{local_loss}"] = {"loss": loss.item(), "grads": _grads(model)}
        # (2) the loss on leaf embeddings, beside open_clip's, with each one's gradients on this worker
        sides = {}
        for name, fn in (("mine", lambda i, t, s: clip_loss(i, t, s, local_loss=local_loss)),
                         ("open_clip", ClipLoss(local_loss=local_loss, gather_with_grad=True, rank=rank,
                                                world_size=world))):
            image_emb, text_emb, scale = (x.detach().requires_grad_() for x in _TinyDualEncoder()(
                images[mine], texts[mine]))
            loss = fn(image_emb, text_emb, scale)
            loss.backward()
            sides[name] = [loss.item(), image_emb.grad.tolist(), text_emb.grad.tolist(), scale.grad.item()]
        out[f"leaf_{local_loss}"] = sides
    results.put(out)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    import torch.multiprocessing as mp

    ClipLoss = _open_clip_loss_class()
    results = mp.get_context("fork").SimpleQueue()
    init = tmp_path_factory.mktemp("clip_dist") / "init"
    mp.start_processes(_clip_worker, args=(WORLD, str(init), results, ClipLoss), nprocs=WORLD, start_method="fork")
    return sorted((results.get() for _ in range(WORLD)), key=lambda r: r["rank"])


def _close(a, b) -> bool:
    return torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("local_loss", [False, True])
def test_ddp_averaged_gradients_across_two_workers_equal_one_process_on_the_global_batch(two_workers, local_loss):
    model = _TinyDualEncoder()
    images, texts = _global_batch()
    single = clip_loss(*model(images, texts))  # no process group here: the plain loss of all 8 pairs
    single.backward()
    expected = _grads(model)
    runs = [w[f"ddp_{local_loss}"] for w in two_workers]
    for run in runs:  # DDP has averaged the gradients: every worker holds the global batch's
        for name, grad in expected.items():
            assert _close(run["grads"][name], grad), name
    if local_loss:  # each worker's loss covers its own rows; their mean is the global loss
        assert math.isclose(sum(r["loss"] for r in runs) / WORLD, single.item(), rel_tol=1e-6)
    else:  # every worker computes the global loss itself
        assert all(math.isclose(r["loss"], single.item(), rel_tol=1e-6) for r in runs)


@pytest.mark.parametrize("local_loss", [False, True])
def test_loss_and_gradients_on_each_worker_equal_open_clips_gather_with_grad(two_workers, local_loss):
    # Like for like: open_clip's ClipLoss(gather_with_grad=True) returns, per worker, the same quantity as
    # clip_loss (global mean without local_loss, the mean over the worker's own rows with it), and its
    # gather's backward sums gradients over workers as ours does; so each worker's loss, its gradients on its
    # own (leaf) embeddings and on the logit scale, before any DDP averaging, are compared as they are.
    for worker in two_workers:
        mine, theirs = worker[f"leaf_{local_loss}"]["mine"], worker[f"leaf_{local_loss}"]["open_clip"]
        assert math.isclose(mine[0], theirs[0], rel_tol=1e-6)
        for ours, reference in zip(mine[1:], theirs[1:]):
            assert _close(ours, reference)


def test_one_process_equals_open_clips_clip_loss_with_world_size_1():
    ClipLoss = _open_clip_loss_class()
    generator = torch.Generator().manual_seed(3)
    norm = torch.nn.functional.normalize
    inputs = [norm(torch.randn(6, 5, generator=generator), dim=-1) for _ in range(2)] + [torch.tensor(14.3)]
    ours = [x.clone().requires_grad_() for x in inputs]
    theirs = [x.clone().requires_grad_() for x in inputs]
    a, b = clip_loss(*ours), ClipLoss(world_size=1)(*theirs)
    a.backward(), b.backward()
    assert torch.isclose(a, b)
    for x, y in zip(ours, theirs):
        assert torch.allclose(x.grad, y.grad, atol=1e-7)


# -- supervised contrastive ------------------------------------------------------------------------------------

def test_supcon_matches_a_hand_computed_value_and_leaves_out_anchors_without_positives():
    # One view each; samples 0 and 1 share a class, sample 2 is alone in its class (no positive: left out).
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([4, 4, 9])
    # temperature 1: the logits are the cosine similarities; self is out of every denominator
    anchor0 = -math.log(math.exp(0.6) / (math.exp(0.6) + math.exp(0.0)))
    anchor1 = -math.log(math.exp(0.6) / (math.exp(0.6) + math.exp(0.8)))
    expected = (anchor0 + anchor1) / 2
    got = supcon_loss(3.0 * z[:, None, :], labels, temperature=1.0, base_temperature=1.0)  # normalised inside
    assert math.isclose(got.item(), expected, rel_tol=1e-6)
    # temperature 0.5 doubles the logits, and base_temperature 1 scales the loss by 0.5 / 1
    anchor0 = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(0.0)))
    anchor1 = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(1.6)))
    got = supcon_loss(z[:, None, :], labels, temperature=0.5, base_temperature=1.0)
    assert math.isclose(got.item(), 0.5 * (anchor0 + anchor1) / 2, rel_tol=1e-6)
    # no anchor with a positive: a zero that still backpropagates
    alone = z[:, None, :].clone().requires_grad_()
    zero = supcon_loss(alone, torch.tensor([0, 1, 2]))
    zero.backward()
    assert zero.item() == 0.0 and torch.equal(alone.grad, torch.zeros_like(alone))


@pytest.mark.parametrize("views,labels", [(2, [0, 1, 0, 2, 1, 0]), (1, [0, 1, 0, 2, 1, 3])])
def test_supcon_equals_pytorch_metric_learnings_with_base_temperature_equal_to_temperature(views, labels):
    # pml's SupConLoss is the same L_out on flat (N, E) embeddings (cosine similarity, self out of the
    # denominator, anchors without a positive dropped by its AvgNonZeroReducer) but without the paper code's
    # temperature / base_temperature factor: so base_temperature = temperature here. Its embeddings are our
    # views stacked view-major, labels repeated per view.
    from pytorch_metric_learning.losses import SupConLoss

    generator = torch.Generator().manual_seed(1)
    features = torch.randn(len(labels), views, 8, generator=generator)
    labels = torch.tensor(labels)
    ours, theirs = features.clone().requires_grad_(), features.clone().requires_grad_()
    a = supcon_loss(ours, labels, temperature=0.1, base_temperature=0.1)
    b = SupConLoss(temperature=0.1)(theirs.transpose(0, 1).reshape(-1, 8), labels.repeat(views))
    a.backward(), b.backward()
    assert torch.isclose(a, b, rtol=1e-5)
    assert torch.allclose(ours.grad, theirs.grad, atol=1e-6)
