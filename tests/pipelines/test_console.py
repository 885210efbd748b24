"""The console routing without Ray: what people see, what the log keeps, and what is left as it was."""

import itertools
import logging
import sys

import pytest

from cluster import worker_output
from cluster.worker_output import WorkerOutput
from components.console_lines import attach_console_lines, mark, parse
from pipelines import console as console_module
from pipelines.console import PROGRESS_EVERY_S, PROGRESS_MAX_EVERY_S, Console, progress_gap, restatement


@pytest.fixture()
def tmp_logs(tmp_path, monkeypatch):
    """The temporary folder, where logs of commands without a work directory go."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(console_module.tempfile, "gettempdir", lambda: str(folder))
    return folder


def worker_lines(*lines, source="RayTrainWorker pid=5744", is_err=True):
    worker_output.forward({"pid": source.split("pid=")[1], "actor_name": source.split(" pid=")[0], "ip": "127.0.0.1",
                           "localhost": "127.0.0.1", "is_err": is_err, "lines": list(lines)})


def test_library_output_goes_to_the_log_and_tvp_output_to_the_terminal(tmp_path, tmp_logs, capsys):
    workdir = tmp_path / "work"
    workdir.mkdir()
    with Console("demo", workdir) as console:
        print("[1/3] building the table")
        logging.getLogger("somelib.store").info("Creating initial database tables...")
        sys.stderr.write("2026-11-29 11:33:13,406\tWARNING __init__.py:28 -- Progress bars disabled.\n")
        worker_lines("Reporting training result 1: TrainingReport(checkpoint=None)")
    out, err = capsys.readouterr()
    assert out == "[1/3] building the table\n" and err == ""
    assert console.log_path.parent == workdir / "logs" and console.log_path.name.startswith("tvp-demo-")
    log = console.log_path.read_text()
    assert "INFO somelib.store: Creating initial database tables..." in log
    assert "Progress bars disabled." in log
    assert "(RayTrainWorker pid=5744) Reporting training result 1" in log
    assert not list(tmp_logs.iterdir())


def test_a_command_that_never_creates_its_workdir_leaves_nothing_there(tmp_path, tmp_logs, capsys):
    workdir = tmp_path / "never"
    with Console("demo", workdir) as console:
        sys.stderr.write("a library said something\n")
    assert not workdir.exists()
    assert console.log_path.parent == tmp_logs / "tvp-logs" and "a library said" in console.log_path.read_text()
    with Console("demo", workdir) as quiet:
        print("nothing for the log")
    assert quiet.log_path is None and not workdir.exists()


def test_lines_wait_until_the_workdir_exists(tmp_path, tmp_logs, capsys):
    workdir = tmp_path / "work"
    with Console("train", workdir) as console:
        sys.stderr.write("before\n")
        workdir.mkdir()  # as the command creates it
        sys.stderr.write("after\n")
    log = console.log_path.read_text()
    assert console.log_path.parent == workdir / "logs" and log.index("before") < log.index("after")


def test_workers_marked_lines_are_shown_and_progress_is_thinned(tmp_path, tmp_logs, capsys):
    with Console("demo", tmp_path) as console:
        worker_lines(mark(logging.INFO, "epoch 1/3  step 10  loss 4.2"), is_err=False)
        worker_lines(mark(logging.INFO, "epoch 2/3  step 20  loss 4.1"), "Checkpoint successfully created at: x",
                     is_err=False)
        worker_lines(mark(logging.INFO, "epoch 3/3  step 30  loss 4.0"), is_err=False)
        worker_lines(mark(logging.WARNING, "a node of this run is being preempted: checkpointing at step 31"),
                     source="RayTrainWorker pid=5774")
        print("evaluating")
    out, err = capsys.readouterr()
    # Within the first gap only the first line shows at once; the latest is shown before tvp prints again.
    assert out.splitlines() == ["  epoch 1/3  step 10  loss 4.2", "  epoch 3/3  step 30  loss 4.0", "evaluating"]
    assert err == "tvp: warning: a node of this run is being preempted: checkpointing at step 31\n"
    log = console.log_path.read_text()
    assert "epoch 2/3" in log and "Checkpoint successfully created" in log
    assert "(RayTrainWorker pid=5774) [tvp WARNING] a node of this run" in log


def test_progress_lines_thin_out_over_a_long_run():
    gaps = [progress_gap(shown) for shown in range(1, 40)]
    assert gaps[0] == PROGRESS_EVERY_S and gaps == sorted(gaps) and gaps[-1] == PROGRESS_MAX_EVERY_S
    assert len([t for t in itertools.accumulate(gaps) if t <= 200]) <= 6  # a slow demo's training: a few lines


def test_messages_that_matter_are_restated_once(tmp_path, tmp_logs, capsys):
    starved = ("Cluster resources are not enough to run any task from ReadWebDataset->MapBatches(decode). "
               "The job may hang forever unless the cluster scales up.")
    with Console("train", tmp_path):
        worker_lines("[FailurePolicy] RETRY", "  Source: worker group", source="TrainController pid=5575")
        worker_lines("[FailurePolicy] RETRY", source="TrainController pid=5575")
        logging.getLogger("ray.data.somewhere").warning(starved)
        logging.getLogger("tvp.tracking").warning("tracking server unreachable, buffering metrics: refused")
        logging.getLogger("tvp.tracking").info("a detail for the log only")
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "tvp: warning: a training worker failed: Ray Train restarts the worker group from the latest checkpoint",
        "tvp: warning: Ray Data has no free CPU to run ReadWebDataset->MapBatches(decode) and waits for one: "
        "give the cluster more CPUs or training fewer",
        "tvp: warning: tracking server unreachable, buffering metrics: refused",
    ]


def test_restatements_name_what_the_library_line_says():
    line = ("(autoscaler +12s) Warning: The following resource request cannot be scheduled right now: "
            "{'CPU': 1.0}. This is likely due to all cluster resources being claimed by actors.")
    assert restatement(line) == ("Ray cannot place {'CPU': 1.0} yet: every resource of the cluster is taken, "
                                 "and the job waits for one")
    assert restatement("Checkpoint successfully created at: Checkpoint(filesystem=local)") is None


def test_verbose_shows_library_output_live(tmp_path, tmp_logs, capsys):
    with Console("demo", tmp_path, verbose=True) as console:
        sys.stderr.write("a library line\n")
        worker_lines("Reporting training result 1")
    out, err = capsys.readouterr()
    assert err == "a library line\n(RayTrainWorker pid=5744) Reporting training result 1\n"
    assert "a library line" in console.log_path.read_text()


def test_the_routing_is_undone_on_exit(tmp_path, tmp_logs):
    before = (sys.stdout, sys.stderr, list(logging.getLogger().handlers), logging.getLogger().level)
    sink = worker_output.send_worker_output_to(None)
    worker_output.send_worker_output_to(sink)
    with pytest.raises(RuntimeError):
        with Console("demo", tmp_path) as console:
            raise RuntimeError("a bug")
    assert (sys.stdout, sys.stderr, list(logging.getLogger().handlers), logging.getLogger().level) == before
    assert worker_output.send_worker_output_to(sink) is sink
    assert "RuntimeError: a bug" in console.log_path.read_text()  # the traceback is kept with the library output


def test_worker_output_names_its_source_as_ray_does(capsys):
    worker_output.forward({"pid": 42, "actor_name": "TrainController", "ip": "10.0.0.2", "localhost": "127.0.0.1",
                           "is_err": True, "lines": ["hello", '{"__ray_tqdm_magic_token__": 1}']})
    worker_output.forward({"pid": "raylet", "ip": "127.0.0.1", "localhost": "127.0.0.1", "is_err": False,
                           "lines": ["spilled"]})
    out, err = capsys.readouterr()
    assert err == "(TrainController pid=42, ip=10.0.0.2) hello\n" and out == "(raylet) spilled\n"


def test_a_workers_tvp_records_become_marked_lines(capsys):
    logger = logging.getLogger("tvp.console_lines_test")
    saved = (logging.getLogger("tvp").handlers[:], logging.getLogger("tvp").propagate, logging.getLogger("tvp").level)
    try:
        attach_console_lines(rank=1)
        logger.info("rank 1 of 2")  # only rank 0 shows its progress
        logger.warning("stop requested:\ncheckpointed at step 7")
        attach_console_lines(rank=0)
        logger.info("epoch 1/2")
    finally:
        tvp = logging.getLogger("tvp")
        tvp.handlers[:], tvp.propagate, tvp.level = saved
    out = capsys.readouterr().out
    assert out.splitlines() == ["[tvp WARNING] stop requested: checkpointed at step 7", "[tvp] epoch 1/2"]
    assert parse("[tvp WARNING] stop requested") == (logging.WARNING, "stop requested")
    assert parse("[tvp] epoch 1/2") == (logging.INFO, "epoch 1/2") and parse("epoch 1/2") is None
