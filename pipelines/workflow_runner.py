"""``tvp run``: a pipeline's steps, one ``tvp`` process each, recorded in one MLflow run and resumable by name.

The orchestrator is thin on purpose: durability comes from the steps. Shard
sets finish shard by shard and resume from their done markers; training
resumes from its checkpoints in the same MLflow run when started with the
same ``--name``; registration is keyed by the training run. So a pipeline
started again with the same run name skips the steps its record says
finished (with the outputs they handed on) and reruns the first one that did
not, with the same arguments: a training step killed midway continues.

Each step runs as ``python -m pipelines.cli ...`` in a child process that
shares this one's terminal, with:
- ``TVP_STEP_OUTPUTS``: where the command writes what it hands on;
- ``MLFLOW_TRACKING_URI``: the pipeline's own tracking store, so the step's
  MLflow run lands beside the pipeline run that records its id;
- ``RAY_ADDRESS``: the cluster given with ``--address``, if any;
- ``--workdir RUN_WORKDIR`` (commands that take one and were given none) and,
  for training, ``--name RUN-STEP``: the name that makes a rerun resume.
A SIGTERM or Ctrl-C stops the running step the way the command itself stops
(training checkpoints first); a child outlives no SIGKILLed ``tvp run``: the
kernel sends it SIGTERM (Linux's parent-death signal).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from components.errors import TvpError
from pipelines.step_outputs import OUTPUTS_ENV, read_step_outputs
from pipelines.workflow_record import FAILED, FINISHED, SKIPPED, STOPPED, PipelineRecord
from pipelines.workflow_spec import PipelineSpec, references, render, should_run

Echo = Callable[[str], None]
WORKDIR_COMMANDS = {"demo", "train", "finetune", "evaluate", "promote", "inspect"}
RESUMABLE_COMMANDS = {"train", "finetune"}  # their --name is what makes a rerun continue the same run
STOP_CODES = {130: STOPPED, 143: STOPPED, -signal.SIGTERM: STOPPED, -signal.SIGINT: STOPPED}
PR_SET_PDEATHSIG = 1


class StepFailed(TvpError, RuntimeError):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class StepResult:
    name: str
    status: str
    duration_s: float
    outputs: dict[str, Any]
    skipped: bool = False


def step_arguments(spec_step, argv: list[str], run_name: str, workdir: Path) -> list[str]:
    """``argv`` with the pipeline's defaults for a work folder and a resumable run name added where absent."""
    command = spec_step.command
    extra = []
    if command in WORKDIR_COMMANDS and "--workdir" not in argv:
        extra += ["--workdir", str(workdir)]
    if command in RESUMABLE_COMMANDS and "--name" not in argv:
        extra += ["--name", f"{run_name}-{spec_step.name}"]
    return [*argv, *extra]


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when ``tvp run`` dies, even by SIGKILL."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the step may outlive a killed pipeline
        pass


def run_step(argv: list[str], env: dict[str, str]) -> int:
    """Run ``tvp ARGV`` in a child process; a SIGTERM or SIGINT to us is passed on, and we wait for it to stop."""
    child = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *argv], env=env, preexec_fn=_die_with_parent)

    def pass_on(signum, frame):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)  # training checkpoints and stops; others stop

    previous = {s: signal.signal(s, pass_on) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_pipeline(spec: PipelineSpec, file_hash: str, params: dict[str, str], run_name: str, workdir: Path,
                 tracking_uri: str, address: str | None = None, echo: Echo = print) -> list[StepResult]:
    """Run (or resume) the pipeline; raise ``StepFailed`` with the step's exit code when a step does not finish."""
    record = PipelineRecord.open(tracking_uri, workdir, spec.name, file_hash, params, run_name)
    how = "resuming" if record.resumed else "starting"
    echo(f"{how} pipeline {spec.name}, run {run_name} (MLflow run {record.run_id} in experiment tvp-pipelines)")
    if record.changed_file:
        echo("  note: the pipeline file changed since this run started; finished steps are not run again")
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    if address:
        env["RAY_ADDRESS"] = address
    run_fields = {"name": run_name, "workdir": str(workdir)}
    outputs: dict[str, dict[str, Any]] = {}
    results: list[StepResult] = []
    with tempfile.TemporaryDirectory(prefix="tvp-run-") as tmp:
        for number, step in enumerate(spec.steps, 1):
            where = f"[{number}/{len(spec.steps)}] {step.name}"
            if record.status(step.name) in (FINISHED, SKIPPED):
                outputs[step.name] = record.outputs(step.name)
                results.append(StepResult(step.name, record.status(step.name), 0.0, outputs[step.name], skipped=True))
                echo(f"{where}: {record.status(step.name).lower()} in an earlier attempt, not run again")
                continue
            try:
                skipped_inputs = sorted(s for s in references(step) if record.status(s) == SKIPPED)
                run_it = not skipped_inputs and should_run(step, params, outputs, run_fields)
                argv = step_arguments(step, render(step, params, outputs, run_fields), run_name, workdir) if run_it \
                    else []
            except TvpError:
                record.close(FAILED)
                raise
            if not run_it:
                why = f"step {skipped_inputs[0]} was skipped" if skipped_inputs else f"if: {step.run_if} is false"
                record.ended(step.name, SKIPPED, 0, 0.0, {})
                outputs[step.name] = {}
                results.append(StepResult(step.name, SKIPPED, 0.0, {}))
                echo(f"{where}: skipped ({why})")
                continue
            echo(f"{where}: tvp {' '.join(argv)}")
            record.started(step.name, argv)
            out_file = Path(tmp) / f"{step.name}.json"
            started = time.monotonic()
            code = run_step(argv, {**env, OUTPUTS_ENV: str(out_file)})
            duration = time.monotonic() - started
            status = FINISHED if code == 0 else STOP_CODES.get(code, FAILED)
            outputs[step.name] = read_step_outputs(out_file) if status == FINISHED else {}
            record.ended(step.name, status, code, duration, outputs[step.name])
            results.append(StepResult(step.name, status, duration, outputs[step.name]))
            if status != FINISHED:
                record.close(status)
                verb = "was stopped" if status == STOPPED else f"failed (exit {code})"
                raise StepFailed(f"step {step.name} {verb}; run the same command with --name {run_name} "
                                 "to resume from it", code if code > 0 else 1)
            echo(f"{where}: finished in {duration:.0f} s")
    record.close(FINISHED)
    return results
