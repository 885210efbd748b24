"""Timing two sides of a step benchmark fairly (imported by benchmarks/*_step.py; a helper, not
a benchmark): the sides alternate within each round and which goes first alternates between rounds, so drift in the
machine's load falls on both; medians of wall and CPU time."""

from __future__ import annotations

import statistics
from typing import Callable

SIDES = ("tvp", "reference")


def interleaved_medians(step_seconds: Callable[[str], tuple[float, float]], warmup: int, repeats: int
                        ) -> dict[str, dict[str, float]]:
    """``step_seconds(side)`` → (wall s, CPU s) of one step. Returns per side ``wall`` and ``cpu`` medians and
    the ``fastest`` wall time over ``repeats`` rounds after ``warmup``, printing each round."""
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    cpu: dict[str, list[float]] = {side: [] for side in SIDES}
    for r in range(warmup + repeats):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            seconds, cpu_seconds = step_seconds(side)
            if r >= warmup:
                times[side].append(seconds)
                cpu[side].append(cpu_seconds)
        if r >= warmup:
            print(f"  round {r - warmup + 1}: tvp {times['tvp'][-1]:.3f} s (CPU {cpu['tvp'][-1]:.2f} s), "
                  f"reference {times['reference'][-1]:.3f} s (CPU {cpu['reference'][-1]:.2f} s)")
    out = {side: {"wall": statistics.median(times[side]), "cpu": statistics.median(cpu[side]),
                  "fastest": min(times[side])} for side in SIDES}
    print(f"median step: tvp {out['tvp']['wall']:.3f} s, reference {out['reference']['wall']:.3f} s; CPU time: "
          f"tvp {out['tvp']['cpu']:.2f} s, reference {out['reference']['cpu']:.2f} s "
          f"(ratio {out['tvp']['cpu'] / out['reference']['cpu']:.3f}); fastest step: tvp {out['tvp']['fastest']:.3f} s, "
          f"reference {out['reference']['fastest']:.3f} s")
    return out
