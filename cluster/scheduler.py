"""``tvp schedule serve``: the long-running process that turns cron ticks into Ray jobs.

APScheduler decides when a tick is due (cron triggers, coalescing missed
ticks into one, a misfire grace time) with its in-memory job store, loaded
from the schedule store and synchronised with it every few seconds, so
``tvp schedule add/pause/resume/remove`` take effect in a running scheduler.

A tick is idempotent end to end:
1. it is claimed in the store as SUBMITTING under a submission id made of the
   schedule's name and the fire time it was due (``tvp-NAME-20261129T020000Z``);
2. with the ``skip`` overlap policy, a tick whose previous job still runs is
   recorded SKIPPED instead;
3. the job is submitted under that id (a cluster refuses a second job with an
   id it has: the submission is taken once), then recorded SUBMITTED.
A scheduler killed between 1 and 3 finds the SUBMITTING tick when it starts
again and submits it once more, under the same id: the tick is neither lost
nor doubled. Ticks missed while no scheduler ran are coalesced into one, run
at start-up, if the latest was due within the misfire grace time.
Each tick's job that runs ``tvp run``, ``tvp train`` or ``tvp finetune`` is
given ``--name`` = its submission id, so its MLflow run is found again and a
resubmitted tick resumes rather than restarts.
"""

from __future__ import annotations

import os
import signal
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from apscheduler.schedulers.background import BackgroundScheduler

from cluster import job_submission as jobs
from cluster.cron import cron_trigger, last_fire_time
from cluster.schedule_store import ENDED, Schedule, ScheduleStore, Tick, utc_iso

Echo = Callable[[str], None]
MISFIRE_GRACE = timedelta(hours=1)
NAMED_COMMANDS = ("run", "train", "finetune")  # commands whose --name makes a rerun continue the same run
FAULT_ENV = "TVP_SCHEDULER_FAULT"  # "exit-after-submit": die between submitting a job and recording it (tests)


def submission_id(schedule: str, fire_time: datetime) -> str:
    return f"tvp-{schedule}-{fire_time.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}"


def tick_command(schedule: Schedule, name: str) -> list[str]:
    command = list(schedule.command)  # stored as job_command() left it: no leading "tvp"
    if command[0] in NAMED_COMMANDS and "--name" not in command:
        command += ["--name", name]
    return command


