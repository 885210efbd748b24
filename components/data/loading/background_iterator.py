"""Iterating in a background thread, a few items ahead of the consumer.

The training loop reads each epoch through a fresh Ray Data pipeline whose
start-up (planning, launching read tasks, the first block) would otherwise
stall the first steps of every epoch. Starting the next epoch's reader in
the background while this epoch trains hides that. Order is unchanged: one
thread drains one iterator in sequence.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")
_END = object()


class BackgroundIterator(Generic[T]):
    """Runs ``make()`` and iterates it in a daemon thread, keeping up to ``depth`` items ready."""

    def __init__(self, make: Callable[[], Iterator[T]], depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(make,), daemon=True, name="background-iterator")
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, make: Callable[[], Iterator[T]]) -> None:
        try:
            for item in make():
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, raised where it iterates
            self._put(exc)

    def __iter__(self) -> "BackgroundIterator[T]":
        return self

    def __next__(self) -> T:
        if self._closed.is_set():
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._closed.set()
            raise StopIteration
        if isinstance(item, BaseException):
            self._closed.set()
            raise item
        return item

    def close(self) -> None:
        """Stop reading ahead; the thread ends at its next item."""
        self._closed.set()
