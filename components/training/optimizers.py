"""Optimizers built from the training config, with parameter groups."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    backbone_lr: float | None = None,
    backbone_prefixes: Sequence[str] = (),
) -> list[dict]:
    """Groups by (backbone or not) × (decayed or not).

    Matrices and convolution kernels are decayed; biases, norm weights,
    scalars (a logit scale) are not. Parameters whose name starts with one of
    ``backbone_prefixes`` take ``backbone_lr`` when it is given.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        clean = name.removeprefix("module.")  # names under a DDP wrapper
        is_backbone = backbone_lr is not None and clean.startswith(tuple(backbone_prefixes))
        groups.setdefault((is_backbone, param.ndim >= 2), []).append(param)
    return [
        {
            "params": params,
            "lr": backbone_lr if is_backbone else lr,
            "weight_decay": weight_decay if decayed else 0.0,
            "name": f"{'backbone' if is_backbone else 'main'}_{'decay' if decayed else 'no_decay'}",
        }
        for (is_backbone, decayed), params in sorted(groups.items())
    ]


def build_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    backbone_lr: float | None = None,
    backbone_prefixes: Sequence[str] = (),
) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, lr, weight_decay, backbone_lr, backbone_prefixes), lr=lr)
