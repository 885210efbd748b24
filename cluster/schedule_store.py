"""Where recurring jobs and their ticks are kept: two tables of plain JSON rows in any SQLAlchemy database.

A SQLite file in the work folder by default (``schedules.db``), PostgreSQL or
any other SQLAlchemy URL for a team. Rows hold text and JSON only, never
pickles: whoever can write this database can change what runs, but cannot
make the scheduler execute code of their own by it (APScheduler's own
SQLAlchemy job store pickles job state, so it is not used; the scheduler
keeps its jobs in memory and loads them from here).

``tvp_schedules``: one row per schedule (name, cron expression, time zone,
the tvp command as a JSON list, the Jobs API address, the folder it was added
in, the overlap policy, whether it is paused).
``tvp_schedule_ticks``: one row per tick (schedule, the fire time it was due,
the job's submission id, state, outcome, MLflow run), unique per (schedule,
fire time): a tick is recorded as SUBMITTING before its job is submitted, so
a scheduler killed in between finds it on restart and submits it again under
the same submission id, which the cluster takes once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

import sqlalchemy as sa

from components.errors import TvpError

_meta = sa.MetaData()
SCHEDULES = sa.Table(
    "tvp_schedules", _meta,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("cron", sa.String(200), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("command", sa.Text, nullable=False),  # JSON list: the tvp command's arguments
    sa.Column("address", sa.String(500), nullable=False),  # the Jobs API the ticks submit to
    sa.Column("cwd", sa.Text, nullable=False),  # where it was added: a cluster on this machine runs jobs there
    sa.Column("overlap", sa.String(16), nullable=False),
    sa.Column("paused", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)
TICKS = sa.Table(
    "tvp_schedule_ticks", _meta,
    sa.Column("schedule", sa.String(100), nullable=False),
    sa.Column("fire_time", sa.String(32), nullable=False),  # ISO 8601, UTC: when the tick was due
    sa.Column("submission_id", sa.String(200), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # SUBMITTING, SUBMITTED, SKIPPED, REFUSED, or the job's end
    sa.Column("detail", sa.Text, nullable=False, default=""),
    sa.Column("mlflow_run_id", sa.String(64), nullable=False, default=""),
    sa.Column("recorded_at", sa.String(32), nullable=False),
    sa.PrimaryKeyConstraint("schedule", "fire_time"),
)
OVERLAP_POLICIES = ("skip", "allow")  # skip: no new job while the previous tick's job still runs
ENDED = ("SUCCEEDED", "FAILED", "STOPPED", "SKIPPED", "REFUSED")


class ScheduleError(TvpError, ValueError):
    pass


def utc_iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Schedule:
    name: str
    cron: str
    timezone: str
    command: list[str]
    address: str
    cwd: str
    overlap: str = "skip"
    paused: bool = False
    created_at: str = field(default_factory=lambda: utc_iso(datetime.now(timezone.utc)))


@dataclass
class Tick:
    schedule: str
    fire_time: str
    submission_id: str
    state: str
    detail: str = ""
    mlflow_run_id: str = ""
    recorded_at: str = ""


class ScheduleStore:
    def __init__(self, url: str):
        self.url = url
        try:
            self.engine = sa.create_engine(url)
            _meta.create_all(self.engine)
        except (sa.exc.ArgumentError, sa.exc.OperationalError, ModuleNotFoundError) as exc:
            raise ScheduleError(f"cannot open the schedule store {url}: {str(exc).splitlines()[0]}") from None

    # -- schedules ---------------------------------------------------------------------------------------------
    def add(self, schedule: Schedule) -> None:
        row = {**asdict(schedule), "command": json.dumps(schedule.command)}
        with self.engine.begin() as db:
            if db.execute(sa.select(SCHEDULES.c.name).where(SCHEDULES.c.name == schedule.name)).first():
                raise ScheduleError(f"a schedule named {schedule.name!r} exists: remove it first, or choose "
                                    "another name")
            db.execute(SCHEDULES.insert().values(**row))

    def schedules(self) -> list[Schedule]:
        with self.engine.connect() as db:
            rows = db.execute(sa.select(SCHEDULES).order_by(SCHEDULES.c.name)).mappings().all()
        return [Schedule(**{**row, "command": json.loads(row["command"])}) for row in rows]

    def get(self, name: str) -> Schedule:
        for schedule in self.schedules():
            if schedule.name == name:
                return schedule
        names = ", ".join(s.name for s in self.schedules()) or "none"
        raise ScheduleError(f"no schedule named {name!r} in {self.url} (schedules: {names})")

    def set_paused(self, name: str, paused: bool) -> None:
        self.get(name)
        with self.engine.begin() as db:
            db.execute(SCHEDULES.update().where(SCHEDULES.c.name == name).values(paused=paused))

    def remove(self, name: str) -> None:
        self.get(name)
        with self.engine.begin() as db:
            db.execute(SCHEDULES.delete().where(SCHEDULES.c.name == name))

    # -- ticks -------------------------------------------------------------------------------------------------
    def claim_tick(self, tick: Tick) -> Tick:
        """Record ``tick`` unless one for the same (schedule, fire time) exists; return the recorded one."""
        tick.recorded_at = utc_iso(datetime.now(timezone.utc))
        try:
            with self.engine.begin() as db:
                db.execute(TICKS.insert().values(**asdict(tick)))
            return tick
        except sa.exc.IntegrityError:
            return self.tick(tick.schedule, tick.fire_time)

    def update_tick(self, schedule: str, fire_time: str, **values: Any) -> None:
        values["recorded_at"] = utc_iso(datetime.now(timezone.utc))
        with self.engine.begin() as db:
            db.execute(TICKS.update().where(TICKS.c.schedule == schedule, TICKS.c.fire_time == fire_time)
                       .values(**values))

    def tick(self, schedule: str, fire_time: str) -> Tick:
        with self.engine.connect() as db:
            row = db.execute(sa.select(TICKS).where(TICKS.c.schedule == schedule, TICKS.c.fire_time == fire_time)
                             ).mappings().first()
        return Tick(**row)

    def ticks(self, schedule: str | None = None, states: tuple[str, ...] | None = None) -> Iterator[Tick]:
        query = sa.select(TICKS).order_by(TICKS.c.fire_time)
        if schedule is not None:
            query = query.where(TICKS.c.schedule == schedule)
        if states is not None:
            query = query.where(TICKS.c.state.in_(states))
        with self.engine.connect() as db:
            rows = db.execute(query).mappings().all()
        return (Tick(**row) for row in rows)
