"""Class-per-folder image trees (torchvision's ``ImageFolder`` layout): listing, classes, held-out split, reader.

``ROOT/CLASS/…/FILE``: every file under a class folder, at any depth, belongs to that class. ROOT is a local
folder or an object-storage URI (``s3://bucket/prefix``, ``gs://…``), listed through pyarrow's filesystems.

- Classes are the names of ROOT's sub-folders that hold at least one file, in sorted (code point) order; a
  class's index is its position there, as torchvision's ``find_classes`` numbers them. Names may hold spaces.
- Hidden files and folders (a name starting with ``.``, at any depth) are ignored.
- Files directly in ROOT belong to no class: they are not ingested, and their number is reported
  (``files_outside_classes`` in the manifest's ``source``), since a tree that has them is often not the one
  meant.
- Every other file is an input row, images or not: the shard builder counts what it cannot use
  (``image_folder_shard.py``), so a stray ``README.txt`` is reported rather than silently dropped.
- Files are listed in sorted order of their path relative to ROOT (``/``-separated); each set's rows then
  follow a hash of (seed, path) (``mixed_order``), so that every shard mixes the classes: in path order a
  shard would hold one class or two, and a reader's shuffle window of a few shards would feed training whole
  batches of one class. Row positions, and the sample keys made from them, depend on the tree and seed alone.

Held-out split (``heldout_flags``): by class, files are ordered by a hash of (seed, relative path) and the
first ``fraction × files of the class`` (rounded half up) are held out. The split is thus stratified,
reproducible, and independent of listing order; a file keeps its side when others are added, except near its
class's cut.
A separate held-out tree is listed with the training tree's classes (``list_image_folder(..., classes=)``):
its classes must be among them, and its files get the training tree's indices.

Bad trees fail in ``list_image_folder`` with ``ImageFolderError``, one line, before anything is written.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Sequence

import pyarrow as pa
import pyarrow.fs as pafs

from components.errors import TvpError

ROW_SCHEMA = pa.schema([("path", pa.string()), ("label", pa.int64()), ("size", pa.int64())])


class ImageFolderError(TvpError, ValueError):
    """The image tree is missing, empty, unreadable, or names classes the training tree lacks. One line."""


def is_local(location: str) -> bool:
    return "://" not in location or location.startswith("file://")


def absolute_location(location: str) -> str:
    """A local path made absolute (Ray tasks run in other folders); a URI as it is, without a trailing slash."""
    return os.path.abspath(location.removeprefix("file://")) if is_local(location) else location.rstrip("/")


def open_root(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of ``location`` and its root path inside it (no trailing slash)."""
    if is_local(location):
        return pafs.LocalFileSystem(), os.path.abspath(location.removeprefix("file://"))
    try:
        fs, root = pafs.FileSystem.from_uri(location)
    except (pa.ArrowException, ValueError) as exc:
        raise ImageFolderError(f"cannot open {location}: {_first_line(exc)}") from exc
    return fs, root.rstrip("/")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclass(frozen=True)
class ImageFolderTree:
    """A listed tree: ``files`` are (relative path, class index, bytes), sorted by path."""

    location: str  # absolute_location of the root: where shard tasks read, and the manifest's ``root``
    classes: tuple[str, ...]  # index → name
    files: tuple[tuple[str, int, int], ...]
    files_outside_classes: int = 0


def _list_files(location: str) -> list[tuple[str, int]]:
    """(relative path, size) of every non-hidden file under ``location``."""
    fs, root = open_root(location)
    try:
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise ImageFolderError(f"image folder {location} does not exist")
        if info.type != pafs.FileType.Directory:
            raise ImageFolderError(f"{location} is not a folder: give the folder whose sub-folders are the classes")
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except OSError as exc:  # object stores: credentials, permissions, network
        raise ImageFolderError(f"cannot list {location}: {_first_line(exc)}") from exc
    files = []
    for item in infos:
        relative = item.path[len(root):].lstrip("/")
        if item.type == pafs.FileType.File and not any(part.startswith(".") for part in relative.split("/")):
            files.append((relative, item.size))
    return sorted(files)


def list_image_folder(location: str, classes: Sequence[str] | None = None) -> ImageFolderTree:
    """List the tree at ``location``; with ``classes`` (a training tree's), index by those and refuse others."""
    location = absolute_location(location)
    listed = _list_files(location)
    in_classes = [(path, size) for path, size in listed if "/" in path]
    found = sorted({path.split("/", 1)[0] for path, _ in in_classes})
    if not found:
        what = "only files, no class folders" if listed else "no files"
        raise ImageFolderError(f"image folder {location} has {what}: expected ROOT/CLASS/IMAGE files")
    if classes is None:
        classes = found
    unknown = [name for name in found if name not in classes]
    if unknown:
        raise ImageFolderError(f"held-out folder {location} has classes the training folder lacks: "
                               f"{', '.join(repr(n) for n in unknown[:5])}" + (" …" if len(unknown) > 5 else ""))
    index = {name: i for i, name in enumerate(classes)}
    files = tuple((path, index[path.split("/", 1)[0]], size) for path, size in in_classes)
    if not any(_looks_like_image(path) for path, _, _ in files):
        raise ImageFolderError(f"image folder {location} holds no image files (.jpg, .png, …) in its class folders")
    return ImageFolderTree(location, tuple(classes), files, len(listed) - len(in_classes))


