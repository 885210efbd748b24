"""A tracking server that dies and never comes back: the tracker reports exactly what never arrived.

The pipeline prints this count as "warning: N metric values could not be
delivered"; the worker loop logs it as a tracking gap. Both read it from
``RunTracker.flush()`` / ``finish()``, tested here against a real
``mlflow server`` that is killed mid-run. After the tracker has finished,
the dead server's SQLite store is read directly: the values counted as
undelivered are exactly the ones missing there.
"""

import logging
import sqlite3
from contextlib import closing

from components.tracking.run_tracker import METRIC_BATCH_LIMIT, RunTracker
from tests.components.test_tracking_outage import free_port, kill, start_server


def test_a_server_that_never_returns_leaves_an_exact_undelivered_count(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    # A dead server refuses connections at once; the timeout only spares a slow first answer on a loaded machine.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    try:
        tracker = RunTracker.create(uri, "outage", "never-back")
        tracker.log_metrics({"loss": 1.0, "lr": 0.1}, step=1)  # delivered
        assert tracker.pending == 0
    finally:
        kill(server)

    caplog.set_level(logging.WARNING, logger="tvp.tracking")
    tracker.log_metrics({"loss": 0.9, "lr": 0.1}, step=2)
    tracker.log_metrics({"loss": 0.8, "lr": 0.1, "samples_per_s": 50.0}, step=3)
    assert tracker.flush() == {"undelivered": 5, "delivered_late": 0}  # a flush that fails loses nothing
    many = {f"probe_{i}": float(i) for i in range(METRIC_BATCH_LIMIT + 7)}  # more than one batch's worth
    tracker.log_metrics(many, step=4)
    undelivered = 5 + len(many)
    assert tracker.pending == undelivered
    assert tracker.finish() == {"undelivered": undelivered, "delivered_late": 0}  # does not raise either
    buffering = [r for r in caplog.records if "buffering metrics" in r.getMessage()]
    assert len(buffering) == 1  # said once per outage, not per call
    assert any("could not mark run" in r.getMessage() for r in caplog.records)

    # The dead server's own store, read with sqlite3 (MLflow's client on it would first spend seconds
    # checking the schema): its metrics and runs tables.
    with closing(sqlite3.connect(tmp_path / "server.db")) as store:
        stored = store.execute("SELECT key, value, step FROM metrics WHERE run_uuid = ? ORDER BY key",
                               (tracker.run_id,)).fetchall()
        (status,), = store.execute("SELECT status FROM runs WHERE run_uuid = ?", (tracker.run_id,)).fetchall()
    assert stored == [("loss", 1.0, 1), ("lr", 0.1, 1)]  # step 1 only: every later value is undelivered
    assert status == "RUNNING"  # finish() could not mark it either, and said so
