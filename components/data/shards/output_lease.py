"""One run at a time per output folder in object storage: a lease object that expires.

A local folder is locked with ``flock`` (``shard_stage.output_lock``): the OS
drops the lock when its process dies. Object storage has no such lock, so a
run holds ``.tvp.lease`` in the folder instead: JSON naming its owner (a
random token, the host and the pid) and when the lease expires (wall-clock
epoch seconds). A daemon thread renews it every ``ttl_s / 3``; a run that is
SIGKILLed stops renewing, and ``ttl_s`` later its resume simply takes it over.

S3 and GCS offer no compare-and-swap through pyarrow, so taking the lease is
write, wait ``settle_s``, read back: of two runs that took it at once, the one
whose write landed last finds its own token and goes on, the other finds a
stranger's and is refused. A run whose write stalled longer than ``settle_s``
can still win late; the loser then finds the stranger at its next renewal,
and ``check()`` (called before the set's manifest is written) fails it, so
a set is never declared finished by a run that did not hold its folder.
Expiry compares wall clocks of different machines: keep them within a small
part of ``ttl_s`` of each other (NTP does).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from typing import Any

from components.data.shards.atomic_files import json_bytes
from components.data.shards.shard_reader import ShardSetError
from components.data.shards.shard_store import ShardStore

log = logging.getLogger("tvp.shards")

LEASE_FILE = ".tvp.lease"
TTL_S = 60.0
SETTLE_S = 0.5


def _utc_clock(epoch_s: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(epoch_s))


def _owner_words(lease: dict[str, Any]) -> str:
    owner = lease.get("owner", {})
    return f"host {owner.get('host', '?')} pid {owner.get('pid', '?')}"


class OutputLease:
    """The lease on one output folder in object storage; a context manager that takes and releases it."""

    def __init__(self, store: ShardStore, location: str, ttl_s: float = TTL_S, settle_s: float = SETTLE_S):
        self.store, self.location = store, location
        self.ttl_s, self.settle_s = ttl_s, settle_s
        self.owner = {"token": secrets.token_hex(16), "host": socket.gethostname(), "pid": os.getpid()}
        self.acquired_at = 0.0
        self._lost: dict[str, Any] | None = None  # what a renewal found in our place (a stranger's lease, or {})
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> "OutputLease":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lease, or raise ``ShardSetError`` naming the run that holds it and until when."""
        held = self._read()
        if held is not None and not self._ours(held) and held.get("expires_at", 0) > time.time():
            raise self._refusal(held)
        if held is not None and not self._ours(held):
            log.info("%s: taking over the expired lease of %s", self.location, _owner_words(held))
        self.acquired_at = time.time()
        self._write()
        time.sleep(self.settle_s)  # let a rival's write that raced ours land before we look
        held = self._read()
        if held is None or not self._ours(held):
            raise self._refusal(held)
        self._renewer = threading.Thread(target=self._renew_until_stopped, name=f"lease {self.location}", daemon=True)
        self._renewer.start()

    def check(self) -> None:
        """Raise ``ShardSetError`` when the lease is no longer ours (a renewal or this look finds it gone or taken)."""
        if self._lost is None:
            held = self._look_twice()
            if held is None or not self._ours(held):
                self._lost = held or {}
        if self._lost is not None:
            who = f"another run ({_owner_words(self._lost)})" if self._lost else "someone"
            raise ShardSetError(f"{self.location}: {who} took over this run's lease on the folder while it was "
                                "writing, so the set is not finalized: rerun once no other run writes there")

    def release(self) -> None:
        """Stop renewing; delete the lease object only if it still holds our token (never a successor's)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=max(self.ttl_s, 5.0))
        try:
            held = self._read()
            if held is not None and self._ours(held):
                self.store.delete(LEASE_FILE)
        except ShardSetError:  # overwritten with something that is no lease: not ours to delete
            pass
        except OSError as err:  # it expires by itself; never hide the error the run may be ending with
            log.warning("%s: could not release the lease (%s); it expires in %.0f s", self.location, err, self.ttl_s)

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                held = self._look_twice()
                if held is None or not self._ours(held):
                    self._lost = held or {}  # renew no more: writing now would overwrite the new holder's lease
                    log.warning("%s: this run's lease was taken over (%s)", self.location,
                                _owner_words(held) if held else "the lease object is gone")
                    return
                self._write()
            except OSError as err:  # a passing storage error: the lease lasts ttl_s, so the next try may still do
                log.warning("%s: could not renew the lease (%s); retrying", self.location, err)

    def _look_twice(self) -> dict[str, Any] | None:
        """The lease now; a missing or unreadable one is looked at again after ``settle_s`` before it counts.

        A store may answer one read from an object that is being replaced by
        our own renewal (moto did, under load); one such look must not end a
        run that still holds its folder. Something that is no lease counts as
        nobody's (None), as does a lease still gone at the second look.
        """
        for look in range(2):
            if look:
                time.sleep(self.settle_s)
            try:
                held = self._read()
            except ShardSetError:
                held = None
            if held is not None:
                return held
        return None

    def _ours(self, held: dict[str, Any]) -> bool:
        return held.get("owner", {}).get("token") == self.owner["token"]

    def _read(self) -> dict[str, Any] | None:
        """The lease object now, None when there is none. One that is not a lease is nobody's: refused."""
        if not self.store.exists(LEASE_FILE):
            return None
        try:
            held = json.loads(self.store.read_bytes(LEASE_FILE))
        except FileNotFoundError:  # released between the look and the read
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            held = None
        if (not isinstance(held, dict) or not isinstance(held.get("owner"), dict)
                or not isinstance(held.get("expires_at"), (int, float))):
            raise ShardSetError(f"{self.location} holds a {LEASE_FILE} that is no tvp lease: delete it "
                                "if no run is writing there, or write elsewhere")
        return held

    def _write(self) -> None:
        now = time.time()
        self.store.write_bytes(LEASE_FILE, json_bytes({
            "owner": self.owner, "acquired_at": self.acquired_at, "renewed_at": now,
            "expires_at": now + self.ttl_s, "ttl_s": self.ttl_s,
        }))

    def _refusal(self, held: dict[str, Any] | None) -> ShardSetError:
        if not held:
            return ShardSetError(f"another run is taking the lease on {self.location} at this moment; "
                                 "wait, or write elsewhere")
        return ShardSetError(f"another run is writing {self.location} ({_owner_words(held)}) until "
                             f"{_utc_clock(float(held.get('expires_at', 0)))}; wait, or write elsewhere")
