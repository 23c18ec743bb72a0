# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""What `sar_backup_info` reports (SPEC sections 6 and 9): the saved jobs
(secrets masked), their schedule and last run, and optionally the archives
present on every target of every job. Reads only; never writes anything."""

from __future__ import annotations

import datetime
import re
from concurrent.futures import ThreadPoolExecutor

from . import errors, report, schedule, signing, targets
from .errors import MissingLibrary, SarError, ValidationError
from .fsutil import short_hostname
from .job import mask, validate_job, validate_name

# The UTC time an archive name carries: <job>_<host>_<YYYYMMDDTHHMMSSZ>.sar
_NAME_TIME = re.compile(r"_(\d{8}T\d{6}Z)\.sar$")
# Targets are contacted in parallel (a slow or dead server must not add up), within reason.
MAX_PARALLEL = 8


def selected_names(store, names=None) -> list:
    """The saved jobs to report on: all (sorted; also for an empty list) or those
    named, in the given order without duplicates. A name that is not a saved
    job is an error."""
    saved = store.job_names()
    if not names:
        return saved
    if isinstance(names, str):
        names = [names]
    out = []
    for name in names:
        validate_name(name)  # no path tricks: the name becomes a file name
        if name not in saved:
            raise ValidationError("name", "no job named %r in %s (saved jobs: %s)"
                                  % (name, store.jobs_dir, ", ".join(saved) or "none"))
        if name not in out:
            out.append(name)
    return out


def _load(store, name: str):
    """(job, error): the validated job, or None and why it cannot be used."""
    try:
        stored = store.read_job(name)
        if stored is None:  # removed between listing and reading
            raise SarError("job file %s disappeared" % store.job_path(name))
        return validate_job(stored), None
    except ValidationError as exc:
        return None, "job file %s is invalid: %s" % (store.job_path(name), exc)
    except SarError as exc:
        return None, str(exc)


def schedule_info(job: dict) -> dict:
    """on_calendar and next_runs of the job's runs; `drill`: the same for its restore drills (the role writes
    sar-backup-drill-<job>.timer from it; empty lists for a job without a scheduled drill)."""
    drill = job.get("drill") or {}
    drill_job = {"interval": drill.get("interval") or "manual", "start": drill.get("start")}
    return {
        "on_calendar": schedule.on_calendar(job),
        "next_runs": [schedule.iso(t) for t in schedule.next_runs(job, 3)],
        "drill": {
            "on_calendar": schedule.on_calendar(drill_job),
            "next_runs": [schedule.iso(t) for t in schedule.next_runs(drill_job, 3)],
        },
    }


def host_key_info(store) -> dict:
    """The host's archive signing key (public half) and its fingerprint; nulls before the first backup."""
    key = signing.host_public_key(store.config_dir)
    return {"public_key": key,
            "public_key_fingerprint": signing.fingerprint(signing.parse_public_key(key)) if key else None}


def jobs_info(store, names=None) -> list:
    """One entry per job: {name, job (masked), schedule, last_run}.

    A job file that cannot be read or fails validation does not hide the
    others: its entry has job and schedule null and an `error` (never the
    file's content: it may hold secrets). A status file that cannot be read
    gives last_run null and an `error` as well."""
    settings = store.settings()
    out = []
    for name in selected_names(store, names):
        job, error = _load(store, name)
        entry = {"name": name, "job": None, "schedule": None, "last_run": None}
        if job is not None:
            entry["job"] = mask(job)
            entry["schedule"] = schedule_info(job)
        try:
            entry["last_run"] = report.read_status(settings, name)
        except SarError as exc:
            error = "; ".join(e for e in (error, str(exc)) if e)
        if error:
            entry["error"] = error
        out.append(entry)
    return out


def created_of(name: str, mtime) -> str:
    """ISO 8601 (local time, with UTC offset) of an archive: the UTC time in
    its name, else the file's modification time."""
    match = _NAME_TIME.search(name)
    moment = None
    if match:
        try:
            moment = datetime.datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
        except ValueError:
            moment = None  # e.g. month 13: not a time we wrote
    if moment is None:
        moment = datetime.datetime.fromtimestamp(float(mtime or 0), datetime.timezone.utc)
    return moment.astimezone().isoformat(timespec="seconds")


def _sort_key(entry: dict):
    return datetime.datetime.fromisoformat(entry["created"]).timestamp()


def _list_target(job: dict, index: int, store, settings: dict, host: str, log, describe_missing):
    """(archives, None) or ([], unreachable entry) for one target of a job."""
    options = job["targets"][index]
    place = {"job": job["name"], "target": index, "type": options["type"], "location": None}
    target = None
    try:
        target = targets.job_target(job, index, store.config_dir, settings, host, log)
        place["location"] = target.location()
        target.connect()
        found = target.archives()
    except MissingLibrary as exc:
        return [], dict(place, code=exc.code, error=describe_missing(exc))
    except SarError as exc:
        return [], dict(place, code=exc.code, error=str(exc))
    except OSError as exc:
        return [], dict(place, code=errors.FAILED, error="%s: %s" % (place["location"] or options["type"], exc))
    except Exception as exc:  # pylint: disable=broad-except
        # One broken target must not hide the others (as in a run).
        return [], dict(place, code=errors.FAILED, error="unexpected %s: %s" % (type(exc).__name__, exc))
    finally:
        if target is not None:
            try:
                target.close()
            except Exception:  # pylint: disable=broad-except
                pass  # close() must not raise; if it does, the listing still stands
    rows = [dict(place, name=f.name, size=int(f.size), created=created_of(f.name, f.mtime)) for f in found]
    return rows, None


def archives_info(store, names=None, log=None, describe_missing=None) -> tuple:
    """(archives, unreachable) over every target of the selected jobs.

    archives: {job, target (index), type, location, name, size, created}, newest
    first. unreachable: {job, target, type, location, code, error} for each
    target that could not be listed (not reachable, refused, library missing).
    Jobs whose file is invalid are skipped here (jobs_info reports them).
    `describe_missing` turns a MissingLibrary into the caller's wording."""
    describe_missing = describe_missing or str
    settings = store.settings()
    host = short_hostname()
    work = []
    for name in selected_names(store, names):
        job, _error = _load(store, name)
        if job is None:
            continue
        for index in range(len(job["targets"])):
            work.append((job, index))
    archives, unreachable = [], []
    if not work:
        return archives, unreachable
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(work))) as pool:
        futures = [pool.submit(_list_target, job, index, store, settings, host, log, describe_missing)
                   for job, index in work]
        for future in futures:
            rows, failure = future.result()
            archives.extend(rows)
            if failure:
                unreachable.append(failure)
    # Newest first; equal times in a stable, readable order.
    archives.sort(key=lambda e: (e["job"], e["target"], e["name"]))
    archives.sort(key=_sort_key, reverse=True)
    return archives, unreachable
