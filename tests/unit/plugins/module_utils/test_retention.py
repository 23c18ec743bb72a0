# SPDX-License-Identifier: GPL-3.0-or-later
"""Calendar retention against tables worked out by hand: a year of nightly runs at 00:30 on an
appliance in Europe/Berlin (so the local day, week and month of a run differ from its UTC ones,
and both DST changes of 2026 are crossed), with a missing day, a failed week and an early stop."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.sar.backup.plugins.module_utils import retention

try:
    from zoneinfo import ZoneInfo
    BERLIN = ZoneInfo("Europe/Berlin")
except Exception:  # pragma: no cover  (no tz database)
    BERLIN = None

pytestmark = pytest.mark.skipif(BERLIN is None, reason="no time zone database")


def nightly(first: datetime.date, last: datetime.date, missing=()) -> list:
    """Archive names of runs at 00:30 Berlin time every night from first to last, but the missing days."""
    names = []
    day = first
    while day <= last:
        if day not in missing:
            local = datetime.datetime(day.year, day.month, day.day, 0, 30, tzinfo=BERLIN)
            utc = local.astimezone(datetime.timezone.utc)
            names.append("nightly_pbx01_%s.sar" % utc.strftime("%Y%m%dT%H%M%SZ"))
        day += datetime.timedelta(days=1)
    return names


def local_days(names) -> list:
    return sorted(retention.archive_time(n).astimezone(BERLIN).strftime("%m-%d") for n in names)


FAILED_WEEK = {datetime.date(2026, 8, d) for d in range(10, 17)}   # ISO week 33 of 2026: no archive
CHRISTMAS = {datetime.date(2026, 12, 25)}
YEAR = nightly(datetime.date(2026, 1, 1), datetime.date(2026, 12, 31), FAILED_WEEK | CHRISTMAS)


def test_a_year_of_nightly_runs():
    rules = {"keep": 3, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6, "keep_yearly": 2}
    kept = retention.to_keep(YEAR, rules, protect=[YEAR[-1]], tz=BERLIN)
    # By hand (local dates of 2026):
    #   keep 3:        12-31 12-30 12-29
    #   keep_daily 7:  12-31 12-30 12-29 12-28 12-27 12-26 12-24   (the 25th has no archive: not a day of the 7)
    #   keep_weekly 4: W53 (12-28..01-03) 12-31, W52 12-27, W51 12-20, W50 12-13
    #   keep_monthly 6: 12-31 11-30 10-31 09-30 08-31 07-31  (10-31 00:30 CET is 10-30 23:30 UTC: local months)
    #   keep_yearly 2: 2026 -> 12-31 (2025 has no archive)
    assert local_days(kept) == sorted(["12-31", "12-30", "12-29", "12-28", "12-27", "12-26", "12-24", "12-20", "12-13",
                                       "11-30", "10-31", "09-30", "08-31", "07-31"])
    assert set(kept[YEAR[-1]]) >= {"keep", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "just written"}
    removed = retention.to_remove(YEAR, rules, protect=[YEAR[-1]], tz=BERLIN)
    assert len(removed) == len(YEAR) - 14 and set(removed).isdisjoint(kept)
    assert removed == sorted(removed)  # oldest first


def test_a_failed_week_does_not_use_up_a_period():
    names = nightly(datetime.date(2026, 7, 1), datetime.date(2026, 8, 20), FAILED_WEEK)
    kept = retention.to_keep(names, {"keep_daily": 7, "keep_weekly": 3}, tz=BERLIN)
    # By hand: days with archives, newest first: 08-20 19 18 17, (10..16 failed), 08-09 08 07.
    # ISO weeks: W34 (08-17..23) -> 08-20; W33 (08-10..16) has none; W32 (08-03..09) -> 08-09; W31 (07-27..08-02) -> 08-02.
    assert local_days(kept) == ["08-02", "08-07", "08-08", "08-09", "08-17", "08-18", "08-19", "08-20"]


def test_dst_changes_do_not_merge_or_split_days():
    # Around both switches of 2026 (03-29, 10-25): one archive a local day, each its own day.
    spring = nightly(datetime.date(2026, 3, 26), datetime.date(2026, 4, 1))
    autumn = nightly(datetime.date(2026, 10, 22), datetime.date(2026, 10, 28))
    for names in (spring, autumn):
        assert len(retention.to_keep(names, {"keep_daily": 7}, tz=BERLIN)) == 7
        assert len(retention.to_keep(names, {"keep_daily": 3}, tz=BERLIN)) == 3


def test_keep_alone_and_keep_all_and_protection():
    names = nightly(datetime.date(2026, 1, 1), datetime.date(2026, 1, 10))
    assert local_days(retention.to_keep(names, {"keep": 2}, tz=BERLIN)) == ["01-09", "01-10"]
    assert len(retention.to_keep(names, {"keep": 0}, tz=BERLIN)) == 10          # no rule: everything kept
    assert retention.to_remove(names, {}, tz=BERLIN) == []
    # The archive just written is kept even when it is not the newest by name (a clock set back).
    kept = retention.to_keep(names, {"keep": 1}, protect=[names[0]], tz=BERLIN)
    assert set(kept) == {names[0], names[-1]}
    # Names without a readable time are never removed.
    odd = names + ["nightly_pbx01_20269999T999999Z.sar"]
    assert "nightly_pbx01_20269999T999999Z.sar" in retention.to_keep(odd, {"keep": 1}, tz=BERLIN)
