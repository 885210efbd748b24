"""Ingestion at scale: a 1-million-row URL table through ``tvp ingest image-text``; rows/s and peak memory.

Every row fails at once (its URL names an address the guard refuses, so nothing
is sent anywhere): what is measured is the pipeline itself — streaming the
table, planning shards, the Ray Data tasks, status Parquet and stats — not the
network. The reference is the same run on a table a tenth the size: memory
that stays flat as the input grows shows as a ratio near 1.
Run: ``.venv/bin/python benchmarks/ingest_scale.py [--rows N] [--processes P]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
CAPTION = "a caption of ordinary length for an image on the web, number "


def write_table(path: Path, rows: int) -> None:
    with open(path, "w") as f:
        f.write("url\tcaption\n")
        for i in range(rows):
            f.write(f"http://10.255.255.1/images/{i}.jpg\t{CAPTION}{i}\n")


def _watch_workers(driver: psutil.Process, peak: dict, stop: threading.Event) -> None:
    """Largest resident memory of any Ray worker process while the run lasts (they are not our children)."""
    while not stop.wait(0.5):
        for proc in psutil.process_iter(["name", "cmdline", "memory_info"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if "ray::" in (proc.info["name"] or "") + cmdline and proc.info["memory_info"]:
                peak["worker"] = max(peak.get("worker", 0), proc.info["memory_info"].rss)


def run(table: Path, out: Path, processes: int) -> dict:
    command = [sys.executable, "-m", "pipelines.cli", "ingest", "image-text", str(table), "--output", str(out),
               "--rows-per-shard", "10000", "--retries", "0", "--processes", str(processes)]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_workers, args=(psutil.Process(process.pid), peak, stop), daemon=True)
    watcher.start()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    stop.set()
    output = process.stdout.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"tvp ingest failed:\n{output[-3000:]}")
    rows = json.loads((out / "manifest.json").read_text())["num_input_rows"]
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
            "driver_mb": usage.ru_maxrss / 1024, "worker_mb": peak.get("worker", 0) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the large table (default: 1000000)")
    parser.add_argument("--processes", type=int, default=2, help="shards processed at once (default: 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {}
        for name, rows in (("reference", args.rows // 10), ("tvp", args.rows)):
            write_table(work / f"{name}.tsv", rows)
            results[name] = run(work / f"{name}.tsv", work / name, args.processes)
            r = results[name]
            print(f"{r['rows']:>9} rows: {r['seconds']:.1f} s, {r['rows_per_s']:.0f} rows/s (start-up included), "
                  f"driver peak {r['driver_mb']:.0f} MB, largest worker {r['worker_mb']:.0f} MB")
    tvp, reference = results["tvp"]["driver_mb"], results["reference"]["driver_mb"]
    print(f"RESULT metric=driver_peak_memory_mb tvp={tvp:.1f} reference={reference:.1f} ratio={tvp / reference:.3f} "
          f"better=lower")


if __name__ == "__main__":
    main()
