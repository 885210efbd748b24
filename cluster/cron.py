"""Cron expressions as people write them, turned into APScheduler triggers.

Five fields (minute hour day month weekday) as in crontab, or six with
seconds first, for short intervals. Weekday numbers mean what they mean in
crontab (0 and 7 Sunday, 1 Monday): APScheduler 3 counts from Monday, so
numbers are rewritten as day names, which it reads unambiguously.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from apscheduler.triggers.cron import CronTrigger

from cluster.schedule_store import ScheduleError

DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _weekday(token: str) -> str:
    base, slash, step = token.partition("/")
    if base == "*" or not base[:1].isdigit():
        return token
    if slash:
        raise ValueError(f"a step over weekday numbers ({token}) is ambiguous: use names (mon-fri) or *")
    first, dash, last = base.partition("-")
    a, b = int(first), int(last) if dash else None
    if not 0 <= a <= 7 or (b is not None and not a <= b <= 7):
        raise ValueError(f"weekday {token} is not 0-7")
    if b is None:
        return DAY_NAMES[a]
    names = [DAY_NAMES[a]] if a == 0 else []  # Sunday first, then a Monday-based range
    start = max(a, 1)
    if b == 7:
        names.append("sun")
        b = 6
    if start <= b:
        names.append(DAY_NAMES[start] if start == b else f"{DAY_NAMES[start]}-{DAY_NAMES[b]}")
    return ",".join(names)


def cron_trigger(expression: str, zone: str = "UTC") -> CronTrigger:
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ScheduleError(f"cron expression {expression!r} has {len(fields)} fields: give 5 (minute hour day "
                            "month weekday) or 6 (with seconds first)")
    second = fields.pop(0) if len(fields) == 6 else "0"
    minute, hour, day, month, weekday = fields
    try:
        weekday = ",".join(_weekday(t) for t in weekday.split(","))
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month, day_of_week=weekday,
                           timezone=zone)
    except (ValueError, LookupError) as exc:  # a bad field, or an unknown time zone
        raise ScheduleError(f"cron expression {expression!r} (time zone {zone}): {exc}") from None


def last_fire_time(trigger: CronTrigger, now: datetime, lookback: timedelta) -> datetime | None:
    """The latest time the trigger fired at or before ``now``, looking back at most ``lookback``."""
    fire = trigger.get_next_fire_time(None, now - lookback)
    last = None
    while fire is not None and fire <= now:
        last = fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
    return last
