"""Image-text ingestion throughput: ``tvp ingest image-text`` against img2dataset.

Both tools download the same table of distinct photo-like JPEGs from a server
on loopback, resize them to 256 px in border mode, re-encode them as JPEG
(quality 95) and write WebDataset shards of 1,000 samples, with the same
number of processes and download threads per process. Rounds alternate
(img2dataset, tvp, img2dataset, tvp, ...), each into a fresh folder, and a
round's rate is its successful images over the wall time of the whole command
(start-up included). The result is the median over rounds. A round that stores
fewer than 95 % of the images is invalid: a run that fails downloads is not
fast.

img2dataset's per-image EXIF extraction and SHA-256 are switched off
(``--extract_exif False --compute_hash None``), although tvp does hash every
image (and deduplicates the set at the end): the reference does less work
than tvp, never more. Both honour X-Robots-Tag opt-outs (the server sends
none); nothing fails on loopback, so retries never run.

The images (default 20,000) are random crops, flips and colour shifts of
scikit-learn's two sample photos (enlarged, with grain), 320-1024 px a side,
JPEG quality 90, made once into a cache folder (``--cache-dir``, default in the
system temp folder) and reused. They are served by nginx when
``/usr/sbin/nginx`` exists (``--nginx PATH`` names another), else by a small
asyncio server in its own process (about 3x nginx's CPU per request, some 5 %
of the machine at these rates; each round prints the server's CPU time).

img2dataset lives in its own venv (``benchmarks/.img2dataset-venv``, made on
first use by ``benchmarks/img2dataset_env.sh``): it pins an older webdataset.

Run: ``.venv/bin/python benchmarks/ingest_vs_img2dataset.py [--images N]
[--processes P] [--threads T] [--rounds R] [--only img2dataset|tvp]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageChops

ROOT = Path(__file__).resolve().parents[1]
TVP = ROOT / ".venv" / "bin" / "tvp"
I2D_ENV_SCRIPT = ROOT / "benchmarks" / "img2dataset_env.sh"
I2D_VENV = ROOT / "benchmarks" / ".img2dataset-venv"
DEFAULT_NGINX = "/usr/sbin/nginx"

GENERATOR_VERSION = 1  # bump when the images change, so caches are remade
SEED = 20261127
MIN_SIDE, MAX_SIDE = 320, 1024
SOURCE_QUALITY = 90
IMAGE_SIZE, RESIZE_MODE, OUTPUT_QUALITY, ROWS_PER_SHARD = 256, "border", 95, 1000
MIN_SUCCESS_FRACTION = 0.95
SMALL_MIN, SMALL_MAX, SMALL_QUALITY = (160, 120), (320, 240), 85
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")

# --------------------------------------------------------------------------- images

_canvases: list[Image.Image] = []
CANVAS_SCALES = (2.4, 3.2, 4.0)  # 427 px x 2.4 > MAX_SIDE: any output fits in any canvas


def _init_generator() -> None:
    """Per worker: the sample photos enlarged to a few scales, with sensor-like grain baked in.

    Every image is then a crop at its final size (no per-image resampling, which
    made generation 4x slower); the grain keeps the JPEGs about as hard to
    compress as real photos (~1.7 bits per pixel at quality 90).
    """
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(SEED)
    _canvases.clear()
    for array in load_sample_images().images:
        src = Image.fromarray(array)
        for scale in CANVAS_SCALES:
            canvas = src.resize((math.ceil(src.width * scale), math.ceil(src.height * scale)), Image.Resampling.BICUBIC)
            grain = np.clip(rng.normal(128, 4, (canvas.height, canvas.width, 3)), 0, 255).astype(np.uint8)
            _canvases.append(ImageChops.add(canvas, Image.fromarray(grain), offset=-128))


def _make_large_image(job: tuple[int, str]) -> int:
    """Image ``index``: a random crop (320-1024 px a side, aspect 1:2 to 2:1), maybe flipped, colour-shifted."""
    index, folder = job
    rng = np.random.default_rng([SEED, index])
    canvas = _canvases[int(rng.integers(len(_canvases)))]
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))  # width / height
    width = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    height = int(min(MAX_SIDE, max(MIN_SIDE, round(width / aspect))))
    x, y = int(rng.integers(0, canvas.width - width + 1)), int(rng.integers(0, canvas.height - height + 1))
    img = canvas.crop((x, y, x + width, y + height))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    gains, shift = rng.uniform(0.75, 1.25, 3), rng.uniform(-20, 20)
    ramp = np.arange(256)
    img = img.point(np.concatenate([np.clip(ramp * g + shift, 0, 255) for g in gains]).astype(np.uint8).tolist())
    path = Path(folder) / f"{index:06d}.jpg"
    img.save(path, format="JPEG", quality=SOURCE_QUALITY)
    return path.stat().st_size



_photos: list[Image.Image] = []


def _init_small_generator() -> None:
    """Per worker: the real sample photos, unenlarged (scikit-learn's two and scikit-image's colour ones)."""
    _photos.clear()
    _photos.extend(real_photos())


def _make_small_image(job: tuple[int, str]) -> int:
    """Image ``index`` of the small profile: a random crop (40-100 % of a photo's sides) downscaled to
    160-320 x 120-240 px, maybe flipped, JPEG quality 85: the thumbnails a large share of web images are."""
    index, folder = job
    rng = np.random.default_rng([SEED, 2, index])
    photo = _photos[int(rng.integers(len(_photos)))]
    width, height = int(rng.integers(SMALL_MIN[0], SMALL_MAX[0] + 1)), int(rng.integers(SMALL_MIN[1], SMALL_MAX[1] + 1))
    crop_w = int(photo.width * rng.uniform(0.4, 1.0))
    crop_h = int(min(photo.height, max(crop_w * height / width, 8)))
    crop_w = int(min(photo.width, crop_h * width / height))
    x, y = int(rng.integers(0, photo.width - crop_w + 1)), int(rng.integers(0, photo.height - crop_h + 1))
    img = photo.crop((x, y, x + crop_w, y + crop_h)).resize((width, height), Image.Resampling.LANCZOS)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    path = Path(folder) / f"{index:06d}.jpg"
    img.save(path, format="JPEG", quality=SMALL_QUALITY)
    return path.stat().st_size


def real_photos() -> list[Image.Image]:
    """Colour photos that ship inside installed packages: scikit-learn's two and scikit-image's."""
    import skimage
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    folder = Path(skimage.__file__).parent / "data"
    photos += [Image.open(folder / name).convert("RGB") for name in SKIMAGE_PHOTOS]
    return photos


PROFILES = {  # name -> (initializer, maker, description)
    "large": (_init_generator, _make_large_image, f"photo-like JPEGs of {MIN_SIDE}-{MAX_SIDE} px, quality {SOURCE_QUALITY}"),
    "small": (_init_small_generator, _make_small_image,
              f"real-photo JPEGs of {SMALL_MIN[0]}-{SMALL_MAX[0]} x {SMALL_MIN[1]}-{SMALL_MAX[1]} px, quality {SMALL_QUALITY}"),
}


def ensure_images(cache_dir: Path, profile: str, count: int, workers: int) -> Path:
    """The ``count`` source images of ``profile``, made once into ``cache_dir`` (a completed folder is reused)."""
    folder = cache_dir / (f"images-v{GENERATOR_VERSION}-{count}" if profile == "large"
                          else f"images-{profile}-v{GENERATOR_VERSION}-{count}")
    if (folder / ".complete").exists():
        print(f"images: reusing {count} {profile} images in {folder}")
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    init, make, _ = PROFILES[profile]
    with mp.get_context("fork").Pool(workers, initializer=init) as pool:
        sizes = pool.map(make, [(i, str(folder)) for i in range(count)], chunksize=64)
    (folder / ".complete").write_text(json.dumps({"count": count, "bytes": sum(sizes)}))
    print(f"images: made {count} {profile} JPEGs ({sum(sizes) / 1e6:.0f} MB, mean {sum(sizes) / count / 1e3:.0f} kB) "
          f"in {time.perf_counter() - started:.1f} s with {workers} processes into {folder}")
    return folder


def warm_page_cache(folder: Path) -> None:
    """Read every image once so that the first round does not pay for the disk."""
    for path in folder.glob("*.jpg"):
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass


# --------------------------------------------------------------------------- servers

_FILE_NAME = re.compile(r"[0-9]+\.jpg")


def _read_file(path: str) -> bytes | None:
    """Blocking, on purpose: the images sit in the page cache, and a thread hop would cost more."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


class _StaticFiles(asyncio.Protocol):
    """A minimal HTTP/1.1 static file server for ``NNNNNN.jpg`` names: GET and HEAD, keep-alive honoured.

    A bare protocol rather than asyncio streams: about half the CPU per request.
    """

    def __init__(self, root: str):
        self.root = root
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self._respond(head.split(b"\r\n"))
        if len(self.buffer) > 65536:  # no request head is that long
            self._close()

    def _respond(self, lines: list[bytes]) -> None:
        request = lines[0].split()
        if not request:
            self._close()
            return
        keep_alive = lines[0].rstrip().endswith(b"HTTP/1.1")
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"connection":
                keep_alive = value.strip().lower() == b"keep-alive"
        body, status = b"not found\n", b"404 Not Found"
        if len(request) >= 2 and request[0] in (b"GET", b"HEAD"):
            name = request[1].decode("latin-1").split("?", 1)[0].lstrip("/")
            if _FILE_NAME.fullmatch(name):
                found = _read_file(os.path.join(self.root, name))
                if found is not None:
                    body, status = found, b"200 OK"
        kind = b"image/jpeg" if status == b"200 OK" else b"text/plain"
        head = b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n" % (
            status, kind, len(body), b"keep-alive" if keep_alive else b"close")
        self.transport.write(head if request[0] == b"HEAD" else head + body)
        if not keep_alive:
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()  # after the buffered response is written
            self.transport = None


