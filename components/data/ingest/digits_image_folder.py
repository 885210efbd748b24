"""The embedded image folder: scikit-learn's digits written as a class-per-folder tree (``tvp ingest imagefolder
--sample``).

The same pictures as the demo's image-text data (``digits_demo_data.digit_image``): all 1,797 digits as grey
PNG squares, ``CLASS/NNNN.png`` where CLASS is the digit's word (``zero`` … ``nine``) and NNNN its index in
scikit-learn's array. Class indices are then those of any image folder, the sorted folder names (``eight`` is
0, ``zero`` is 9), not the digits' values.

The tree is written where the shards go (a local folder or object storage), so that every node of a cluster
that can write the shards can read it. A hidden marker ``.complete``, written last, says the tree is whole: a
rerun finds it and writes nothing, an interrupted write is redone. The bytes depend on ``source_size`` alone.
"""

from __future__ import annotations

import io
from typing import Iterator

from components.data.ingest.digits_demo_data import CLASS_NAMES, digit_image
from components.data.shards.shard_store import ShardStore

COMPLETE_MARKER = ".complete"  # hidden: the image-folder reader never lists it


def digits_folder_files(source_size: int = 64) -> Iterator[tuple[str, bytes]]:
    """(``CLASS/NNNN.png``, PNG bytes) for every digit, in index order."""
    from sklearn.datasets import load_digits  # heavy import, needed only here

    digits = load_digits()
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        png = io.BytesIO()
        digit_image(pixels, source_size).save(png, format="PNG")
        yield f"{CLASS_NAMES[int(label)]}/{index:04d}.png", png.getvalue()


def write_digits_folder(location: str, source_size: int = 64) -> str:
    """Write the digits tree at ``location`` (a folder or ``s3://…``) unless it is there whole; return ``location``."""
    store = ShardStore(location)
    if store.exists(COMPLETE_MARKER):
        return location
    for name in CLASS_NAMES:
        store.makedirs(name)
    for name, data in digits_folder_files(source_size):
        # Plain writes, not ShardStore's fsynced ones (seconds for 1,797 files): the marker vouches for them all.
        with store.fs.open_output_stream(store.path(name)) as f:
            f.write(data)
    store.write_bytes(COMPLETE_MARKER, f"{source_size}\n".encode())
    return location
