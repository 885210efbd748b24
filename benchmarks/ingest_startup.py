"""Fixed cost of an ingestion: command start to the first shard written, and to exit, on a tiny table.

A 20-image table (the large profile's first images of ``ingest_vs_img2dataset.py``, served from loopback)
is ingested, one shard, by:

- img2dataset (the reference: a new user's other choice, with its own start-up),
- ``tvp ingest image-text`` starting its own local Ray (what a new user runs),
- ``tvp ingest image-text --address`` attached to a Ray instance already running (``ray start --head``,
  started once by this script): only the per-job part of Ray's cost remains.

Rounds alternate; each side's figure is the median. The first shard counts as written when its
``_stats.json`` appears (polled every 10 ms). The result compares the whole command, fresh tvp against
img2dataset.

Run: ``.venv/bin/python benchmarks/ingest_startup.py [--rounds 3] [--images 20]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest_vs_img2dataset as bench  # noqa: E402  (the same images, server and commands)

RAY = bench.ROOT / ".venv" / "bin" / "ray"


def first_stats_watcher(out: Path, started: float) -> tuple[threading.Thread, dict]:
    seen: dict = {}

    def watch() -> None:
        while "first" not in seen and not seen.get("stop"):
            if out.exists() and any(out.glob("*_stats.json")):
                seen["first"] = time.perf_counter() - started
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, seen


def wait_for_head(address: str, env: dict, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while subprocess.run([str(RAY), "status", "--address", address], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=env).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Ray head at {address} did not come up in {timeout_s} s")
        time.sleep(0.5)


def run_once(side: str, table: Path, workdir: Path, index: int, address: str | None,
             base_env: dict) -> tuple[float, float | None]:
    out = workdir / f"out-{side}-{index}"
    if side == "img2dataset":
        cmd = bench.img2dataset_command(table, out, 1, 16)
    else:
        cmd = bench.tvp_defaults_command(table, out) + (["--address", address] if side == "tvp-attached" else [])
    env = dict(base_env)
    env.pop("RAY_ADDRESS", None)
    started = time.perf_counter()
    thread, seen = first_stats_watcher(out, started)
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=workdir).returncode
    total = time.perf_counter() - started
    seen["stop"] = True
    thread.join()
    if rc != 0:
        raise RuntimeError(f"{side} failed with exit code {rc}: {' '.join(cmd)}")
    shutil.rmtree(out, ignore_errors=True)
    return total, seen.get("first")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side, alternated (default 3)")
    parser.add_argument("--images", type=int, default=20, help="rows in the table (default 20)")
    args = parser.parse_args()
    subprocess.run(["bash", str(bench.I2D_ENV_SCRIPT)], check=True, stdout=subprocess.DEVNULL)
    folder = bench.ensure_images(Path(tempfile.gettempdir()) / "tvp-bench-ingest", "large", 20_000, os.cpu_count() or 1)
    workdir = Path(tempfile.mkdtemp(prefix="tvp-bench-startup-"))
    use_nginx = os.access(bench.DEFAULT_NGINX, os.X_OK)
    server = bench.start_nginx(bench.DEFAULT_NGINX, folder, workdir) if use_nginx else bench.start_python_server(folder, 1)
    ray_dir = workdir / "ray"
    # The head and the attached driver share a token (Ray's token authentication, on by default for a new head).
    env = {**bench.child_env(), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": os.urandom(16).hex()}
    ray_start = [str(RAY), "start", "--head", "--port", str(bench._free_port()), "--num-cpus", str(os.cpu_count() or 1),
                 "--include-dashboard", "false", "--node-ip-address", "127.0.0.1", f"--temp-dir={ray_dir}"]
    head = None
    results: dict[str, list[tuple[float, float | None]]] = {"img2dataset": [], "tvp": [], "tvp-attached": []}
    try:
        bench.wait_until_serving(server, folder)
        table = workdir / "table.parquet"
        pq.write_table(pa.table({"url": [f"{server.base_url}/{i:06d}.jpg" for i in range(args.images)],
                                 "caption": [f"photo {i}" for i in range(args.images)]}), table)
        started = time.perf_counter()
        # --block: the head's processes are this child's, and end with it (``ray stop`` would stop every
        # Ray instance of the machine, other people's included).
        head = subprocess.Popen([*ray_start, "--block"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        address = f"127.0.0.1:{ray_start[ray_start.index('--port') + 1]}"
        wait_for_head(address, env)
        print(f"ray start --head: {time.perf_counter() - started:.1f} s (once, before the attached rounds)")
        for index in range(1, args.rounds + 1):
            for side in results:
                total, first = run_once(side, table, workdir, index, address,
                                        env if side == "tvp-attached" else bench.child_env())
                results[side].append((total, first))
                first_text = f"first shard {first:5.2f} s" if first is not None else "first shard -"
                print(f"  round {index} {side:<13}: {first_text}, exit {total:5.2f} s", flush=True)
    finally:
        if head is not None:
            head.terminate()
            head.wait(60)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    medians = {}
    for side, rows in results.items():
        exits = [t for t, _ in rows]
        firsts = [f for _, f in rows if f is not None]
        medians[side] = statistics.median(exits)
        first_text = f"{statistics.median(firsts):.2f} s" if firsts else "-"
        print(f"{side}: median first shard {first_text}, exit {medians[side]:.2f} s")
    print(f"RESULT metric=start_to_exit_s tvp={medians['tvp']:.2f} reference={medians['img2dataset']:.2f} "
          f"ratio={medians['tvp'] / medians['img2dataset']:.3f} better=lower")
    return 0


if __name__ == "__main__":
    sys.exit(main())
