"""Contrastive losses: CLIP's symmetric InfoNCE across workers, and supervised contrastive (SupCon).

``clip_loss`` — matched pairs (row i of the images goes with row i of the
texts); every other row of the batch is a negative. With torch.distributed
initialised and more than one worker, the embeddings of all workers are
gathered so that each pair competes against the global batch, as CLIP trains.
The gather keeps gradients (``gather_with_grad``): its backward sums the
gradient every worker computed for a slice and hands each worker its own
slice. Each worker then holds ``world`` × (its share of the gradient of the
loss averaged over the global batch), and DDP's averaging over workers divides
that ``world`` away: the step is the one a single process would take on the
whole global batch. open_clip's ``ClipLoss(gather_with_grad=True)`` behaves the
same way.

``supcon_loss`` — Khosla et al. (2020), "Supervised Contrastive Learning",
the L_out form: every view of every sample is an anchor, and its positives
are all other views of samples with its label.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """All workers' (B, E) rows stacked in rank order: (world · B, E). Every worker must pass the same B.

    Backward: every worker's loss depends on every worker's rows, so the gradient of a worker's rows is the
    sum of what all the losses send them: all-reduce (sum) the incoming gradient, keep this worker's slice.
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        rank, world = _world()
        ctx.rank, ctx.rows = rank, local.shape[0]
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()  # all_reduce is in place; the incoming gradient may be shared
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(local: torch.Tensor) -> torch.Tensor:
    """All workers' rows of ``local`` (B, ...) stacked in rank order, gradients flowing back to each worker's
    own rows (summed over the workers' losses); ``local`` itself without distributed or with one worker."""
    if _world()[1] == 1:
        return local
    shape = local.shape
    return _GatherWithGrad.apply(local.reshape(shape[0], -1)).reshape(-1, *shape[1:])


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor, *,
              local_loss: bool = False, gather: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE: mean of image→text and text→image cross-entropy.

    ``image_emb`` and ``text_emb`` are (B, E) unit-norm embeddings of matched
    pairs (row i of one matches row i of the other); ``logit_scale`` is the
    already exponentiated temperature.

    Across workers (``gather`` and torch.distributed with world W > 1; every
    worker passes the same B), the pairs of all workers are gathered in rank
    order into one global batch of N = W·B:

    - ``local_loss`` False: every worker computes the whole (N, N) logits and
      returns the loss averaged over all N rows and N columns — the same value
      on every worker, the single-process loss of the global batch.
    - ``local_loss`` True: this worker's B rows against the N global columns,
      (B, N) logits each way (its images against all texts, its texts against
      all images), the targets offset by rank · B; the loss is averaged over
      this worker's B rows only, so it differs between workers, and its mean
      over workers is the global loss. Memory is B·N instead of N².

    Either way, once DDP averages the gradients over workers, every parameter
    receives the gradient of the global-batch loss (see the module docstring).
    ``gather`` False keeps each worker's loss to its own batch.
    """
    rank, world = _world()
    if not gather or world == 1:
        logits = logit_scale * image_emb @ text_emb.T  # (B, B)
        targets = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    rows, width = image_emb.shape
    # One collective for both towers: [image | text] side by side, split after the gather.
    both = gather_with_grad(torch.cat([image_emb, text_emb], dim=1))  # (N, 2E)
    all_image, all_text = both[:, :width], both[:, width:]
    if local_loss:
        targets = torch.arange(rows, device=image_emb.device) + rank * rows
        per_image = logit_scale * image_emb @ all_text.T  # (B, N)
        per_text = logit_scale * text_emb @ all_image.T  # (B, N)
        return (F.cross_entropy(per_image, targets) + F.cross_entropy(per_text, targets)) / 2
    logits = logit_scale * all_image @ all_text.T  # (N, N)
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07,
                base_temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out), averaged over anchors.

    ``features`` (B, V, E): V views of each of B samples, any scale — each
    vector is normalised to unit length here. ``labels`` (B,) integer classes.
    All B·V vectors are anchors. For anchor i, with A(i) every other vector and
    P(i) those of A(i) with i's label (the other views of its own sample
    included), the loss is

        -(temperature / base_temperature) · mean over p in P(i) of
            log( exp(z_i·z_p / t) / sum over a in A(i) of exp(z_i·z_a / t) )

    The factor temperature / base_temperature is the paper code's: it is 1 with
    the defaults, and keeps the gradient's size steady when the temperature is
    tuned with base_temperature fixed.

    An anchor with no positive (one view, and no other sample of its class in
    the batch) has nothing to pull towards: it is left out of the average
    (it still serves as a negative for the others). With no such anchor at all
    the loss is a zero that keeps the graph. Any number of positives is fine;
    with V ≥ 2 every anchor has at least one.
    """
    if features.dim() != 3:
        raise ValueError(f"features of shape {tuple(features.shape)}: expected (batch, views, embedding)")
    batch, views, _ = features.shape
    if labels.shape != (batch,):
        raise ValueError(f"labels of shape {tuple(labels.shape)} for {batch} samples: expected ({batch},)")
    # View-major order (all first views, then all second views, ...), as the paper's code; the order does
    # not change the loss.
    z = F.normalize(features.float(), dim=-1).transpose(0, 1).reshape(batch * views, -1)  # (BV, E)
    anchor_labels = labels.repeat(views)  # (BV,)
    logits = z @ z.T / temperature  # (BV, BV)
    not_self = ~torch.eye(batch * views, dtype=torch.bool, device=z.device)
    positive = (anchor_labels[:, None] == anchor_labels[None, :]) & not_self
    # log softmax over every other vector: self is left out of the denominator.
    log_prob = logits - torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1, keepdim=True)
    counts = positive.sum(dim=1)
    has_positive = counts > 0
    if not has_positive.any():
        return features.sum() * 0.0
    mean_log_prob_pos = (log_prob * positive).sum(dim=1)[has_positive] / counts[has_positive]
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()
