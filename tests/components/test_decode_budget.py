"""The decode budget: holds together never exceed it, an oversized one runs alone, nothing waits forever."""

from __future__ import annotations

import random
import threading
import time

import pytest

from components.data.ingest.decode_budget import DecodeBudget

BUDGET = 100


class Ledger:
    """What the holders themselves say they hold, summed under a lock: the budget's claims checked from outside."""

    def __init__(self):
        self.lock = threading.Lock()
        self.held = 0
        self.most = 0
        self.holders: set[str] = set()
        self.overlaps: list[set[str]] = []

    def enter(self, name: str, nbytes: int) -> None:
        with self.lock:
            self.held += nbytes
            self.most = max(self.most, self.held)
            self.holders.add(name)
            if len(self.holders) > 1:
                self.overlaps.append(set(self.holders))

    def leave(self, name: str, nbytes: int) -> None:
        with self.lock:
            self.held -= nbytes
            self.holders.discard(name)


def run_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not any(thread.is_alive() for thread in threads), "a holder never got its share"


def test_sixteen_threads_never_hold_more_than_the_budget():
    budget, ledger = DecodeBudget(BUDGET), Ledger()

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(20):
            nbytes = rng.randint(1, BUDGET // 2)
            with budget.hold(nbytes):
                ledger.enter(str(seed), nbytes)
                time.sleep(rng.random() * 0.002)
                ledger.leave(str(seed), nbytes)

    run_all([threading.Thread(target=work, args=(seed,)) for seed in range(16)])
    assert ledger.most <= BUDGET and budget.peak <= BUDGET
    # Holds did overlap (each asks at most half): a budget that let only one hold at a time would pass the
    # bound above while throttling the threads for nothing.
    assert ledger.overlaps and ledger.most > BUDGET // 2


def test_an_oversized_request_runs_alone_and_finishes():
    budget, ledger = DecodeBudget(BUDGET), Ledger()
    small_started = threading.Event()

    def small(name: str) -> None:
        for _ in range(10):
            with budget.hold(10):
                small_started.set()
                ledger.enter(name, 10)
                time.sleep(0.001)
                ledger.leave(name, 10)

    def oversized() -> None:
        small_started.wait(5)  # ask while the small ones are holding, so it must wait for them to leave
        with budget.hold(10 * BUDGET):
            ledger.enter("oversized", BUDGET)
            time.sleep(0.01)
            ledger.leave("oversized", BUDGET)

    run_all([threading.Thread(target=small, args=(f"small{i}",)) for i in range(4)] + [threading.Thread(target=oversized)])
    assert not [overlap for overlap in ledger.overlaps if "oversized" in overlap]
    assert budget.peak == BUDGET  # it took the whole budget, not more: it counts as all of it


@pytest.mark.parametrize("max_bytes", [0, -1])
def test_a_budget_must_be_positive(max_bytes):
    with pytest.raises(ValueError, match="positive"):
        DecodeBudget(max_bytes)
