"""Where a shard set lives: a local folder or object storage, with files that appear whole or not at all.

Locally a file is written under a temporary name and renamed. In object
storage (``s3://…``, ``gs://…`` through pyarrow's filesystems) an object
becomes visible only when its upload completes, so a file is written to a
local temporary file first and uploaded once it is whole.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

import pyarrow.fs as pafs

from components.data.shards.atomic_files import json_bytes, open_atomic


class ShardStore:
    def __init__(self, location: str | Path):
        location = str(location)
        self.is_local = "://" not in location or location.startswith("file://")
        if self.is_local:
            self.fs: pafs.FileSystem = pafs.LocalFileSystem()
            self.root = os.path.abspath(location.removeprefix("file://"))
        else:
            self.fs, self.root = pafs.FileSystem.from_uri(location)
        self.location = location

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def exists(self, name: str = "") -> bool:
        return self.fs.get_file_info(self.path(name) if name else self.root).type != pafs.FileType.NotFound

    def makedirs(self, name: str = "") -> None:
        self.fs.create_dir(self.path(name) if name else self.root, recursive=True)

    def names(self, folder: str = "") -> list[str]:
        """File names directly in ``folder`` (the root by default), sorted."""
        selector = pafs.FileSelector(self.path(folder) if folder else self.root, allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File)

    def folders(self) -> list[str]:
        """Names of the folders directly inside the root, sorted (none when the root does not exist)."""
        selector = pafs.FileSelector(self.root, allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.Directory)

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self.path(name)) as f:
            return f.read()

    def read_json(self, name: str) -> Any:
        return json.loads(self.read_bytes(name))

    def size(self, name: str) -> int:
        return self.fs.get_file_info(self.path(name)).size

    @contextmanager
    def open_write(self, name: str) -> Iterator[IO[bytes]]:
        """A binary file to write; ``name`` appears, whole, only when the block ends without an error."""
        if self.is_local:
            with open_atomic(self.path(name)) as f:
                yield f
            return
        with tempfile.TemporaryFile() as f:
            yield f
            f.seek(0)
            with self.fs.open_output_stream(self.path(name)) as out:
                shutil.copyfileobj(f, out, 1 << 20)

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.open_write(name) as f:
            f.write(data)

    def write_json(self, name: str, obj: Any) -> None:
        self.write_bytes(name, json_bytes(obj))

    def delete(self, name: str) -> None:
        self.fs.delete_file(self.path(name))

    def delete_folder(self, name: str) -> None:
        if self.exists(name):
            self.fs.delete_dir(self.path(name))
