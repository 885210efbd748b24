"""Local files that appear whole or not at all: written under a temporary name, then renamed.

``open_atomic`` is the one place that does this; ``ShardStore.open_write``
uses it for local folders (object storage has its own whole-or-nothing upload).
Temporary names are unique (``.NAME.<12 hex>.tmp``), so two writers never
share one, and the file and its folder are fsynced around the rename, so a
crash cannot leave a visible name over missing data. A temporary left by a
killed process matches ``temporary_of``, which is how ``remove_partial_files``
recognises it (and nothing else).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

TMP_SUFFIX = ".tmp"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.tmp$")


def temporary_name(name: str) -> str:
    return f".{name}.{secrets.token_hex(6)}{TMP_SUFFIX}"


def temporary_of(name: str) -> str | None:
    """The file a tvp temporary named ``name`` was becoming, or None when ``name`` is no tvp temporary."""
    match = _TEMPORARY.match(name)
    return match.group("name") if match else None


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def open_atomic(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file to write; ``path`` appears, whole and on disk, only when the block ends without an error."""
    path = Path(path)
    tmp = path.with_name(temporary_name(path.name))
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    _fsync_folder(path.parent)


def json_bytes(obj: Any) -> bytes:
    """The JSON form of every file tvp writes: indented, keys sorted, one final newline."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def write_atomic(path: str | Path, data: bytes) -> None:
    with open_atomic(path) as f:
        f.write(data)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_atomic(path, json_bytes(obj))
