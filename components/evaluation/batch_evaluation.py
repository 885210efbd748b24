"""A task's evaluation over batches: per-batch steps, outputs gathered from every worker, one reduction.

The same three functions serve every place that evaluates: the workers
during training (each over its share of the held-out shards, then gathered),
``tvp evaluate`` (Ray Data actors each running steps), and one process (tests,
the in-process harness). Because a task's reduction sees the per-sample
outputs of all of them, the result does not depend on how the set was split.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from components.tasks.task import EvalFacts, Task


@torch.no_grad()
def step_outputs(task: Task, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], context: Any,
                 device: torch.device = torch.device("cpu")) -> dict[str, np.ndarray]:
    """Every batch's ``eval_step`` outputs, concatenated along dim 0 (empty dict when there were no batches)."""
    parts: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        for key, value in task.eval_step(model, batch, context).items():
            parts.setdefault(key, []).append(value.detach().float().cpu().numpy()
                                             if value.is_floating_point() else value.detach().cpu().numpy())
    return {key: np.concatenate(values) for key, values in parts.items()}


def concat_outputs(parts: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    merged: dict[str, list[np.ndarray]] = {}
    for part in parts:
        for key, value in part.items():
            merged.setdefault(key, []).append(value)
    return {key: np.concatenate(values) for key, values in merged.items()}


def gather_outputs(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every rank's outputs, concatenated in rank order, on every rank (unchanged without a process group)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return outputs
    keys = sorted({key for names in _all_gather_json(sorted(outputs)) for key in names})
    gathered: dict[str, np.ndarray] = {}
    for key in keys:
        parts = [p for p in _all_gather_array(outputs.get(key)) if p is not None]
        if parts:
            gathered[key] = np.concatenate(parts)
    return gathered


HEADER_BYTES = 512


def _all_gather_json(value: Any) -> list[Any]:
    """Every rank's small JSON value (a few hundred bytes at most), in rank order."""
    raw = json.dumps(value).encode()
    if len(raw) > HEADER_BYTES:
        raise ValueError(f"evaluation header too long ({len(raw)} bytes)")
    device = _comm_device()
    headers = [torch.zeros(HEADER_BYTES, dtype=torch.uint8, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(headers, torch.frombuffer(bytearray(raw.ljust(HEADER_BYTES)), dtype=torch.uint8).to(device))
    return [json.loads(bytes(h.cpu().tolist()).decode()) for h in headers]


def _comm_device() -> torch.device:
    """NCCL gathers GPU tensors only; gloo gathers CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_array(local: np.ndarray | None) -> list[np.ndarray | None]:
    """All ranks' arrays of one output (same dtype and trailing shape, any length), padded to gather.

    A rank that evaluated no batch has no array; the others' headers tell it the dtype and shape to pad with.
    """
    world = dist.get_world_size()
    infos = _all_gather_json({} if local is None else
                             {"n": len(local), "dtype": local.dtype.str, "shape": list(local.shape[1:])})
    known = next((i for i in infos if i), None)
    if known is None:
        return [None] * world
    longest = max(max(i.get("n", 0) for i in infos), 1)
    padded = np.zeros((longest, *known["shape"]), dtype=np.dtype(known["dtype"]))
    if local is not None:
        padded[: len(local)] = local
    tensor = torch.from_numpy(padded).to(_comm_device())
    parts = [torch.zeros_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor)
    return [p[: i["n"]].cpu().numpy() if i else None for p, i in zip(parts, infos)]


def evaluate(task: Task, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], facts: EvalFacts,
             device: torch.device = torch.device("cpu")) -> dict[str, float]:
    """One process: steps over ``batches``, then the task's reduction."""
    was_training = model.training
    model.eval()
    try:
        context = task.eval_begin(model, facts)
        return task.eval_reduce(step_outputs(task, model, batches, context, device), facts)
    finally:
        model.train(was_training)


def sample_batches(task: Task, samples: Iterable[dict[str, bytes]], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Raw samples → ``eval_transform``ed tensor batches, in order, the last one short."""
    chunk: list[dict[str, bytes]] = []
    for sample in samples:
        chunk.append(sample)
        if len(chunk) == batch_size:
            yield _transform(task, chunk)
            chunk = []
    if chunk:
        yield _transform(task, chunk)


def _transform(task: Task, samples: list[dict[str, bytes]]) -> dict[str, torch.Tensor]:
    columns = {c: np.array([s[c] for s in samples], dtype=object) for c in task.eval_columns}
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in task.eval_transform(columns).items()}
