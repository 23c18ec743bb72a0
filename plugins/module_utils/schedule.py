# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""When a job runs (seed step 1): interval/start -> systemd OnCalendar, next runs, clashes.

The timer (`OnCalendar=`) is what starts a scheduled run, so everything here
mirrors how systemd evaluates those expressions in local time:

- a local time that does not exist (the spring-forward gap) is skipped: no
  run that day (hour) -- `systemd-analyze calendar` shows the same;
- a local time that exists twice (fall back) fires once, at its first
  occurrence (the summer-time one); an hourly job runs once in that hour.

Runs never happen before `start`: the timer may fire earlier (it knows only
the pattern), and the runner then does nothing (`is_due`).
"""

from __future__ import annotations

import calendar
import datetime
import os
from typing import Iterator, List, Optional, Union

try:
    import zoneinfo
except ImportError:  # pragma: no cover - Python < 3.9 is not supported at run time
    zoneinfo = None

from .errors import ValidationError
from .job import START_FORMAT

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
UTC = datetime.timezone.utc
# How far ahead clashes are looked for: long enough for hourly vs daily,
# weekly vs monthly (a month's day falls on each weekday within ~14 months).
CLASH_HORIZON_DAYS = 400
# Safety stop for the occurrence search (a schedule always fires at least monthly).
_MAX_SEARCH_DAYS = 366 * 4

TzLike = Union[None, str, datetime.tzinfo]


def local_zone(tz: TzLike = None) -> datetime.tzinfo:
    """The zone schedules are evaluated in.

    `tz` may be a tzinfo or a zone name ('Europe/Berlin'). Default: the host's
    local zone as libc (and so systemd) sees it: $TZ when it names a zone,
    else /etc/localtime.
    """
    if isinstance(tz, datetime.tzinfo):
        return tz
    if zoneinfo is None:  # pragma: no cover
        raise ValidationError("tz", "zoneinfo (Python >= 3.9) is required to evaluate schedules")
    if tz:
        try:
            return zoneinfo.ZoneInfo(str(tz))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValidationError("tz", "unknown time zone %r" % (tz,))
    env = os.environ.get("TZ", "").lstrip(":")
    if env:
        try:
            return zoneinfo.ZoneInfo(env)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            pass  # a POSIX TZ rule string or garbage: fall back to /etc/localtime
    try:
        target = os.path.realpath("/etc/localtime")
        marker = "/zoneinfo/"
        if marker in target:
            return zoneinfo.ZoneInfo(target.split(marker, 1)[1])
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        pass
    try:
        with open("/etc/localtime", "rb") as handle:
            return zoneinfo.ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ValueError):
        return UTC  # no zone configured: libc uses UTC as well


def _start(job: dict) -> Optional[datetime.datetime]:
    """The job's start as a naive local datetime (None for manual jobs without one)."""
    value = job.get("start")
    if value in (None, ""):
        if job.get("interval", "manual") != "manual":
            raise ValidationError("start", "is required when interval is %s ('YYYY-MM-DD HH:MM')" % job.get("interval"))
        return None
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=None, second=0, microsecond=0)
    try:
        return datetime.datetime.strptime(str(value).strip(), START_FORMAT)
    except ValueError:
        raise ValidationError("start", "must be 'YYYY-MM-DD HH:MM' (local time), got %r" % (value,))


def _interval(job: dict) -> str:
    interval = job.get("interval") or "manual"
    if interval not in ("manual", "hourly", "daily", "weekly", "monthly"):
        raise ValidationError("interval", "must be one of manual, hourly, daily, weekly, monthly, got %r" % (interval,))
    return interval


def on_calendar(job: dict) -> List[str]:
    """The OnCalendar= expressions (one timer line each) for the job; [] for manual."""
    interval = _interval(job)
    if interval == "manual":
        return []
    start = _start(job)
    hm = "%02d:%02d:00" % (start.hour, start.minute)
    if interval == "hourly":
        return ["*-*-* *:%02d:00" % start.minute]
    if interval == "daily":
        return ["*-*-* " + hm]
    if interval == "weekly":
        return ["%s *-*-* %s" % (WEEKDAYS[start.weekday()], hm)]
    day = start.day
    if day <= 28:
        return ["*-*-%02d %s" % (day, hm)]
    if day == 31:
        return ["*-*~01 " + hm]  # the last day of every month
    # 29/30: that day where the month has it, and February's last day otherwise.
    return ["*-*-%02d %s" % (day, hm), "*-02~01 " + hm]


def _slots(interval: str, start: datetime.datetime, day: datetime.date) -> List[datetime.datetime]:
    """Naive local times the expressions match on `day` (before DST handling)."""
    if interval == "hourly":
        return [datetime.datetime(day.year, day.month, day.day, h, start.minute) for h in range(24)]
    at = datetime.datetime(day.year, day.month, day.day, start.hour, start.minute)
    if interval == "daily":
        return [at]
    if interval == "weekly":
        return [at] if day.weekday() == start.weekday() else []
    # monthly: the start's day, or the month's last day when the month is shorter
    last = calendar.monthrange(day.year, day.month)[1]
    return [at] if day.day == min(start.day, last) else []


