"""``map`` over a thread pool, in input order, with a bounded number of items in flight.

``ThreadPoolExecutor.map`` submits every item at once, so a slow consumer
(the tar writer) would let finished downloads pile up in memory; here at
most ``window`` results wait at any time.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int, window: int | None = None) -> Iterator[R]:
    window = window or 4 * threads
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