# The names torchvision's ImageFolder takes for images, and GIF; case does not matter.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def _looks_like_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _split_rank(seed: int, path: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{path}".encode()).digest()


def mixed_order(files: Sequence[tuple[str, int, int]], seed: int) -> tuple[tuple[str, int, int], ...]:
    """``files`` in the order of a hash of (seed, path): classes interleaved, the same order on every run."""
    return tuple(sorted(files, key=lambda f: hashlib.sha256(f"order\0{seed}\0{f[0]}".encode()).digest()))


def heldout_flags(tree: ImageFolderTree, fraction: float, seed: int) -> list[bool]:
    """For each of ``tree.files``, whether it is held out: per class of n files, the ``fraction × n``
    (rounded half up) of smallest hash of (seed, path)."""
    if not 0 <= fraction < 1:
        raise ValueError("the held-out fraction must be at least 0 and below 1")
    by_class: dict[int, list[int]] = {}
    for i, (_, label, _) in enumerate(tree.files):
        by_class.setdefault(label, []).append(i)
    flags = [False] * len(tree.files)
    for members in by_class.values():
        ranked = sorted(members, key=lambda i: _split_rank(seed, tree.files[i][0]))
        for i in ranked[:math.floor(fraction * len(members) + 0.5)]:
            flags[i] = True
    return flags


@dataclass(frozen=True)
class ImageFolderReader:
    """The shard stage's ``InputReader`` for one split of a tree: rows ``path`` (relative to the root),
    ``label`` (class index) and ``size`` (bytes), in the order of ``files`` (``mixed_order``).

    ``split`` says which files these are (e.g. ``{"split": "heldout", "fraction": 0.2, "seed": 0}``); it is
    part of ``describe()``, so the training and held-out sets of one tree have different fingerprints.
    """

    tree: ImageFolderTree
    files: tuple[tuple[str, int, int], ...]
    split: dict[str, Any]
    input_name: ClassVar[str] = "image folder"

    def describe(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for path, label, size in self.files:
            digest.update(f"{path}\0{label}\0{size}\n".encode())
        return {"kind": "image-folder", "root": self.tree.location, **self.split, "files": len(self.files),
                "bytes": sum(size for _, _, size in self.files), "listing_sha256": digest.hexdigest(),
                "files_outside_classes": self.tree.files_outside_classes}

    def read(self, batch_rows: int) -> Iterator[pa.Table]:
        for start in range(0, len(self.files), batch_rows):
            batch = self.files[start:start + batch_rows]
            yield pa.table({"path": [f[0] for f in batch], "label": [f[1] for f in batch],
                            "size": [f[2] for f in batch]}, schema=ROW_SCHEMA)


def split_readers(tree: ImageFolderTree, heldout: ImageFolderTree | None = None, fraction: float = 0.0,
                  seed: int = 0) -> tuple[ImageFolderReader, ImageFolderReader | None]:
    """Readers of the training set and the held-out set (None when none is asked for): ``heldout`` is a
    separate tree listed with ``tree``'s classes, else ``fraction`` of ``tree`` is held out by ``seed``."""
    if heldout is not None:
        return (ImageFolderReader(tree, mixed_order(tree.files, seed), {"split": "train", "seed": seed}),
                ImageFolderReader(heldout, mixed_order(heldout.files, seed), {"split": "heldout", "seed": seed}))
    if not fraction:
        return ImageFolderReader(tree, mixed_order(tree.files, seed), {"split": "train", "seed": seed}), None
    flags = heldout_flags(tree, fraction, seed)
    train = mixed_order([f for f, out in zip(tree.files, flags) if not out], seed)
    held = mixed_order([f for f, out in zip(tree.files, flags) if out], seed)
    if not train or not held:
        raise ImageFolderError(f"a held-out fraction of {fraction} of {tree.location}'s {len(tree.files)} files "
                               f"leaves the {'training' if not train else 'held-out'} set empty")
    shared = {"fraction": fraction, "seed": seed}
    return (ImageFolderReader(tree, train, {"split": "train", **shared}),
            ImageFolderReader(tree, held, {"split": "heldout", **shared}))
