"""The lease that keeps one run at a time on an output folder in object storage, against the session's moto S3.

Leases here live for a fraction of a second to a few seconds, so expiry and
renewal are seen in real time; the SIGKILLed holder is a real process, killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from urllib.parse import urlparse

import pytest

from components.data.shards.output_lease import LEASE_FILE, OutputLease
from components.data.shards.shard_reader import ShardSetError, iter_samples
from components.data.shards.shard_stage import build_shard_set
from components.data.shards.shard_store import ShardStore
from tests.components.test_shard_stage import Numbers, SpellOut
from tests.conftest import REPO, create_bucket

BUCKET = "leases"
REFUSAL = (r"another run is writing s3://\S+ \(host other-host pid 4242\) until \d\d:\d\d:\d\d UTC; "
           r"wait, or write elsewhere")


@pytest.fixture(scope="module")
def bucket(s3_env):
    create_bucket(s3_env, BUCKET)


@pytest.fixture
def s3(s3_env, bucket, monkeypatch):
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    return s3_env


def foreign_lease(store: ShardStore, expires_in: float) -> None:
    """The lease another run (another machine) holds, written as that run would."""
    now = time.time()
    store.write_json(LEASE_FILE, {"owner": {"token": "f" * 32, "host": "other-host", "pid": 4242},
                                  "acquired_at": now, "renewed_at": now, "expires_at": now + expires_in,
                                  "ttl_s": expires_in})


def holder(store: ShardStore) -> dict | None:
    return store.read_json(LEASE_FILE) if store.exists(LEASE_FILE) else None


def lease(store: ShardStore, ttl_s: float = 1.0) -> OutputLease:
    return OutputLease(store, store.location, ttl_s=ttl_s, settle_s=0.05)


def test_a_second_run_is_refused_naming_the_holder_and_when_it_expires(s3):
    store = ShardStore(f"s3://{BUCKET}/refused")
    foreign_lease(store, expires_in=30)
    with pytest.raises(ShardSetError, match=REFUSAL):
        lease(store).acquire()
    assert holder(store)["owner"]["host"] == "other-host"  # the refused run leaves the holder's lease alone
    store.write_bytes(LEASE_FILE, b"not a lease")  # nobody's: refused, never taken over or deleted
    with pytest.raises(ShardSetError, match=r"holds a \.tvp\.lease that is no tvp lease: delete it if no run"):
        lease(store).acquire()
    store.delete(LEASE_FILE)

    with lease(store) as first:
        ours = rf"another run is writing s3://{BUCKET}/refused \(host \S+ pid {os.getpid()}\)"
        with pytest.raises(ShardSetError, match=ours):
            lease(store).acquire()
        assert holder(store)["owner"] == first.owner


def test_of_two_runs_taking_the_lease_at_once_exactly_one_holds_it(s3):
    store = ShardStore(f"s3://{BUCKET}/race")
    rivals = [OutputLease(store, store.location, ttl_s=5, settle_s=0.3) for _ in range(2)]
    outcomes: list[str] = []
    start = threading.Barrier(2)

    def take(rival: OutputLease) -> None:
        start.wait()
        try:
            rival.acquire()
            outcomes.append("held")
        except ShardSetError as err:
            outcomes.append(str(err))

    threads = [threading.Thread(target=take, args=(r,)) for r in rivals]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes)[0].startswith("another run is") and sorted(outcomes)[1] == "held"
    winner = next(r for r in rivals if holder(store)["owner"] == r.owner)
    winner.release()
    assert holder(store) is None


def test_a_lease_left_by_a_sigkilled_run_blocks_until_it_expires_then_is_taken_over(s3):
    store = ShardStore(f"s3://{BUCKET}/killed")
    code = ("import sys, time\n"
            "from components.data.shards.output_lease import OutputLease\n"
            "from components.data.shards.shard_store import ShardStore\n"
            f"OutputLease(ShardStore('s3://{BUCKET}/killed'), 'killed', ttl_s=1.0, settle_s=0.05).acquire()\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n")
    run = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout.readline().strip() == "held"
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    left = holder(store)
    assert left["owner"]["pid"] == run.pid
    with pytest.raises(ShardSetError, match=rf"\(host \S+ pid {run.pid}\) until"):
        lease(store).acquire()  # the killed run's last renewal still runs for up to ttl_s
    time.sleep(max(0.0, left["expires_at"] - time.time()) + 0.1)
    with lease(store) as resumed:
        assert holder(store)["owner"] == resumed.owner
    assert holder(store) is None


def test_renewal_keeps_the_lease_alive_past_its_ttl(s3):
    store = ShardStore(f"s3://{BUCKET}/renewed")
    with lease(store, ttl_s=0.9) as held:
        first_expiry = holder(store)["expires_at"]
        time.sleep(2.0)  # over two ttls: without renewal it would have expired twice over
        now = holder(store)
        assert now["owner"] == held.owner and now["expires_at"] > time.time() and now["expires_at"] > first_expiry
        with pytest.raises(ShardSetError, match="another run is writing"):
            lease(store).acquire()
        held.check()


def test_a_lost_lease_is_neither_renewed_nor_deleted_and_check_raises(s3):
    store = ShardStore(f"s3://{BUCKET}/lost")
    ours = lease(store, ttl_s=0.6)
    ours.acquire()
    foreign_lease(store, expires_in=30)  # a rival whose write landed after our read-back
    time.sleep(0.6)  # past a renewal (every ttl/3): it finds the rival and stops
    assert holder(store)["owner"]["host"] == "other-host"
    with pytest.raises(ShardSetError, match=r"another run \(host other-host pid 4242\) took over this run's lease"):
        ours.check()
    ours.release()
    assert holder(store)["owner"]["host"] == "other-host"  # the successor's lease stays
    store.delete(LEASE_FILE)


def test_check_sees_a_takeover_before_the_next_renewal(s3):
    store = ShardStore(f"s3://{BUCKET}/checked")
    with lease(store, ttl_s=30) as ours:  # renewals 10 s apart: only check()'s own look can see the rival
        ours.check()
        foreign_lease(store, expires_in=30)
        with pytest.raises(ShardSetError, match="took over this run's lease"):
            ours.check()
    assert holder(store)["owner"]["host"] == "other-host"
    store.delete(LEASE_FILE)


def test_a_lease_missing_at_one_look_but_back_at_the_next_is_still_held(s3):
    store = ShardStore(f"s3://{BUCKET}/blinked")
    with OutputLease(store, store.location, ttl_s=30, settle_s=0.5) as ours:
        ours_now = store.read_bytes(LEASE_FILE)
        store.delete(LEASE_FILE)  # as a store answering mid-replacement may show it, for a moment
        back = threading.Timer(0.1, store.write_bytes, (LEASE_FILE, ours_now))
        back.start()
        ours.check()  # looks again after settle_s and finds it
        back.join()
        store.delete(LEASE_FILE)  # now gone for good: both looks miss it
        with pytest.raises(ShardSetError, match="someone took over this run's lease"):
            ours.check()


def worker_visible(s3_env: dict[str, str], path: str) -> str:
    """``s3://path`` with the endpoint and keys in the URI: the Ray workers of the session's head were started
    before this test pointed AWS_ENDPOINT_URL at moto, so they find the server through the URI (pyarrow's
    own syntax) instead."""
    endpoint = urlparse(s3_env["AWS_ENDPOINT_URL"])
    return (f"s3://{s3_env['AWS_ACCESS_KEY_ID']}:{s3_env['AWS_SECRET_ACCESS_KEY']}@{path}"
            f"?endpoint_override={endpoint.netloc}&scheme={endpoint.scheme}&region={s3_env['AWS_DEFAULT_REGION']}")


def object_keys(store: ShardStore) -> dict[str, int]:
    from pyarrow.fs import FileSelector

    return {i.path: i.size for i in store.fs.get_file_info(FileSelector(store.root, recursive=True))}


def test_an_ingestion_into_a_leased_s3_folder_is_refused_untouched_then_goes_ahead_once_the_lease_expires(
        ray_address, s3):
    location = worker_visible(s3, f"{BUCKET}/set")
    store = ShardStore(location)
    store.makedirs()  # as the refused run itself does before it looks for the lease
    foreign_lease(store, expires_in=1.0)
    before = object_keys(store)
    with pytest.raises(ShardSetError, match=REFUSAL):
        build_shard_set(Numbers(23), SpellOut("n"), location, {}, 10)
    assert object_keys(store) == before  # nothing written, the holder's lease untouched

    time.sleep(max(0.0, holder(store)["expires_at"] - time.time()) + 0.1)
    manifest = build_shard_set(Numbers(23), SpellOut("n"), location, {}, 10)
    assert manifest["num_shards"] == 3 and manifest["num_samples"] == 18
    assert LEASE_FILE not in store.names()  # released at the end
    assert [s["txt"] for s in iter_samples(f"s3://{BUCKET}/set")][-1] == b"n 22"
