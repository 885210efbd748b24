"""Image locations that are local files, read only by consent.

A table taken from the web could otherwise make the workers read any file
they can see (absolute paths, ``file://`` URLs, ``../`` escapes), hang on a
FIFO, or exhaust memory on ``/dev/zero``. So a local location is read only
when all of these hold, and is otherwise its row's ``local_file_refused``
failure:

- it resolves (symlinks followed) to a path inside an allowed root: the
  table's own folder when the table is local, plus every root given on
  purpose (``--allow-local-root``); a table in object storage has no root of
  its own; relative paths are taken from the table's folder, else the first
  root given;
- a ``file://`` URL has no host part (``file:///a.png``, not ``file://host/a.png``);
- it is a regular file (no FIFO, device or folder), opened without blocking;
- it holds at most ``max_bytes`` (``too_large`` otherwise), read within
  ``timeout_s`` (``timeout`` otherwise), the limits downloads have too.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from components.data.ingest.image_processing import ImageError

REFUSED = "local_file_refused"
CHUNK = 1 << 20


@dataclass(frozen=True)
class LocalFiles:
    roots: tuple[str, ...]  # folders whose files may be read (resolved here); empty: no local file at all
    base_dir: str = ""  # where relative locations point: the table's folder, "" for a remote table
    max_bytes: int = 32 * 1024 * 1024
    timeout_s: float = 10.0

    def _path(self, location: str) -> str:
        if location.lower().startswith("file:"):
            parsed = urlparse(location)
            if parsed.netloc not in ("", "localhost"):
                raise ImageError(REFUSED, f"file:// URL with a host ({parsed.netloc!r}) is not a local file")
            location = unquote(parsed.path)
        if os.path.isabs(location):
            return location
        base = self.base_dir or (self.roots[0] if self.roots else "")
        if not base:
            raise ImageError(REFUSED, "a relative path in a remote table needs --allow-local-root")
        return os.path.join(base, location)

    def _inside_a_root(self, real: str) -> bool:
        for root in self.roots:
            root = os.path.realpath(root)
            if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
                return True
        return False

    def read(self, location: str) -> bytes:
        """The bytes of the file at ``location`` (a path or ``file://`` URL), or ``ImageError``."""
        if not self.roots:
            raise ImageError(REFUSED, "local files are not read for this table: give --allow-local-root DIR")
        real = os.path.realpath(self._path(location))
        if not self._inside_a_root(real):
            raise ImageError(REFUSED, "outside the allowed local roots")
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise ImageError("read", f"cannot open it: {exc.strerror or exc}") from exc
        with os.fdopen(fd, "rb", buffering=0) as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ImageError(REFUSED, "not a regular file")
            if info.st_size > self.max_bytes:
                raise ImageError("too_large", f"{info.st_size} bytes exceed the {self.max_bytes}-byte limit")
            return self._read_limited(f)

    def _read_limited(self, f) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        parts, size = [], 0
        while chunk := f.read(CHUNK):
            size += len(chunk)
            if size > self.max_bytes:  # the file grew after it was measured
                raise ImageError("too_large", f"more than the {self.max_bytes}-byte limit")
            if time.monotonic() > deadline:
                raise ImageError("timeout", f"not read within {self.timeout_s} s")
            parts.append(chunk)
        return b"".join(parts)
