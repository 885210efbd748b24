import threading
import time

import pytest

from components.data.loading.background_iterator import BackgroundIterator


def test_yields_everything_in_order_and_reads_ahead_only_a_little():
    produced = []

    def make():
        for i in range(100):
            produced.append(i)
            yield i

    it = BackgroundIterator(make, depth=2)
    time.sleep(0.2)
    assert len(produced) <= 4  # bounded read-ahead: depth queued, one in hand, one being made
    assert list(it) == list(range(100))


def test_errors_reach_the_consumer_after_the_items_before_them():
    def make():
        yield 1
        raise ValueError("bad shard")

    it = BackgroundIterator(make)
    assert next(it) == 1
    with pytest.raises(ValueError, match="bad shard"):
        next(it)


def test_close_stops_the_thread_while_it_waits_to_hand_over_an_item():
    it = BackgroundIterator(lambda: iter(range(1000)), depth=1)
    assert next(it) == 0
    it.close()
    it._thread.join(timeout=2)
    assert not it._thread.is_alive()
    assert threading.active_count() >= 1
