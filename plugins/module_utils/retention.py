# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Which archives a target keeps (SPEC sections 4 and 10; docs/retention in docs/role.md).

Per target: `keep` (the newest N, default 7, 0 = no count limit) and the calendar
rules `keep_daily`, `keep_weekly`, `keep_monthly`, `keep_yearly`, with borgmatic's
and restic's meaning: for each of the last N days (ISO weeks, months, years) *that
have archives*, the newest archive of that period is kept. A period without an
archive (the appliance was off, runs failed) does not use up one of the N. Periods
are the appliance's local calendar (its time zone, DST included); an archive's time
is the UTC time in its name. The rules add up: an archive is kept when any rule
keeps it. With no rule at all (`keep: 0` and no calendar rule) everything is kept.

Never removed, whatever the rules: the archive just written (and verified) and the
newest archive on the target."""

from __future__ import annotations

import datetime
import re

CALENDAR_RULES = (
    ("keep_daily", "%Y-%m-%d"),
    ("keep_weekly", "%G-W%V"),
    ("keep_monthly", "%Y-%m"),
    ("keep_yearly", "%Y"),
)
RULES = ("keep",) + tuple(name for name, _fmt in CALENDAR_RULES)
_TIME = re.compile(r"_(\d{8}T\d{6}Z)\.sar$")


def archive_time(name: str) -> datetime.datetime | None:
    """The UTC time in an archive's name (`<job>_<host>_<YYYYMMDDTHHMMSSZ>.sar`), or None."""
    match = _TIME.search(name)
    if not match:
        return None
    try:
        return datetime.datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None


def to_keep(names: list, rules: dict, protect=(), tz=None) -> dict:
    """name -> list of the rules that keep it (e.g. ["keep", "keep_daily"]), for the names kept.

    `names`: this job's archive names on the target; `rules`: keep / keep_daily / ...
    (missing = 0); `protect`: names never removed; `tz`: the calendar's time zone (default:
    the host's local time)."""
    dated = [(archive_time(n), n) for n in names]
    # Newest first; names whose time cannot be read sort last and are kept (never guess).
    known = sorted([(t, n) for t, n in dated if t is not None], reverse=True)
    kept: dict = {n: ["unreadable time"] for t, n in dated if t is None}
    count = int(rules.get("keep") or 0)
    calendar = [(rule, fmt, int(rules.get(rule) or 0)) for rule, fmt in CALENDAR_RULES]
    if not count and not any(n for _r, _f, n in calendar):
        return {n: ["keep all"] for n in names}
    for _t, name in known[:count]:
        kept.setdefault(name, []).append("keep")
    for rule, fmt, periods in calendar:
        if not periods:
            continue
        seen = []
        for moment, name in known:
            local = moment.astimezone(tz) if tz is not None else moment.astimezone()
            period = local.strftime(fmt)
            if period in seen:
                continue  # an older archive of a period already kept
            seen.append(period)
            if len(seen) > periods:
                break
            kept.setdefault(name, []).append(rule)
    if known:
        kept.setdefault(known[0][1], []).append("newest")
    for name in protect:
        if name in names:
            kept.setdefault(name, []).append("just written")
    return kept


def to_remove(names: list, rules: dict, protect=(), tz=None) -> list:
    """The names the rules do not keep, oldest first."""
    kept = to_keep(names, rules, protect, tz)
    doomed = [n for n in names if n not in kept]
    return sorted(doomed, key=lambda n: (archive_time(n) or datetime.datetime.min.replace(tzinfo=datetime.timezone.utc), n))
