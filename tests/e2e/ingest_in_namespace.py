"""The ingestion scenario of ``test_ingest_image_text``, run inside a network namespace with only loopback.

``unshare -n`` gives this process a network of its own whose only interface
is loopback, so even a broken address guard could not reach a link-local or
metadata address: nothing here can leave the machine. It starts the loopback
image server, writes a table of good and faulty URLs, and runs
``tvp ingest image-text`` as a user would: once uninterrupted, and once
SIGKILLed after its first shard and started again. ``results.json`` records
what it saw; the test outside checks it.

Usage: ``unshare -n sh -c 'ip link set lo up && exec python -m tests.e2e.ingest_in_namespace WORKDIR'``
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.image_server import ImageServer

REPO = Path(__file__).resolve().parents[2]
GOOD = 40  # distinct good images
ROWS_PER_SHARD = 8
# (path on the server, caption, the category the row must land in; None: success)
FAULTS = [
    ("/missing", b"a missing picture", "http_404"),
    ("/error", b"a server error", "http_500"),
    ("/slow", b"a slow server", "timeout"),
    ("/reset", b"a reset connection", "connection"),
    ("/truncated.jpg", b"half a jpeg", "decode"),
    ("/notimage.jpg", b"text sent as image/jpeg", "decode"),
    ("/bomb.png", b"a decompression bomb", "too_large"),
    ("/loop", b"a redirect loop", "redirect"),
    ("/to-link-local", b"a redirect to the metadata address", "blocked_address"),
    ("/optout.jpg", b"an opted-out picture", "opted_out"),
    ("/img/1.jpg", b"\xff\xfe not utf-8", "invalid_caption"),
    ("/img/2.jpg", b"   ", "empty_caption"),
    ("/dup/3.jpg", b"picture three again", "duplicate"),
    ("/redirect/41.jpg", b"a redirected picture", None),
    ("/flaky/42.jpg", b"a picture that needs a retry", None),
]


def write_table(base: str, path: Path) -> list[str | None]:
    """Good rows with faults interleaved; returns each row's expected category."""
    urls, captions, expected = [], [], []
    faults = iter(FAULTS)
    for n in range(GOOD):
        urls.append(f"{base}/img/{n}.jpg")
        captions.append(f"picture number {n}".encode())
        expected.append(None)
        if n % 3 == 2 and (fault := next(faults, None)):
            urls.append(base + fault[0])
            captions.append(fault[1])
            expected.append(fault[2])
    for fault in faults:
        urls.append(base + fault[0])
        captions.append(fault[1])
        expected.append(fault[2])
    pq.write_table(pa.table({"url": urls, "caption": pa.array(captions, pa.binary()),
                             "row_label": [f"row {i}" for i in range(len(urls))]}), path)
    return expected


def ingest(table: Path, out: Path, ray_address: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "ingest", "image-text", str(table), "--output", str(out),
         "--rows-per-shard", str(ROWS_PER_SHARD), "--image-size", "32", "--timeout", "1", "--retries", "1",
         "--processes", "2", "--threads", "8", "--allow-address", "127.0.0.1"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def watch_tars(out: Path, stop: threading.Event, bad: list[str]) -> None:
    """Every tar that is visible under its final name must read through to the end."""
    while not stop.is_set():
        for tar in out.glob("*.tar"):
            try:
                with tarfile.open(tar) as t:
                    for member in t:
                        t.extractfile(member).read()
            except FileNotFoundError:
                continue  # removed by a resumed run's clean-up or replaced by dedup between glob and open
            except Exception as exc:
                bad.append(f"{tar.name}: {exc}")
        time.sleep(0.05)


def main(workdir: str) -> None:
    from cluster.loopback import use_loopback_only

    use_loopback_only()
    from cluster.ray_cluster import connect

    address = connect(num_cpus=4)  # one Ray head in this namespace for the three runs: each starts faster
    work = Path(workdir)
    results: dict = {}
    with ImageServer(slow_seconds=5.0) as server:
        results["expected"] = write_table(server.base_url, work / "table.parquet")
        stop, bad = threading.Event(), []
        watcher = threading.Thread(target=watch_tars, args=(work / "killed", stop, bad), daemon=True)
        watcher.start()

        first = ingest(work / "table.parquet", work / "killed", address)
        while not list((work / "killed").glob("*_stats.json")):
            assert first.poll() is None, first.stdout.read()
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait()
        results["complete_at_kill"] = len(list((work / "killed").glob("*_stats.json")))
        resumed = ingest(work / "table.parquet", work / "killed", address)
        results["resumed_output"] = resumed.communicate()[0]
        results["resumed_rc"] = resumed.returncode
        stop.set()
        watcher.join()
        results["bad_tars"] = bad

        whole = ingest(work / "table.parquet", work / "whole", address)
        results["whole_output"] = whole.communicate()[0]
        results["whole_rc"] = whole.returncode
        results["user_agent"] = server.last_user_agent
    (work / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
