# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""schedule.py: OnCalendar expressions, next runs (checked against systemd-analyze), DST, clashes."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
import time
import zoneinfo

import pytest

from ansible_collections.sar.backup.plugins.module_utils import schedule
from ansible_collections.sar.backup.plugins.module_utils.errors import ValidationError

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
UTC = datetime.timezone.utc
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
ZONES = ("Europe/Berlin", "America/New_York", "Australia/Lord_Howe")  # Lord Howe: a 30-minute DST shift

# Start in the past; every interval, monthly days 15/28/29/30/31, a leap day, odd minutes.
PAST_JOBS = [
    ("hourly", "2025-06-01 00:17"),
    ("hourly", "2024-01-01 00:00"),
    ("daily", "2025-01-01 02:00"),
    ("daily", "2025-01-01 02:30"),
    ("daily", "2025-01-01 23:59"),
    ("weekly", "2025-01-01 02:00"),  # a Wednesday
    ("weekly", "2025-03-30 02:30"),  # a Sunday, the time of the European spring gap
    ("monthly", "2025-01-15 04:00"),
    ("monthly", "2025-01-28 01:00"),
    ("monthly", "2025-01-29 02:00"),
    ("monthly", "2025-01-30 02:00"),
    ("monthly", "2025-01-31 02:00"),
    ("monthly", "2024-02-29 03:00"),
]
# Base times (local, TZ of the run) that cross the interesting places: February in
# leap and common years, both European DST changes, both US ones, Lord Howe's.
FIXED_BASES = [
    "2027-01-25 12:00:30", "2028-01-25 12:00:30",
    "2026-03-27 12:00:30", "2026-10-23 12:00:30",
    "2026-03-06 12:00:30", "2026-10-30 12:00:30",
    "2026-04-03 12:00:30", "2026-10-02 12:00:30",
]


def job(interval, start, name="j"):
    return {"name": name, "interval": interval, "start": start, "defer": 3600, "retries": 3}


def berlin(*args):
    return datetime.datetime(*args, tzinfo=BERLIN)


def isos(runs):
    return [schedule.iso(r) for r in runs]


# ---- systemd-analyze as the oracle -------------------------------------------------

