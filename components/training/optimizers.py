"""Optimizers built from the training config, with parameter groups."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn


def layer_rate_scales(layer_ids: Mapping[str, int], layer_decay: float) -> dict[str, float]:
    """Layer-wise rate decay: parameter name → rate multiplier, 1 for the top layer, ``layer_decay`` for the one
    below it, and so on down to the embeddings (layer 0)."""
    top = max(layer_ids.values(), default=0)
    return {name: layer_decay ** (top - layer) for name, layer in layer_ids.items()}


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    backbone_lr: float | None = None,
    backbone_prefixes: Sequence[str] = (),
    rate_scales: Mapping[str, float] | None = None,
) -> list[dict]:
    """Groups by (backbone or not) × rate multiplier × (decayed or not).

    Matrices and convolution kernels are decayed; biases, norm weights,
    scalars (a logit scale) are not. Parameters whose name starts with one of
    ``backbone_prefixes`` take ``backbone_lr`` when it is given. ``rate_scales``
    (parameter name → multiplier, from ``layer_rate_scales``) scales each
    parameter's rate further; frozen parameters (``requires_grad`` off) are left out.
    """
    groups: dict[tuple[bool, float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        clean = name.removeprefix("module.")  # names under a DDP wrapper
        is_backbone = backbone_lr is not None and clean.startswith(tuple(backbone_prefixes))
        scale = (rate_scales or {}).get(clean, 1.0)
        groups.setdefault((is_backbone, -scale, param.ndim >= 2), []).append(param)
    # Ordered main before backbone, then highest rate first: the first group's rate is the one logged as "lr".
    return [
        {
            "params": params,
            "lr": (backbone_lr if is_backbone else lr) * -neg_scale,
            "weight_decay": weight_decay if decayed else 0.0,
            "name": f"{'backbone' if is_backbone else 'main'}_{'decay' if decayed else 'no_decay'}"
                    + (f"_x{-neg_scale:.4g}" if neg_scale != -1.0 else ""),
        }
        for (is_backbone, neg_scale, decayed), params in sorted(groups.items())
    ]


def build_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    backbone_lr: float | None = None,
    backbone_prefixes: Sequence[str] = (),
    rate_scales: Mapping[str, float] | None = None,
) -> torch.optim.AdamW:
    groups = param_groups(model, lr, weight_decay, backbone_lr, backbone_prefixes, rate_scales)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=lr)
