"""Per-epoch training throughput: samples/s, tokens/s, time waiting for data, peak memory per worker."""

from __future__ import annotations

import resource
import time

import torch
import torch.distributed as dist


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this worker: GPU memory allocated on a GPU, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class EpochMeter:
    """Counts one rank's epoch; ``metrics()`` combines all ranks (a collective: every rank calls it)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.data_wait_s = 0.0
        self.samples = self.tokens = self.steps = 0
        self.loss_sum = 0.0

    def wait(self, seconds: float) -> None:
        self.data_wait_s += seconds

    def step(self, samples: int, tokens: int, loss: float) -> None:
        self.samples += samples
        self.tokens += tokens
        self.steps += 1
        self.loss_sum += loss

    def metrics(self, device: torch.device) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        totals = torch.tensor([self.samples, self.tokens, self.data_wait_s / elapsed], dtype=torch.float64)
        memory = torch.tensor([peak_memory_mb(device)], dtype=torch.float64)
        world = 1
        memories = [memory]
        if dist.is_available() and dist.is_initialized():
            world = dist.get_world_size()
            dist.all_reduce(totals)
            memories = [torch.zeros_like(memory) for _ in range(world)]
            dist.all_gather(memories, memory)
        out = {
            "train_loss": self.loss_sum / max(1, self.steps),
            "samples_per_s": float(totals[0]) / elapsed,
            "data_wait_fraction": float(totals[2]) / world,
            "peak_memory_mb_max": max(float(m) for m in memories),
        }
        if totals[1] > 0:
            out["tokens_per_s"] = float(totals[1]) / elapsed
        out.update({f"peak_memory_mb_worker{rank}": float(m) for rank, m in enumerate(memories)})
        return out
