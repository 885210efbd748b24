"""A shard set in img2dataset's exact output layout, written by the test itself (no tvp file in it).

What img2dataset writes per shard (``--output_format webdataset``, 5-digit shard names):
- ``NNNNN.tar``: one sample per image that downloaded and resized, members ``KEY.jpg``, ``KEY.txt`` (the
  caption) and ``KEY.json`` (the row's metadata, indented by 4); keys are ``shard_id * 10**4 + row`` in
  9 digits (``000010003``: shard 1, row 3), in the order downloads finished, not row order;
- ``NNNNN.parquet``: every input row with ``key``, ``status``, ``error_message`` and sizes;
- ``NNNNN_stats.json``, last: ``count`` (input rows), ``successes`` (samples in the tar),
  ``failed_to_download``, ``failed_to_resize``, times and ``status_dict`` (status or error → rows).
"""

from __future__ import annotations

import io
import json
import random
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def _jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), ((seed * 37) % 256, (seed * 91) % 256, (seed * 17) % 256)).save(out, "JPEG")
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), time.time(), 0o444
    tar.addfile(info, io.BytesIO(data))


def write_img2dataset_shard(folder: Path, shard_id: int, rows: int, failed: set[int] = frozenset(),
                            stats: bool = True, seed: int = 0) -> list[str]:
    """Write shard ``shard_id`` of ``rows`` input rows (rows in ``failed`` did not download); return its keys
    in tar order."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{shard_id:05d}"
    order = list(range(rows))
    random.Random(seed + shard_id).shuffle(order)  # downloads finish out of order
    metas, keys = [], []
    with tarfile.open(folder / f"{name}.tar", "w") as tar:
        for row in order:
            key = f"{shard_id * 10**4 + row:09d}"
            ok = row not in failed
            meta = {"url": f"http://images.example/{shard_id}/{row}.jpg", "caption": f"a photo number {row}",
                    "key": key, "status": "success" if ok else "failed_to_download",
                    "error_message": None if ok else "HTTP Error 404: Not Found",
                    "width": 16 if ok else None, "height": 16 if ok else None,
                    "original_width": 64 if ok else None, "original_height": 48 if ok else None}
            metas.append(meta)
            if not ok:
                continue
            keys.append(key)
            _add(tar, f"{key}.jpg", _jpeg(shard_id * 1000 + row))
            _add(tar, f"{key}.txt", meta["caption"].encode())
            _add(tar, f"{key}.json", json.dumps(meta, indent=4).encode())
    pq.write_table(pa.Table.from_pylist(metas), folder / f"{name}.parquet")
    if stats:
        successes = rows - len(failed)
        status_dict = {"success": successes, **({"HTTP Error 404: Not Found": len(failed)} if failed else {})}
        now = time.time()
        (folder / f"{name}_stats.json").write_text(json.dumps({
            "count": rows, "successes": successes, "failed_to_download": len(failed), "failed_to_resize": 0,
            "duration": 1.5, "start_time": now - 1.5, "end_time": now, "status_dict": status_dict,
        }, indent=4))
    return keys


def write_img2dataset_set(folder: Path, rows_per_shard: tuple[int, ...] = (6, 5, 7)) -> list[str]:
    """A finished img2dataset output: one failed download in each shard. Returns every key in reading order."""
    keys: list[str] = []
    for shard_id, rows in enumerate(rows_per_shard):
        keys += write_img2dataset_shard(folder, shard_id, rows, failed={rows // 2})
    return keys