class Scheduler:
    def __init__(self, store: ScheduleStore, echo: Echo = print, sync_every_s: float = 5.0):
        self.store, self.echo, self.sync_every_s = store, echo, sync_every_s
        self.aps = BackgroundScheduler(timezone=timezone.utc, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": int(MISFIRE_GRACE.total_seconds())})
        self._loaded: dict[str, tuple] = {}
        self._lock = threading.Lock()  # one tick at a time: overlap checks and claims see each other
        self._stop = threading.Event()

    # -- the loop ----------------------------------------------------------------------------------------------
    def serve(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self._stop.set())
        self.recover()
        self.sync()
        self.aps.start()
        self.echo(f"scheduler serving {len(self._loaded)} schedules from {self.store.url}; stop with Ctrl-C")
        try:
            while not self._stop.wait(self.sync_every_s):
                self.sync()
                self.refresh()
        finally:
            self.aps.shutdown(wait=True)
            self.echo("scheduler stopped")

    def sync(self) -> None:
        """Load added and changed schedules into APScheduler; drop removed and paused ones."""
        wanted = {s.name: s for s in self.store.schedules() if not s.paused}
        for name in set(self._loaded) - set(wanted):
            self.aps.remove_job(name)
            del self._loaded[name]
            self.echo(f"schedule {name}: removed or paused")
        for name, schedule in wanted.items():
            key = (schedule.cron, schedule.timezone, tuple(schedule.command), schedule.address, schedule.overlap)
            if self._loaded.get(name) == key:
                continue
            trigger = cron_trigger(schedule.cron, schedule.timezone)
            self.aps.add_job(self.tick, trigger, args=[name], id=name, replace_existing=True)
            self._loaded[name] = key
            self.echo(f"schedule {name}: {schedule.cron} ({schedule.timezone}) → tvp {' '.join(schedule.command)}")

    def recover(self) -> None:
        """Ticks left SUBMITTING by a scheduler that died are submitted again under their ids; the latest tick
        missed while none ran (within the grace time) runs now."""
        for tick in self.store.ticks(states=("SUBMITTING",)):
            self.echo(f"schedule {tick.schedule}: finishing the tick due {tick.fire_time} that a stopped "
                      "scheduler left unrecorded")
            self.fire(self.store.get(tick.schedule), datetime.fromisoformat(tick.fire_time.replace("Z", "+00:00")))
        now = datetime.now(timezone.utc)
        for schedule in self.store.schedules():
            if schedule.paused:
                continue
            due = last_fire_time(cron_trigger(schedule.cron, schedule.timezone), now, MISFIRE_GRACE)
            latest = max((t.fire_time for t in self.store.ticks(schedule.name)), default=None)
            if due is not None and utc_iso(due) >= schedule.created_at and (latest is None or latest < utc_iso(due)):
                self.echo(f"schedule {schedule.name}: running the tick missed at {utc_iso(due)}")
                self.fire(schedule, due)

    def tick(self, name: str) -> None:
        """APScheduler's job: the tick that is due now (its fire time found again from the trigger)."""
        schedule = self.store.get(name)
        now = datetime.now(timezone.utc)
        due = last_fire_time(cron_trigger(schedule.cron, schedule.timezone), now, MISFIRE_GRACE) or now
        self.fire(schedule, due)

    # -- one tick ----------------------------------------------------------------------------------------------
    def fire(self, schedule: Schedule, due: datetime) -> None:
        with self._lock:
            job_id = submission_id(schedule.name, due)
            tick = self.store.claim_tick(Tick(schedule.name, utc_iso(due), job_id, "SUBMITTING"))
            if tick.state != "SUBMITTING":
                return  # this tick was handled already
            if schedule.overlap == "skip":
                running = self._running_job(schedule.name, exclude=tick.fire_time)
                if running:
                    self.store.update_tick(schedule.name, tick.fire_time, state="SKIPPED",
                                           detail=f"job {running} of an earlier tick still runs")
                    self.echo(f"schedule {schedule.name}: tick {tick.fire_time} skipped, job {running} still runs")
                    return
            try:
                client = jobs.job_client(schedule.address)
                job = jobs.prepare_job(tick_command(schedule, job_id), jobs.cluster_on_this_machine(schedule.address),
                                       cwd=Path(schedule.cwd))
                jobs.submit(client, job, job_id, {"tvp_schedule": schedule.name, "tvp_tick": tick.fire_time})
            except jobs.JobError as exc:
                self.store.update_tick(schedule.name, tick.fire_time, state="REFUSED", detail=str(exc))
                self.echo(f"schedule {schedule.name}: tick {tick.fire_time} refused: {exc}")
                return
            if os.environ.get(FAULT_ENV) == "exit-after-submit":
                os._exit(137)  # as a SIGKILL would leave it: submitted, not recorded
            self.store.update_tick(schedule.name, tick.fire_time, state="SUBMITTED", detail=f"job {job_id}")
            self.echo(f"schedule {schedule.name}: tick {tick.fire_time} submitted job {job_id}")

    def _running_job(self, schedule: str, exclude: str) -> str | None:
        self.refresh(schedule)
        for tick in self.store.ticks(schedule, states=("SUBMITTED",)):
            if tick.fire_time != exclude:
                return tick.submission_id
        return None

    def refresh(self, only: str | None = None) -> None:
        """Record the outcome of ticks whose jobs have ended, and the MLflow run each made."""
        for tick in self.store.ticks(only, states=("SUBMITTED",)):
            try:
                schedule = self.store.get(tick.schedule)
                status = str(jobs.job_client(schedule.address).get_job_status(tick.submission_id).value)
            except Exception as exc:  # a cluster that is down now: the outcome is looked up again later
                self.echo(f"schedule {tick.schedule}: cannot look up job {tick.submission_id}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
                continue
            if status in ENDED:
                run_id = mlflow_run_of(schedule, tick.submission_id)
                self.store.update_tick(tick.schedule, tick.fire_time, state=status, mlflow_run_id=run_id or "")
                self.echo(f"schedule {tick.schedule}: job {tick.submission_id} {status.lower()}")


def mlflow_run_of(schedule: Schedule, run_name: str) -> str | None:
    """The id of the MLflow run the tick's job opened under its submission id, where the store is reachable."""
    from mlflow.tracking import MlflowClient

    from components.tracking.run_tracker import find_run
    from components.tracking.tracking_store import resolve_tracking_uri

    command = schedule.command
    workdir = command[command.index("--workdir") + 1] if "--workdir" in command[:-1] else "tvp-demo"
    uri = resolve_tracking_uri(Path(schedule.cwd) / workdir)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None
    try:
        found = find_run(MlflowClient(uri), run_name)
    except Exception:  # the tracking server is down: the history shows no run until it answers
        return None
    return found.info.run_id if found else None
