"""Data parallelism over an initialised torch.distributed process group: DDP, or FSDP2 sharding.

Plain torch, no Ray: the worker loop calls these after Ray Train has set up
the process group, and tests call them from their own gloo processes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.nn.parallel import DistributedDataParallel

from components.models.transformer import Block

Strategy = Literal["ddp", "fsdp"]


def wrap_model(model: nn.Module, strategy: Strategy, device: torch.device,
               units: list[nn.Module] | None = None, forward_methods: tuple[str, ...] = ()) -> nn.Module:
    """Move ``model`` to ``device`` and wrap it for data parallelism (unchanged in a single process).

    Under FSDP, ``units`` (a task's ``fsdp_units``; by default every transformer block) are sharded one by
    one, then the rest of the model; ``forward_methods`` (``encode_image``, say) gather the weights as
    ``forward`` does when called on the wrapped model.
    """
    model = model.to(device)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    if strategy == "ddp":
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        for module in units if units is not None else [m for m in model.modules() if isinstance(m, Block)]:
            fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        from torch.distributed.fsdp import register_fsdp_forward_method

        for name in forward_methods:
            register_fsdp_forward_method(model, name)
        return model
    raise ValueError(f"unknown parallel strategy {strategy!r}")


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on CPU, gathered from shards where needed (call on every rank)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(unwrap(model), options=options)


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full weights into a wrapped or plain model (every rank passes the same ``state``)."""
    options = StateDictOptions(full_state_dict=True, strict=True)
    set_model_state_dict(unwrap(model), state, options=options)
