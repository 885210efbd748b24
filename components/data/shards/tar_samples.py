"""Samples out of one shard tar, streamed: local paths and object storage alike, never unpickled.

A sample is the run of consecutive tar members that share a key: the member
name up to the first dot of its base name (the WebDataset convention, which
img2dataset and open_clip follow). Members come back as raw bytes under their
extension (``jpg``, ``txt``, ``json``, ``input_ids.npy``); decoding is the
job of whoever knows what they mean.
"""

from __future__ import annotations

import tarfile
from contextlib import contextmanager
from typing import IO, Iterator, Sequence

import pyarrow.fs as pafs

KEY = "__key__"


@contextmanager
def open_shard(url: str) -> Iterator[IO[bytes]]:
    """A binary stream of the shard at ``url``: a local path, ``file://``, ``s3://`` or ``gs://``."""
    if "://" not in url or url.startswith("file://"):
        with open(url.removeprefix("file://"), "rb") as f:
            yield f
        return
    fs, path = pafs.FileSystem.from_uri(url)
    with fs.open_input_stream(path) as f:
        yield f


def _split(name: str) -> tuple[str, str]:
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension


def iter_tar_samples(stream: IO[bytes], members: Sequence[str] | None = None) -> Iterator[dict[str, bytes]]:
    """Samples of a tar stream in order, with ``__key__`` and only ``members`` (all when None) as bytes."""
    wanted = set(members) if members is not None else None
    sample: dict[str, bytes] = {}
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, extension = _split(info.name)
            if sample and sample[KEY] != key:
                yield sample
                sample = {}
            if not sample:
                sample = {KEY: key}
            if wanted is None or extension in wanted:
                sample[extension] = tar.extractfile(info).read()
    if sample:
        yield sample


def iter_shard_samples(url: str, members: Sequence[str] | None = None) -> Iterator[dict[str, bytes]]:
    """Samples of the shard at ``url`` (see ``iter_tar_samples``)."""
    with open_shard(url) as stream:
        yield from iter_tar_samples(stream, members)