def _python_server_main(sock: socket.socket, root: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the benchmark stops us

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(lambda: _StaticFiles(root), sock=sock)
        await server.serve_forever()

    asyncio.run(main())


@dataclass
class Server:
    kind: str
    base_url: str
    processes: list = field(default_factory=list)  # psutil.Process or mp.Process
    popen: subprocess.Popen | None = None

    def cpu_seconds(self) -> float:
        """CPU time of the server's processes (nginx: master and workers) so far."""
        pids = [self.popen.pid] if self.popen else [p.pid for p in self.processes]
        total = 0.0
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                for p in [proc, *proc.children(recursive=True)]:
                    t = p.cpu_times()
                    total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        if self.popen is not None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        for p in self.processes:
            p.terminate()
            p.join(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(nginx: str, root: Path, workdir: Path) -> Server:
    conf_dir = workdir / "nginx"
    conf_dir.mkdir()
    port = _free_port()
    user = "user root;" if os.geteuid() == 0 else ""  # workers of a root master would read as nobody
    (conf_dir / "nginx.conf").write_text(f"""{user}
worker_processes 1;
daemon off;
pid {conf_dir}/nginx.pid;
error_log {conf_dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {conf_dir}/body;
    proxy_temp_path {conf_dir}/proxy;
    fastcgi_temp_path {conf_dir}/fastcgi;
    uwsgi_temp_path {conf_dir}/uwsgi;
    scgi_temp_path {conf_dir}/scgi;
    types {{ image/jpeg jpg; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
        location / {{ }}
    }}
}}
""")
    popen = subprocess.Popen([nginx, "-p", str(conf_dir), "-e", str(conf_dir / "error.log"),
                              "-c", str(conf_dir / "nginx.conf")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return Server("nginx", f"http://127.0.0.1:{port}", popen=popen)


def start_python_server(root: Path, processes: int) -> Server:
    sock = socket.create_server(("127.0.0.1", 0), backlog=4096)
    port = sock.getsockname()[1]
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_python_server_main, args=(sock, str(root)), daemon=True) for _ in range(processes)]
    for p in procs:
        p.start()
    sock.close()  # the children hold it
    return Server(f"python asyncio ({processes} process{'es' if processes > 1 else ''})",
                  f"http://127.0.0.1:{port}", processes=procs)


def wait_until_serving(server: Server, folder: Path) -> None:
    expected = (folder / "000000.jpg").read_bytes()
    deadline = time.monotonic() + 15
    while True:
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                    f"{server.base_url}/000000.jpg", timeout=2) as r:
                if r.read() != expected:
                    raise RuntimeError("the server returned other bytes than the file")
                return
        except OSError:
            if server.popen is not None and server.popen.poll() is not None:
                raise RuntimeError(f"nginx exited: {server.popen.stderr.read().decode(errors='replace')}")
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# --------------------------------------------------------------------------- runs


@dataclass
class Round:
    tool: str
    index: int
    wall_s: float
    successes: int
    total: int
    failures: dict
    server_cpu_s: float
    returncode: int

    @property
    def rate(self) -> float:
        return self.successes / self.wall_s

    @property
    def valid(self) -> bool:
        return self.returncode == 0 and self.successes >= MIN_SUCCESS_FRACTION * self.total


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               NO_ALBUMENTATIONS_UPDATE="1",  # albumentations asks PyPI for updates on import otherwise
               WANDB_MODE="disabled", WANDB_SILENT="true")
    return env


