"""Ingestion streams its input: the driver's memory does not grow with the table.

Tens of thousands of rows whose URLs fail at once (an address the guard refuses,
so nothing is ever sent) go through the whole pipeline twice, one table four
times the other; each row carries a 2 KB caption, so a driver that held the
table would grow by tens of megabytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO, TVP

CAPTION = "a long caption " * 128  # ~2 KB


def write_table(path, rows: int) -> None:
    with open(path, "w") as f:
        f.write("url\tcaption\n")
        for i in range(rows):
            f.write(f"http://10.255.255.1/{i}.jpg\t{CAPTION}{i}\n")


def driver_peak_mb(table, out) -> float:
    """Run ``tvp ingest`` against the session's Ray head; return the driver process's peak resident memory."""
    process = subprocess.Popen([*TVP, "ingest", "image-text", str(table), "--output", str(out),
                                "--rows-per-shard", "4000", "--retries", "0", "--processes", "2"],
                               cwd=REPO, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    stderr = process.stderr.read().decode()
    assert os.waitstatus_to_exitcode(status) == 0, stderr[-3000:]
    return usage.ru_maxrss / 1024  # KiB on Linux


def test_driver_memory_stays_flat_as_the_table_grows(ray_address, tmp_path):
    small, large = 6_000, 24_000
    write_table(tmp_path / "small.tsv", small)
    write_table(tmp_path / "large.tsv", large)
    small_mb = driver_peak_mb(tmp_path / "small.tsv", tmp_path / "small")
    large_mb = driver_peak_mb(tmp_path / "large.tsv", tmp_path / "large")
    manifest = json.loads((tmp_path / "large" / "manifest.json").read_text())
    assert manifest["num_input_rows"] == large and manifest["errors"] == {"blocked_address": large}
    # 18,000 more rows of ~2 KB: a driver that loaded the table would hold 36+ MB more.
    assert large_mb - small_mb < 20, (small_mb, large_mb)
    print(f"driver peak: {small_mb:.0f} MB for {small} rows, {large_mb:.0f} MB for {large} rows", file=sys.stderr)
