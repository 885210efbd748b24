"""Local files that appear whole or not at all: written under a temporary name, then renamed.

``open_atomic`` is the one place that does this; ``ShardStore.open_write``
uses it for local folders (object storage has its own whole-or-nothing upload).
A temporary left by a killed process ends in ``TMP_SUFFIX``, which is how
``remove_partial_files`` recognises it.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

TMP_SUFFIX = ".tmp"


@contextmanager
def open_atomic(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file to write; ``path`` appears, whole, only when the block ends without an error."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            yield f
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def json_bytes(obj: Any) -> bytes:
    """The JSON form of every file tvp writes: indented, keys sorted, one final newline."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def write_atomic(path: str | Path, data: bytes) -> None:
    with open_atomic(path) as f:
        f.write(data)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_atomic(path, json_bytes(obj))
