"""A per-process budget for the memory of decoded pixels, shared by a shard's download threads.

A shard fetches and processes up to 32 rows at once. Compressed images are
small; their decoded pixels are not (a 24-megapixel PNG with alpha needs
about 340 MB on the way to a thumbnail). Each image holds its estimated share
of the budget while its full-size pixels exist, and waits while the budget is
spent, so peak memory stays near the budget whatever the thread count. An
image larger than the whole budget waits until it can run alone.
"""

from __future__ import annotations

import ctypes
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

# Freed pixels do not leave the process by themselves: once a large buffer is freed, glibc raises its mmap
# threshold to that size, so later buffers come from (and go back to) the allocating thread's own arena, which
# keeps them. With 32 threads each arena kept an image's worth: a shard of 5-megapixel PNGs grew by ~800 MB
# under a 200 MB budget; handing free pages back after each large share ends keeps it near 300 MB
# (tests/components/test_ingest_memory.py). Small images (most of the web) never pay for the call.
_TRIM_AFTER_BYTES = 8 * 1024 * 1024


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()


class DecodeBudget:
    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError("the decode budget must be positive")
        self.max_bytes = max_bytes
        self._used = 0
        self._peak = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the block (waiting for room first)."""
        share = max(0, min(nbytes, self.max_bytes))  # an oversized image takes all of it, so it runs alone
        with self._changed:
            while self._used + share > self.max_bytes:
                self._changed.wait()
            self._used += share
            self._peak = max(self._peak, self._used)
        try:
            yield
        finally:
            with self._changed:
                self._used -= share
                self._changed.notify_all()
            if _TRIM is not None and share >= _TRIM_AFTER_BYTES:
                _TRIM(0)

    @property
    def peak(self) -> int:
        """The most bytes held at once so far."""
        return self._peak