def _resolve(naive: datetime.datetime, tz: datetime.tzinfo) -> Optional[datetime.datetime]:
    """Local wall time -> aware time the way systemd fires it: None in a DST gap,
    the first occurrence when it is ambiguous."""
    aware = naive.replace(tzinfo=tz, fold=0)
    back = aware.astimezone(UTC).astimezone(tz)
    if back.replace(tzinfo=None) != naive:
        return None
    return back


def _aware(value: Optional[datetime.datetime], tz: datetime.tzinfo) -> datetime.datetime:
    if value is None:
        return datetime.datetime.now(tz)
    if value.tzinfo is None:
        return value.replace(tzinfo=tz)  # naive = local wall time
    return value.astimezone(tz)


def _start_aware(start: datetime.datetime, tz: datetime.tzinfo) -> datetime.datetime:
    # A start inside a DST gap: fold=0 maps it to the instant the clock jumps over it.
    return start.replace(tzinfo=tz, fold=0).astimezone(tz)


def occurrences(job: dict, after: Optional[datetime.datetime] = None, tz: TzLike = None) -> Iterator[datetime.datetime]:
    """Every run time of the job at or after max(after, start), ascending (endless)."""
    interval = _interval(job)
    if interval == "manual":
        return
    zone = local_zone(tz)
    start = _start(job)
    lower = max(_aware(after, zone), _start_aware(start, zone))
    day = lower.date()
    for _day_count in range(_MAX_SEARCH_DAYS):
        for naive in _slots(interval, start, day):
            when = _resolve(naive, zone)
            if when is not None and when >= lower:
                yield when
        day += datetime.timedelta(days=1)


def next_runs(job: dict, count: int = 3, now: Optional[datetime.datetime] = None, tz: TzLike = None) -> List[datetime.datetime]:
    """The next `count` start times (aware, local zone) at or after max(now, start)."""
    runs = []
    if count <= 0:
        return runs
    for when in occurrences(job, now, tz):
        runs.append(when)
        if len(runs) >= count:
            break
    return runs


def runs_between(job: dict, begin: datetime.datetime, end: datetime.datetime, tz: TzLike = None) -> List[datetime.datetime]:
    """Run times in [begin, end)."""
    zone = local_zone(tz)
    end = _aware(end, zone)
    runs = []
    for when in occurrences(job, begin, zone):
        if when >= end:
            break
        runs.append(when)
    return runs


def is_due(job: dict, now: Optional[datetime.datetime] = None, tz: TzLike = None) -> bool:
    """Whether a timer firing now should run the job: never for manual jobs, never before start."""
    if _interval(job) == "manual":
        return False
    zone = local_zone(tz)
    return _aware(now, zone) >= _start_aware(_start(job), zone)


def iso(dt: datetime.datetime, tz: TzLike = None) -> str:
    """ISO 8601 with UTC offset, to the second (naive input = local time)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=local_zone(tz))
    return dt.isoformat(timespec="seconds")


def clashes(job: dict, others: list, now: Optional[datetime.datetime] = None, tz: TzLike = None,
            horizon_days: int = CLASH_HORIZON_DAYS) -> List[str]:
    """Warnings for every other scheduled job that starts at the same minute as this one
    within the horizon (the first shared minute is named)."""
    if _interval(job) == "manual":
        return []
    zone = local_zone(tz)
    begin = _aware(now, zone)
    end = begin + datetime.timedelta(days=horizon_days)
    mine = {}
    for when in runs_between(job, begin, end, zone):
        mine.setdefault(when.astimezone(UTC).replace(second=0, microsecond=0), when)
    warnings = []
    name = job.get("name")
    for other in others or []:
        if not isinstance(other, dict) or other.get("name") == name or (other.get("interval") or "manual") == "manual":
            continue
        if other.get("state", "present") == "absent":
            continue
        for when in runs_between(other, begin, end, zone):
            key = when.astimezone(UTC).replace(second=0, microsecond=0)
            if key in mine:
                warnings.append(
                    "job '%s' and job '%s' both start at %s: backup runs wait for each other (defer), "
                    "consider separating them" % (name, other.get("name"), mine[key].strftime("%Y-%m-%d %H:%M")))
                break
    return warnings


def describe(job: dict, count: int = 3, now: Optional[datetime.datetime] = None, tz: TzLike = None) -> dict:
    """The `schedule` value modules return: OnCalendar lines and the next runs (ISO 8601)."""
    return {
        "on_calendar": on_calendar(job),
        "next_runs": [iso(dt) for dt in next_runs(job, count, now, tz)],
    }