def img2dataset_command(table: Path, out: Path, processes: int, threads: int) -> list[str]:
    return [str(I2D_VENV / "bin" / "img2dataset"),
            "--url_list", str(table), "--input_format", "parquet", "--url_col", "url", "--caption_col", "caption",
            "--output_format", "webdataset", "--output_folder", str(out),
            "--image_size", str(IMAGE_SIZE), "--resize_mode", RESIZE_MODE, "--encode_quality", str(OUTPUT_QUALITY),
            "--processes_count", str(processes), "--thread_count", str(threads),
            "--number_sample_per_shard", str(ROWS_PER_SHARD),
            "--extract_exif", "False", "--compute_hash", "None", "--retries", "0", "--timeout", "10"]


def tvp_command(table: Path, out: Path, processes: int, threads: int) -> list[str]:
    """tvp with img2dataset's processes, threads and shard size."""
    return [*tvp_defaults_command(table, out),
            "--processes", str(processes), "--threads", str(threads), "--rows-per-shard", str(ROWS_PER_SHARD)]


def tvp_defaults_command(table: Path, out: Path, processes: int = 0, threads: int = 0) -> list[str]:
    """tvp as a new user runs it: its own defaults for processes, threads and shard size."""
    return [str(TVP), "ingest", "image-text", str(table), "--output", str(out),
            "--image-size", str(IMAGE_SIZE), "--resize-mode", RESIZE_MODE, "--jpeg-quality", str(OUTPUT_QUALITY),
            "--allow-address", "127.0.0.1"]


