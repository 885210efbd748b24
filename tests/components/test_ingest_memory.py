"""A shard task's memory stays near its decode budget, whatever its thread count.

32 threads building one shard of large PNGs with alpha would each hold about 60 MB of decoded pixels at once
(2500 x 2000 pixels at ~14 bytes on the way to a thumbnail: about 2.2 GB for 32 threads); the decode budget
(``decode_budget.py``) lets only as many decode at a time as fit. The shard is built in a fresh Python process
that measures its own resident memory (psutil, sampled every 5 ms, and the kernel's high-water mark), so that
nothing the test runner allocated before counts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
THREADS = 32
ROWS = 32
PICTURES = 2  # distinct files; rows take turns between them
SIDE = (2500, 2000)  # 5 megapixels: ~60 MB decoded on the way, ~1 MB as a smooth PNG
BUDGET_MB = 200  # about three pictures decoding at once
# What the process may grow by beyond its budget. The budget is an estimate held while full-size pixels exist
# (decoded, converted, resampled away; Pillow's copy closed), Pillow's PNG path may need a little more than the
# 14 bytes a pixel it is charged, and glibc keeps some freed pages between trims
# (decode_budget.py). Measured on a 2-core machine over 20 runs: 284-411 MB of growth with the 200 MB budget;
# 1020-1480 MB without one (all 32 threads decode at once); 720-880 MB with the budget before two fixes (a PNG's
# EXIF orientation was read by decoding the whole PNG outside the budget; each thread's glibc arena kept its
# freed pixels).
MARGIN_MB = 250
UNBOUNDED_MB = 100_000  # a budget that never binds: every thread decodes as soon as it can


def write_pictures(folder: Path) -> list[str]:
    """PICTURES smooth RGBA gradients (each a little different), PNG: small files, large decoded pixels."""
    width, height = SIDE
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    names = []
    for i in range(PICTURES):
        channels = [x * 255, y * 255, (x + y + i / PICTURES) % 1 * 255, 64 + (x * y) * 191]
        rgba = np.stack([np.broadcast_to(c, (height, width)) for c in channels], -1).astype(np.uint8)
        names.append(f"picture{i}.png")
        Image.fromarray(rgba, "RGBA").save(folder / names[-1], compress_level=1)
    return names


def _high_water_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return 0


def measure(folder: str, budget_mb: int) -> dict:
    """Build one shard over the table of ``folder`` in this process: its RSS baseline and peak, in MB, as JSON."""
    import psutil

    from components.data.ingest.image_processing import ImageConfig
    from components.data.ingest.image_text_shard import IngestConfig, build_image_text_shard

    names = sorted(p.name for p in Path(folder).glob("*.png"))
    rows = pa.table({"url": [names[i % len(names)] for i in range(ROWS)], "caption": [f"row {i}" for i in range(ROWS)]})
    cfg = IngestConfig(threads=THREADS, decode_budget_mb=budget_mb, image=ImageConfig(image_size=64))
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    content = build_image_text_shard(rows, 0, cfg, folder)
    samples = sum(1 for _ in content.samples)
    seconds = time.monotonic() - started
    done.set()
    sampler.join()
    # The kernel's high-water mark of this process's memory (VmHWM). Not getrusage's ru_maxrss: Linux carries
    # that across exec from the forked parent, so inside a long pytest run it reported pytest's own ~1.1 GB.
    peak = max(peak, _high_water_bytes())
    mb = 1024 * 1024
    return {"baseline_mb": baseline / mb, "peak_mb": peak / mb, "growth_mb": (peak - baseline) / mb,
            "samples": samples, "stats": content.stats(), "seconds": seconds}


def measured(folder: Path, budget_mb: int) -> dict:
    """``measure`` in a fresh interpreter: only that shard's memory counts."""
    code = ("import json, sys; from tests.components.test_ingest_memory import measure; "
            "print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))")
    done = subprocess.run([sys.executable, "-c", code, str(folder), str(budget_mb)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_shard_of_large_pngs_stays_within_its_decode_budget(tmp_path):
    write_pictures(tmp_path)
    bounded = measured(tmp_path, BUDGET_MB)
    unbounded = measured(tmp_path, UNBOUNDED_MB)
    for name, run in (("budget", bounded), ("no budget", unbounded)):
        print(f"\n{name}: growth {run['growth_mb']:.0f} MB over a {run['baseline_mb']:.0f} MB baseline, "
              f"{run['seconds']:.2f} s")
    assert bounded["samples"] == ROWS and bounded["stats"]["successes"] == ROWS, bounded["stats"]
    limit = BUDGET_MB + MARGIN_MB
    assert bounded["growth_mb"] < limit, bounded
    # The same shard without a binding budget grows far past the limit (1020-1480 MB measured): the budget,
    # not this machine's two cores serialising the threads, is what held the first run down.
    assert unbounded["samples"] == ROWS
    assert unbounded["growth_mb"] > 1.5 * limit, (bounded, unbounded)