_UTC_LINE = re.compile(r"\(in UTC\):\s+\w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


def _supports_base_time():
    if SYSTEMD_ANALYZE is None:
        return False
    out = subprocess.run([SYSTEMD_ANALYZE, "--help"], capture_output=True, text=True, check=False).stdout
    return "--base-time" in out


def systemd_next(exprs, count, tz, base_epoch=None):
    """The next `count` elapses of all expressions merged, as UTC datetimes.
    Without base_epoch systemd-analyze counts from the current time."""
    cmd = [SYSTEMD_ANALYZE, "calendar", "--iterations=%d" % count]
    if base_epoch is not None:
        cmd.append("--base-time=@%d" % base_epoch)
    env = dict(os.environ, TZ=tz, LC_ALL="C")
    proc = subprocess.run(cmd + list(exprs), capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, "systemd-analyze refused %r: %s" % (exprs, proc.stderr)
    times = sorted({datetime.datetime.strptime(m, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
                    for m in _UTC_LINE.findall(proc.stdout)})
    assert len(times) >= count, proc.stdout
    return times[:count]


def utc(runs):
    return [r.astimezone(UTC) for r in runs]


@needs_systemd
@pytest.mark.parametrize("tz", ZONES)
@pytest.mark.parametrize("interval,start", PAST_JOBS)
def test_next_runs_match_systemd_from_now(interval, start, tz):
    j = job(interval, start)
    exprs = schedule.on_calendar(j)
    assert exprs
    if _supports_base_time():
        base = int(time.time()) | 1  # odd second: never exactly on an elapse
    else:
        base = None  # systemd-analyze uses the current time; seconds of skew are harmless here
    now = datetime.datetime.fromtimestamp(base if base is not None else time.time(), UTC)
    expected = systemd_next(exprs, 3, tz, base)
    assert utc(schedule.next_runs(j, 3, now=now, tz=tz)) == expected


@needs_systemd
@pytest.mark.parametrize("tz", ZONES)
@pytest.mark.parametrize("base", FIXED_BASES)
@pytest.mark.parametrize("interval,start", PAST_JOBS)
def test_next_runs_match_systemd_at_fixed_bases(interval, start, base, tz):
    if not _supports_base_time():
        pytest.skip("this systemd-analyze has no --base-time; the from-now comparison still runs")
    zone = zoneinfo.ZoneInfo(tz)
    now = datetime.datetime.strptime(base, "%Y-%m-%d %H:%M:%S").replace(tzinfo=zone)
    count = 30 if interval == "hourly" else 6  # hourly: through the whole DST day
    j = job(interval, start)
    expected = systemd_next(schedule.on_calendar(j), count, tz, int(now.timestamp()))
    got = schedule.next_runs(j, count, now=now, tz=tz)
    assert utc(got) == expected
    assert all(r.tzinfo is not None and r.utcoffset() == r.astimezone(zone).utcoffset() for r in got)


@needs_systemd
@pytest.mark.parametrize("interval,start", [
    ("hourly", "2031-07-04 09:41"), ("daily", "2031-07-04 09:41"), ("weekly", "2031-07-04 09:41"),
    ("monthly", "2031-07-31 09:41"), ("monthly", "2032-02-29 09:41"), ("daily", "2031-03-30 02:30"),
])
def test_future_start_first_run_is_start_and_matches_systemd_after_it(interval, start):
    """systemd knows only the pattern: from one second before `start` its elapses are ours."""
    j = job(interval, start)
    got = schedule.next_runs(j, 3, tz="Europe/Berlin")  # now = the real current time
    begin = datetime.datetime.strptime(start, "%Y-%m-%d %H:%M").replace(tzinfo=BERLIN)
    assert all(r >= begin for r in got)
    if start != "2031-03-30 02:30":
        assert got[0] == begin
    if _supports_base_time():
        assert utc(got) == systemd_next(schedule.on_calendar(j), 3, "Europe/Berlin", int(begin.timestamp()) - 1)


@needs_systemd
@pytest.mark.parametrize("start", ["2026-01-05 10:00", "2026-01-28 10:00", "2026-01-29 10:00",
                                   "2026-01-30 10:00", "2026-01-31 10:00", "2026-01-05 00:00"])
@pytest.mark.parametrize("interval", ["hourly", "daily", "weekly", "monthly"])
def test_on_calendar_is_accepted_by_systemd(interval, start):
    exprs = schedule.on_calendar(job(interval, start))
    proc = subprocess.run([SYSTEMD_ANALYZE, "calendar"] + exprs, capture_output=True, text=True, check=False,
                          env=dict(os.environ, TZ="Europe/Berlin", LC_ALL="C"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Normalized form:") == len(exprs)


# ---- expressions ---------------------------------------------------------------------

@pytest.mark.parametrize("interval,start,expected", [
    ("manual", None, []),
    ("manual", "2026-12-01 02:00", []),
    ("hourly", "2026-12-01 02:05", ["*-*-* *:05:00"]),
    ("daily", "2026-12-01 02:05", ["*-*-* 02:05:00"]),
    ("weekly", "2026-12-02 23:00", ["Wed *-*-* 23:00:00"]),
    ("weekly", "2026-12-06 00:00", ["Sun *-*-* 00:00:00"]),
    ("monthly", "2026-12-01 02:00", ["*-*-01 02:00:00"]),
    ("monthly", "2026-12-28 02:00", ["*-*-28 02:00:00"]),
    ("monthly", "2026-12-29 02:00", ["*-*-29 02:00:00", "*-02~01 02:00:00"]),
    ("monthly", "2026-11-30 02:00", ["*-*-30 02:00:00", "*-02~01 02:00:00"]),
    ("monthly", "2026-12-31 02:00", ["*-*~01 02:00:00"]),
])
def test_on_calendar(interval, start, expected):
    assert schedule.on_calendar(job(interval, start)) == expected


def test_scheduled_job_without_start_is_refused():
    with pytest.raises(ValidationError) as err:
        schedule.on_calendar(job("daily", None))
    assert err.value.field == "start"


# ---- next runs by hand ---------------------------------------------------------------

@pytest.mark.parametrize("start,now,expected", [
    # day 31: the last day of every shorter month
    ("2026-01-31 02:00", berlin(2027, 1, 1), ["2027-01-31T02:00:00+01:00", "2027-02-28T02:00:00+01:00",
                                              "2027-03-31T02:00:00+02:00", "2027-04-30T02:00:00+02:00"]),
    # day 30 in a leap year: February's last day is the 29th
    ("2026-01-30 02:00", berlin(2028, 1, 1), ["2028-01-30T02:00:00+01:00", "2028-02-29T02:00:00+01:00",
                                              "2028-03-30T02:00:00+02:00", "2028-04-30T02:00:00+02:00"]),
    # day 29 in a common year -> 28 Feb; in a leap year 29 Feb, once (two expressions match it)
    ("2026-01-29 02:00", berlin(2027, 1, 1), ["2027-01-29T02:00:00+01:00", "2027-02-28T02:00:00+01:00",
                                              "2027-03-29T02:00:00+02:00", "2027-04-29T02:00:00+02:00"]),
    ("2026-01-29 02:00", berlin(2028, 1, 1), ["2028-01-29T02:00:00+01:00", "2028-02-29T02:00:00+01:00",
                                              "2028-03-29T02:00:00+02:00", "2028-04-29T02:00:00+02:00"]),
    ("2026-01-15 02:00", berlin(2026, 1, 15, 2, 0), ["2026-01-15T02:00:00+01:00", "2026-02-15T02:00:00+01:00",
                                                     "2026-03-15T02:00:00+01:00", "2026-04-15T02:00:00+02:00"]),
])
def test_monthly_next_runs(start, now, expected):
    assert isos(schedule.next_runs(job("monthly", start), 4, now=now, tz="Europe/Berlin")) == expected


@pytest.mark.parametrize("interval,start,now,expected", [
    # spring forward (29 Mar 2026, 02:00 -> 03:00): 02:30 does not exist -> no run that day, as systemd does
    ("daily", "2026-01-01 02:30", berlin(2026, 3, 28, 12, 0),
     ["2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00", "2026-04-01T02:30:00+02:00"]),
    ("daily", "2026-01-01 03:00", berlin(2026, 3, 28, 12, 0),
     ["2026-03-29T03:00:00+02:00", "2026-03-30T03:00:00+02:00", "2026-03-31T03:00:00+02:00"]),
    ("weekly", "2026-03-22 02:30", berlin(2026, 3, 1, 0, 0),
     ["2026-03-22T02:30:00+01:00", "2026-04-05T02:30:00+02:00", "2026-04-12T02:30:00+02:00"]),
    # a start inside the gap: the first run is the next day
    ("daily", "2026-03-29 02:30", berlin(2026, 1, 1, 0, 0),
     ["2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00", "2026-04-01T02:30:00+02:00"]),
    ("hourly", "2026-03-29 00:30", berlin(2026, 1, 1, 0, 0),
     ["2026-03-29T00:30:00+01:00", "2026-03-29T01:30:00+01:00", "2026-03-29T03:30:00+02:00",
      "2026-03-29T04:30:00+02:00"]),
    # fall back (25 Oct 2026, 03:00 -> 02:00): 02:30 happens twice, the run fires once, the first time
    ("daily", "2026-01-01 02:30", berlin(2026, 10, 24, 12, 0),
     ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00", "2026-10-27T02:30:00+01:00"]),
    ("hourly", "2026-10-25 00:30", berlin(2026, 1, 1, 0, 0),
     ["2026-10-25T00:30:00+02:00", "2026-10-25T01:30:00+02:00", "2026-10-25T02:30:00+02:00",
      "2026-10-25T03:30:00+01:00"]),
    ("monthly", "2026-01-25 02:30", berlin(2026, 10, 1, 0, 0),
     ["2026-10-25T02:30:00+02:00", "2026-11-25T02:30:00+01:00", "2026-12-25T02:30:00+01:00"]),
])
def test_dst_berlin(interval, start, now, expected):
    j = job(interval, start)
    got = schedule.next_runs(j, len(expected), now=now, tz="Europe/Berlin")
    assert isos(got) == expected
    if SYSTEMD_ANALYZE and _supports_base_time():  # and systemd agrees
        assert utc(got) == systemd_next(schedule.on_calendar(j), len(expected), "Europe/Berlin",
                                        int(max(now, schedule._start_aware(schedule._start(j), BERLIN)).timestamp()) - 1)


def test_next_runs_never_before_start_and_inclusive():
    j = job("daily", "2030-05-05 10:00")
    assert isos(schedule.next_runs(j, 2, now=berlin(2026, 1, 1), tz=BERLIN)) == [
        "2030-05-05T10:00:00+02:00", "2030-05-06T10:00:00+02:00"]
    assert isos(schedule.next_runs(j, 1, now=berlin(2030, 5, 5, 10, 0), tz=BERLIN)) == ["2030-05-05T10:00:00+02:00"]
    assert isos(schedule.next_runs(j, 1, now=berlin(2030, 5, 5, 10, 0, 1), tz=BERLIN)) == ["2030-05-06T10:00:00+02:00"]


def test_next_runs_naive_now_is_local_and_aware_now_is_converted():
    j = job("daily", "2026-01-01 02:00")
    naive = schedule.next_runs(j, 1, now=datetime.datetime(2026, 6, 1, 1, 0), tz="Europe/Berlin")
    aware = schedule.next_runs(j, 1, now=datetime.datetime(2026, 5, 31, 23, 0, tzinfo=UTC), tz="Europe/Berlin")
    assert isos(naive) == isos(aware) == ["2026-06-01T02:00:00+02:00"]
    assert str(naive[0].tzinfo) == "Europe/Berlin"


def test_manual_job():
    j = job("manual", None)
    assert schedule.next_runs(j, 3) == []
    assert schedule.is_due(j) is False
    assert schedule.clashes(j, [job("daily", "2026-01-01 02:00", "other")]) == []


def test_is_due():
    j = job("daily", "2026-12-01 02:00")
    assert schedule.is_due(j, now=berlin(2026, 12, 1, 1, 59), tz=BERLIN) is False
    assert schedule.is_due(j, now=berlin(2026, 12, 1, 2, 0), tz=BERLIN) is True
    assert schedule.is_due(j, now=berlin(2027, 3, 1, 2, 0), tz=BERLIN) is True
    assert schedule.is_due(j, now=datetime.datetime(2026, 12, 1, 0, 30, tzinfo=UTC), tz=BERLIN) is False
    assert schedule.is_due(j, now=datetime.datetime(2026, 12, 1, 1, 0, tzinfo=UTC), tz=BERLIN) is True


def test_iso():
    assert schedule.iso(berlin(2026, 12, 1, 2, 0)) == "2026-12-01T02:00:00+01:00"
    assert schedule.iso(berlin(2026, 7, 1, 2, 0, 5, 123)) == "2026-07-01T02:00:05+02:00"
    assert schedule.iso(datetime.datetime(2026, 7, 1, 2, 0), tz="Europe/Berlin") == "2026-07-01T02:00:00+02:00"
    assert schedule.iso(datetime.datetime(2026, 7, 1, tzinfo=UTC)) == "2026-07-01T00:00:00+00:00"


def test_describe():
    out = schedule.describe(job("weekly", "2026-12-02 02:00"), now=berlin(2026, 11, 28), tz=BERLIN)
    assert out == {"on_calendar": ["Wed *-*-* 02:00:00"],
                   "next_runs": ["2026-12-02T02:00:00+01:00", "2026-12-09T02:00:00+01:00",
                                 "2026-12-16T02:00:00+01:00"]}


def test_local_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    assert str(schedule.local_zone()) == "Asia/Tokyo"
    monkeypatch.setenv("TZ", ":Europe/Berlin")
    assert str(schedule.local_zone()) == "Europe/Berlin"
    assert str(schedule.local_zone("America/New_York")) == "America/New_York"
    assert schedule.local_zone(BERLIN) is BERLIN
    monkeypatch.delenv("TZ")
    assert schedule.local_zone() is not None  # /etc/localtime or UTC
    with pytest.raises(ValidationError) as err:
        schedule.local_zone("Mars/Olympus_Mons")
    assert err.value.field == "tz"


# ---- clashes ---------------------------------------------------------------------------

NOW = berlin(2026, 11, 28, 12, 0)


def test_clash_same_minute():
    warnings = schedule.clashes(job("daily", "2026-01-01 02:00", "nightly"),
                                [job("weekly", "2026-12-02 02:00", "weekly")], now=NOW, tz=BERLIN)
    assert warnings == ["job 'nightly' and job 'weekly' both start at 2026-12-02 02:00: backup runs wait for each other "
                        "(defer), consider separating them"]


def test_no_clash_at_different_minutes():
    assert schedule.clashes(job("daily", "2026-01-01 02:00", "a"),
                            [job("daily", "2026-01-01 02:01", "b"), job("hourly", "2026-01-01 00:30", "c"),
                             job("weekly", "2026-01-01 03:00", "d"), job("monthly", "2026-01-31 02:15", "e")],
                            now=NOW, tz=BERLIN) == []


def test_clash_hourly_vs_daily_both_ways():
    hourly = job("hourly", "2026-01-01 00:00", "hourly")
    daily = job("daily", "2026-01-01 02:00", "daily")
    assert schedule.clashes(hourly, [daily], now=NOW, tz=BERLIN) == [
        "job 'hourly' and job 'daily' both start at 2026-11-29 02:00: backup runs wait for each other (defer), "
        "consider separating them"]
    assert len(schedule.clashes(daily, [hourly], now=NOW, tz=BERLIN)) == 1


def test_clash_weekly_vs_monthly_found_within_horizon():
    # Wednesdays vs the last day of the month: first shared day is 31 Mar 2027
    warnings = schedule.clashes(job("weekly", "2026-12-02 02:00", "w"), [job("monthly", "2026-01-31 02:00", "m")],
                                now=NOW, tz=BERLIN)
    assert len(warnings) == 1 and "2027-03-31 02:00" in warnings[0]


def test_clash_ignores_itself_manual_absent_and_far_future():
    j = job("daily", "2026-01-01 02:00", "a")
    others = [job("daily", "2020-01-01 02:00", "a"),  # the saved version of this very job
              job("manual", None, "m"),
              dict(job("daily", "2026-01-01 02:00", "gone"), state="absent"),
              job("daily", "2035-01-01 02:00", "later")]  # starts beyond the horizon
    assert schedule.clashes(j, others, now=NOW, tz=BERLIN) == []


def test_clash_respects_start_of_other_job():
    # the other job clashes only from its start on; it starts within the horizon -> named date is its start
    warnings = schedule.clashes(job("daily", "2026-01-01 02:00", "a"), [job("daily", "2027-06-01 02:00", "b")],
                                now=NOW, tz=BERLIN)
    assert warnings and "2027-06-01 02:00" in warnings[0]


def test_clash_one_warning_per_other_job():
    warnings = schedule.clashes(job("hourly", "2026-01-01 00:10", "h"),
                                [job("hourly", "2026-01-01 00:10", "h2"), job("daily", "2026-01-01 05:10", "d")],
                                now=NOW, tz=BERLIN)
    assert len(warnings) == 2
    assert "'h2'" in warnings[0] and "'d'" in warnings[1]