COMMANDS = {"img2dataset": img2dataset_command, "tvp": tvp_command, "tvp-defaults": tvp_defaults_command}


def img2dataset_counts(out: Path) -> tuple[int, dict]:
    successes, failures = 0, {}
    for path in out.glob("*_stats.json"):
        stats = json.loads(path.read_text())
        successes += stats.get("successes", 0)
        for message, n in stats.get("status_dict", {}).items():
            if message != "success":
                failures[message] = failures.get(message, 0) + n
    return successes, failures


def tvp_counts(out: Path) -> tuple[int, dict]:
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        failures = dict(manifest.get("errors", {}))
        counts = manifest.get("counts") or {}
        if "successes" in counts:
            return int(counts["successes"]), failures
        if "num_samples" in manifest:
            return int(manifest["num_samples"]), failures
    return count_tar_images(out)[0], {}


def count_tar_images(out: Path) -> tuple[int, tuple[int, int] | None]:
    """JPEG members in the folder's tars, and the size of the first one (a check that both wrote the same)."""
    count, first_size = 0, None
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".jpg"):
                    count += 1
                    if first_size is None:
                        with Image.open(tar.extractfile(member)) as img:
                            first_size = img.size
    return count, first_size


def run_round(tool: str, index: int, table: Path, total: int, workdir: Path, server: Server,
              processes: int, threads: int) -> Round:
    out = workdir / f"out-{tool}-{index}"
    log = workdir / f"log-{tool}-{index}.txt"
    cmd = COMMANDS[tool](table, out, processes, threads)
    if index == 1:
        print(f"  command: {' '.join(cmd)}")
    cpu_before = server.cpu_seconds()
    started = time.perf_counter()
    with open(log, "wb") as f:
        rc = subprocess.run(cmd, check=False, stdout=f, stderr=subprocess.STDOUT, env=child_env(), cwd=workdir).returncode
    wall = time.perf_counter() - started
    server_cpu = server.cpu_seconds() - cpu_before
    successes, failures = (img2dataset_counts if tool == "img2dataset" else tvp_counts)(out) if out.exists() else (0, {})
    in_tars, first_size = count_tar_images(out) if out.exists() else (0, None)
    r = Round(tool, index, wall, successes, total, failures, server_cpu, rc)
    failed = ", ".join(f"{k}: {v}" for k, v in sorted(failures.items(), key=lambda kv: -kv[1])[:5]) or "none"
    print(f"  round {index} {tool:<12}: {successes}/{total} ok in {wall:6.1f} s = {r.rate:7.1f} images/s "
          f"(tars hold {in_tars} jpg, first {first_size}; server CPU {server_cpu:.1f} s; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; failures: {failed})"
          + ("" if r.valid else "  ** INVALID **"), flush=True)
    if in_tars != successes:
        print(f"  warning: {tool} reports {successes} successes but its tars hold {in_tars} images")
    if first_size not in (None, (IMAGE_SIZE, IMAGE_SIZE)):
        print(f"  warning: {tool} stored {first_size} images, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    if not r.valid:
        tail = log.read_text(errors="replace")[-3000:]
        print(f"  exit code {rc}; last lines of {tool}'s output:\n" + "\n".join("    " + l for l in tail.splitlines()))
    shutil.rmtree(out, ignore_errors=True)
    return r


def run_profile(profile: str, args: argparse.Namespace, tools: list[str]) -> list[Round]:
    """Every round of every tool on one image profile, alternated, against one server."""
    folder = ensure_images(args.cache_dir, profile, args.images, max(1, os.cpu_count() or 1))
    warm_page_cache(folder)
    workdir = Path(tempfile.mkdtemp(prefix=f"tvp-bench-ingest-{profile}-"))
    use_nginx = args.server == "nginx" or (args.server == "auto" and os.access(args.nginx, os.X_OK))
    server = start_nginx(args.nginx, folder, workdir) if use_nginx else start_python_server(folder, args.server_processes)
    rounds: list[Round] = []
    try:
        wait_until_serving(server, folder)
        table = workdir / "table.parquet"
        pq.write_table(pa.table({
            "url": [f"{server.base_url}/{i:06d}.jpg" for i in range(args.images)],
            "caption": [f"photo number {i}" for i in range(args.images)],
        }), table)
        print(f"profile {profile}: {PROFILES[profile][2]}; server {server.kind} at {server.base_url}; "
              f"{args.images} rows; img2dataset and tvp: {args.processes} processes x {args.threads} threads, "
              f"{ROWS_PER_SHARD} rows per shard; tvp-defaults: tvp's own; {IMAGE_SIZE} px {RESIZE_MODE}, "
              f"JPEG {OUTPUT_QUALITY}, {os.cpu_count()} CPUs", flush=True)
        for index in range(1, args.rounds + 1):
            for tool in tools:
                rounds.append(run_round(tool, index, table, args.images, workdir, server, args.processes, args.threads))
    finally:
        server.stop()
        if args.keep:
            print(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return rounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000, help="distinct images in each table (default 20000)")
    parser.add_argument("--profile", choices=["large", "small", "both"], default="both",
                        help="image profile: large (320-1024 px), small (320x240 and below) or both (default)")
    parser.add_argument("--processes", type=int, default=2, help="processes for img2dataset and tvp (default 2)")
    parser.add_argument("--threads", type=int, default=32, help="download threads per process (default 32)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per tool and profile, alternated (default 2)")
    parser.add_argument("--only", choices=sorted(COMMANDS), action="append",
                        help="run only these sides (repeatable; no RESULT line without img2dataset and a tvp side)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "tvp-bench-ingest",
                        help="where the generated images are kept between runs")
    parser.add_argument("--server", choices=["auto", "nginx", "python"], default="auto",
                        help="auto: nginx if it exists, else the Python server")
    parser.add_argument("--nginx", default=DEFAULT_NGINX, help=f"the nginx binary (default {DEFAULT_NGINX})")
    parser.add_argument("--server-processes", type=int, default=1, help="processes of the Python server (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the work folders (table, logs)")
    args = parser.parse_args()
    tools = args.only or list(COMMANDS)
    profiles = ["large", "small"] if args.profile == "both" else [args.profile]

    if "img2dataset" in tools:
        subprocess.run(["bash", str(I2D_ENV_SCRIPT)], check=True, stdout=subprocess.DEVNULL)
    if any(t.startswith("tvp") for t in tools) and not TVP.exists():
        print(f"error: {TVP} not found: install the project into .venv first", file=sys.stderr)
        return 1

    medians: dict[tuple[str, str], float] = {}
    for profile in profiles:
        rounds = run_profile(profile, args, tools)
        for tool in tools:
            valid = [r.rate for r in rounds if r.tool == tool and r.valid]
            if valid:
                medians[profile, tool] = statistics.median(valid)
                print(f"{profile} {tool}: median {medians[profile, tool]:.1f} images/s over {len(valid)} valid round(s) "
                      f"(all rounds: {', '.join(f'{r.rate:.1f}' for r in rounds if r.tool == tool)})")
            else:
                print(f"{profile} {tool}: no valid round (exit code non-zero or under {MIN_SUCCESS_FRACTION:.0%} stored)")
    ratios = {(p, t): medians[p, t] / medians[p, "img2dataset"]
              for p in profiles for t in tools if t != "img2dataset" and (p, t) in medians and (p, "img2dataset") in medians}
    for (profile, tool), ratio in ratios.items():
        print(f"{profile} {tool} / img2dataset: {ratio:.3f}")
    wanted = len(profiles) * len([t for t in tools if t != "img2dataset"])
    if not ratios or len(ratios) < wanted:
        return 0 if args.only and medians else 1
    (profile, tool), ratio = min(ratios.items(), key=lambda kv: kv[1])  # the result is the weakest case
    print(f"RESULT metric=images_per_s_{profile}_{tool.replace('-', '_')} tvp={medians[profile, tool]:.1f} "
          f"reference={medians[profile, 'img2dataset']:.1f} ratio={ratio:.3f} better=higher")
    return 0


if __name__ == "__main__":
    sys.exit(main())
