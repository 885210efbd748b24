"""BackgroundIterator: order, bounded read-ahead, errors, and a thread that really ends.

Nothing here measures time. The producer signals through events how far it
has got, so "it ran ahead" and "it stopped" are observed, not guessed from a
sleep; joins and waits carry generous timeouts only so that a broken
iterator fails the test instead of hanging it.
"""

import threading

import pytest

from components.data.loading.background_iterator import BackgroundIterator

HANG = 30  # seconds: only a bound against hanging; nothing passes or fails on it


class Source:
    """A generator of ``0..n-1`` that records what it produced and whether it was closed."""

    def __init__(self, n: int | None = None):
        self.n = n
        self.produced: list[int] = []
        self.closed = threading.Event()
        self._changed = threading.Condition()

    def __call__(self):
        try:
            i = 0
            while self.n is None or i < self.n:
                with self._changed:
                    self.produced.append(i)
                    self._changed.notify_all()
                yield i
                i += 1
        finally:
            self.closed.set()

    def wait_produced(self, count: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.produced) >= count, HANG), (
                f"the producer stopped at {len(self.produced)} items, never reaching {count}"
            )


def ended(it: BackgroundIterator) -> bool:
    it._thread.join(HANG)
    return not it._thread.is_alive()


def test_yields_everything_in_order_and_the_thread_ends_after_the_last_item():
    source = Source(100)
    it = BackgroundIterator(source, depth=2)
    assert list(it) == list(range(100))
    assert ended(it) and source.closed.is_set()
    with pytest.raises(StopIteration):
        next(it)


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_the_producer_runs_ahead_of_a_slow_consumer_by_exactly_its_depth(depth):
    """While the consumer holds item i, the producer fills the queue (depth items) and makes one more,
    which it holds until there is room: i + depth + 2 items made, never more."""
    source = Source(40)
    it = BackgroundIterator(source, depth=depth)
    for i in range(40 - depth - 2):
        assert next(it) == i
        source.wait_produced(i + depth + 2)  # ahead while this consumer does nothing
        assert len(source.produced) == i + depth + 2, source.produced  # and no further
    assert list(it) == list(range(40 - depth - 2, 40))


def test_close_ends_a_thread_that_waits_to_hand_over_an_item_and_closes_the_source():
    source = Source()  # endless: only close() can end this thread
    it = BackgroundIterator(source, depth=1)
    assert next(it) == 0
    source.wait_produced(3)  # item 1 queued, item 2 in hand: the thread is blocked handing it over
    it.close()
    assert ended(it)
    assert source.closed.is_set()  # the generator's finally ran: a reader releases its files
    assert len(source.produced) == 3  # nothing was made after close
    with pytest.raises(StopIteration):
        next(it)


def test_errors_reach_the_consumer_after_the_items_before_them_and_end_the_thread():
    def make():
        yield 1
        yield 2
        raise ValueError("bad shard")

    it = BackgroundIterator(make, depth=4)
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(ValueError, match="bad shard"):
        next(it)
    assert ended(it)
    with pytest.raises(StopIteration):
        next(it)  # an error ends the iteration; it is not raised again


def test_an_error_starting_the_source_reaches_the_consumer():
    def make():
        raise FileNotFoundError("shard 00003.tar")

    it = BackgroundIterator(make)
    with pytest.raises(FileNotFoundError, match="00003"):
        next(it)
    assert ended(it)


def test_an_error_after_close_does_not_block_the_thread():
    """A source that fails while the consumer has gone away: the thread must not wait forever to hand it over."""
    gate = threading.Event()

    def make():
        yield 0
        yield 1  # fills the queue (depth 1): handing over the error would wait for room
        gate.wait(HANG)
        raise RuntimeError("too late")

    it = BackgroundIterator(make, depth=1)
    assert next(it) == 0
    it.close()
    gate.set()
    assert ended(it)
