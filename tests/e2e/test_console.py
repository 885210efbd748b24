"""``tvp demo`` as a person reads it: tvp's own progress and summary, library output in the log it names."""

import re
from pathlib import Path

MAX_LINES = 40

# What Ray's and MLflow's loggers, Ray's worker output and Ray Train's reports look like on a console.
LIBRARY_LINE = re.compile(
    r"^\x1b?\[?\d*m?\((\w+ )?pid=\d+"  # a worker's line, as Ray prefixes it: (RayTrainWorker pid=5744) ...
    r"|^\(raylet|^\(autoscaler"
    r"|^\d{4}[-/]\d\d[-/]\d\d \d\d:\d\d:\d\d"  # a logging timestamp: 2026-11-29 11:33:13,406 / 2026/11/29 11:33:21
    r"|\b(INFO|WARNING|ERROR) (mlflow|alembic|ray)\b|\bINFO \w+\.py:\d+ --|\bWARNING \w+\.py:\d+ --"
    r"|Reporting training result|Checkpoint successfully created|core_worker\.cc|PreemptionWatcher"
    r"|DeprecationWarning|FutureWarning|UserWarning"
)


def test_the_demo_prints_its_own_progress_and_names_the_log(demo_run):
    lines = (demo_run["stdout"] + demo_run["stderr"]).splitlines()
    assert len(lines) <= MAX_LINES, "\n".join(lines)
    assert not [line for line in lines if LIBRARY_LINE.search(line)], "\n".join(lines)
    assert "[3/3] training" in demo_run["stdout"] and "zero-shot top-1" in demo_run["stdout"]
    assert re.search(r"^  epoch \d+/\d+  step \d+  loss", demo_run["stdout"], re.M)  # the workers' progress
    named = re.search(r"^  library output:\s+(\S+)$", demo_run["stdout"], re.M)
    assert named, demo_run["stdout"]
    log = Path(named.group(1))
    assert log.parent == demo_run["workdir"] / "logs"
    # What the console was spared is kept: Ray Train's per-report lines and the workers' progress, every epoch.
    text = log.read_text()
    assert "Reporting training result" in text and "Checkpoint successfully created" in text
    epochs = re.findall(r"\[tvp\] epoch (\d+)/(\d+)", text)
    assert epochs and len({e for e, _ in epochs}) == int(epochs[0][1])
