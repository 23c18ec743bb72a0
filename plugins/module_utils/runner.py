# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""One backup run (seed step 4): lock -> sources -> build the .sar in staging ->
deliver to every target in parallel -> verify -> retention -> status -> clean up.

The same code runs inside `sar.backup.sar_backup_run` and behind the
`sar-backup run` command that timers call."""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from . import errors, hooks, ping, report, schedule, signing, sources
from .archive import SPOOL_PART, ArchiveWriter, archive_name, archive_pattern, new_manifest, partial_name
from .errors import LockBusy, MissingLibrary, SarError, SourceError, TargetError
from .fsutil import clean_staging, short_hostname
from .lock import MaintenanceLock, acquire_scheduled
from .targets import target_class, types as target_types
from .targets.base import TargetContext

VERSION = "0.1.0"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone().isoformat(timespec="seconds")


class Run:
    """Holds what one run needs; `execute()` or `dry_run()` returns the result dict."""

    def __init__(self, job: dict, store, *, wait: float = 0, scheduled: bool = False,
                 keep_archive: bool = False, log=None, describe_missing=None, now=None, progress=None,
                 wait_option: str = "wait"):
        self.job = job
        self.store = store
        self.settings = store.settings()
        self.wait = wait
        self.scheduled = scheduled
        self.keep_archive = keep_archive
        self.log_func = log
        # progress(phase, bytes_done, bytes_total): the CLI draws it on a terminal.
        self.progress = progress
        # Adapters turn a missing library into their own wording (Ansible's).
        self.describe_missing = describe_missing or str
        self.host = short_hostname()
        self.started = now or _now()
        self.targets = []
        self.wait_option = wait_option
        self.before_results = []
        self.start_warnings = []

    # -- helpers -----------------------------------------------------------
    def log(self, msg: str) -> None:
        if self.log_func:
            self.log_func(msg)

    def context(self, check_mode: bool = False) -> TargetContext:
        return TargetContext(job=self.job["name"], host=self.host, config_dir=self.store.config_dir,
                             settings=self.settings, log=self.log_func, check_mode=check_mode)

    def target_entry(self, index: int, options: dict) -> dict:
        entry = {"index": index, "type": options["type"], "location": None, "status": "failed",
                 "code": errors.FAILED, "bytes": 0, "seconds": 0.0, "error": None, "pruned": []}
        try:
            target = target_class(options["type"])(options, self.context())
            entry["location"] = target.location()
            entry["tag"] = target_types.tag(options["type"])
        except Exception as exc:  # a broken target must not break the others
            entry["error"] = str(exc)
        return entry

    def result(self, code: str, archive=None, targets=None, error=None, **extra) -> dict:
        finished = _now()
        res = {
            "job": self.job["name"],
            "interval": self.job.get("interval"),
            "host": self.host,
            "started": _iso(self.started),
            "started_epoch_ms": int(self.started.timestamp() * 1000),
            "finished": _iso(finished),
            "duration": round((finished - self.started).total_seconds(), 3),
            "code": code,
            "success": code == errors.SUCCESSFUL,
            "archive": archive,
            "targets": targets if targets is not None else [],
            "error": error,
        }
        res.update(extra)
        if self.before_results and "hooks" not in extra:
            res["hooks"] = list(self.before_results)
        if self.start_warnings:
            res["warnings"] = list(self.start_warnings)
        return res

    def all_failed(self, code: str, message: str) -> list:
        out = []
        for index, options in enumerate(self.job["targets"]):
            entry = self.target_entry(index, options)
            entry.update(code=code, error=message, status="failed")
            out.append(entry)
        return out

    def fail(self, exc: SarError, archive=None) -> dict:
        res = self.result(exc.code, archive=archive, targets=self.all_failed(exc.code, str(exc)), error=str(exc))
        self.finish(res)
        return res

    def hook_env(self, stage: str, res: dict | None = None) -> dict:
        archive = (res or {}).get("archive") or {}
        return hooks.environment(self.job["name"], stage, self.store.config_dir,
                                 code=(res or {}).get("code") if res else None,
                                 archive=archive.get("path") or archive.get("name"))

    def after_hooks(self, res: dict) -> None:
        """`after` on success, `on_failure` otherwise; they never change the run's code (a deferral is not an end)."""
        if not self.job.get("hooks") or res.get("code") in (errors.DEFERRED, errors.NOT_DUE):
            return
        stage = "after" if res.get("code") == errors.SUCCESSFUL else "on_failure"
        ran = hooks.run_stage(self.job["hooks"], stage, self.hook_env(stage, res), log=self.log_func)
        res.setdefault("hooks", []).extend(ran)
        for entry in ran:
            if entry["error"]:
                res.setdefault("warnings", []).append("%s hook %d (%s) %s" % (stage, entry["index"], entry["command"],
                                                                              entry["error"]))

    def finish(self, res: dict) -> None:
        """Hooks after the run, the report mail, then status file and metrics after every real run; none of
        them may turn a run's result into something else. The mail goes first so that a relay refusing it is
        in the status file's warnings (a timer's run has no one reading its output)."""
        self.after_hooks(res)
        warnings = res.setdefault("warnings", [])
        res.setdefault("public_key", signing.host_public_key(self.store.config_dir))
        if res.get("code") not in (errors.DEFERRED, errors.NOT_DUE):
            problem = ping.send(self.job.get("ping"), "success" if res.get("code") == errors.SUCCESSFUL else "failure", res)
            if problem:
                warnings.append(problem)
        if report.wants_mail(self.job, res):
            try:
                report.mail_report(self.settings, self.job, res)
                res["report_sent"] = True
            except SarError as exc:
                res["report_sent"] = False
                warnings.append("could not mail the report to %s: %s" % (", ".join(self.job["report_to"]), exc))
        path = report.record(self.settings, self.store, self.job["name"], report.write_status, res, warnings)
        if path:
            res["status_path"] = path

    # -- the run -------------------------------------------------------------
    def execute(self) -> dict:
        if self.scheduled and not schedule.is_due(self.job):
            msg = "job %s is not due yet: its first start is %s" % (self.job["name"], self.job["start"])
            self.log(msg)
            return self.result(errors.NOT_DUE, error=msg, targets=[])
        lock = MaintenanceLock(self.settings["lock_path"], wait_option=self.wait_option)
        try:
            if self.scheduled:
                acquire_scheduled(lock, self.job["defer"], self.job["retries"], on_defer=self.on_defer)
            else:
                lock.acquire(wait=self.wait)
        except LockBusy as exc:
            return self.fail(exc)
        try:
            return self.locked_run()
        finally:
            lock.release()

    def on_defer(self, attempt: int, retries: int, defer: int) -> None:
        msg = ("maintenance lock taken (archiving or another backup): deferred %d/%d, next try in %ds"
               % (attempt, retries, defer))
        self.log(msg)
        res = self.result(errors.DEFERRED, targets=self.all_failed(errors.DEFERRED, msg), error=msg)
        self.finish(res)

    def staging_root(self) -> str:
        root = self.settings["staging_dir"]
        os.makedirs(root, mode=0o700, exist_ok=True)
        return root

    def clean_stale_staging(self, root: str) -> None:
        """Remove what killed runs, restores and drills (of any job) left in staging, and this job's
        kept copy. Safe: we hold the maintenance lock, and only its holder works in staging."""
        clean_staging(root, log=self.log_func, kept_copy=archive_pattern(self.job["name"]))

    def unique_start(self) -> None:
        """Archive names carry the start to the second: a run starting in the same second as this job's
        previous one (we hold the lock, so that run has finished) waits for the next second, so its
        archive never replaces the previous one."""
        try:
            previous = ((report.read_status(self.settings, self.job["name"]) or {}).get("archive") or {}).get("name")
        except SarError:
            previous = None
        while previous and archive_name(self.job["name"], self.host, self.started) == previous:
            time.sleep(1.0 - self.started.microsecond / 1e6 + 0.01)
            self.started = _now()

    def before_hooks(self):
        """Run the `before` hooks; the first that fails fails the run (hookFailed), nothing is built."""
        if not (self.job.get("hooks") or {}).get("before"):
            return None
        ran = hooks.run_stage(self.job["hooks"], "before", self.hook_env("before"), log=self.log_func,
                              stop_on_failure=True)
        failed = [r for r in ran if r["error"]]
        if not failed:
            self.before_results = ran
            return None
        bad = failed[0]
        msg = "before hook %d (%s) %s; nothing was backed up" % (bad["index"], bad["command"], bad["error"])
        res = self.result(errors.HOOK_FAILED, targets=self.all_failed(errors.HOOK_FAILED, msg), error=msg, hooks=ran)
        self.finish(res)
        return res

    def locked_run(self) -> dict:
        self.unique_start()
        problem = ping.send(self.job.get("ping"), "start")
        if problem:
            self.start_warnings.append(problem)
        refused = self.before_hooks()
        if refused is not None:
            return refused
        job = self.job
        profile = self.settings["profile"]
        try:
            plan = sources.plan(job["data"], profile)
            sources.check(plan, profile)
            estimate = sources.estimate(plan, profile, spool_part=SPOOL_PART)
            staging = self.staging_root()
            self.clean_stale_staging(staging)
            free = shutil.disk_usage(staging).free
            need = estimate + int(self.settings.get("min_free_space", 0))
            if free < need:
                raise SarError("staging directory %s has %d bytes free, the backup needs about %d"
                               % (staging, free, need), errors.DISK_FULL)
        except SarError as exc:
            return self.fail(exc)
        except OSError as exc:
            return self.fail(SarError("staging directory: %s" % exc, errors.DISK_FULL))

        workdir = tempfile.mkdtemp(prefix=".%s-" % job["name"], dir=staging)
        name = archive_name(job["name"], self.host, self.started)
        path = os.path.join(workdir, name)
        try:
            try:
                info = self.build(path, plan, workdir)
            except SarError as exc:
                return self.fail(exc)
            except OSError as exc:
                code = errors.DISK_FULL if exc.errno == 28 else errors.SOURCE_FAILED
                return self.fail(SarError("building the archive failed: %s" % exc, code))
            archive = {"name": name, "size": info["size"], "sha256": info["sha256"],
                       "created": _iso(self.started), "path": None, "signed_by": info["signer"]}
            targets = self.deliver(path, archive)
            failed = [t for t in targets if t["status"] != "ok"]
            local_copy = next((t.get("local_path") for t in targets if t.get("local_path") and t["status"] == "ok"), None)
            if local_copy:
                archive["path"] = local_copy
            elif self.keep_archive and not failed:
                kept = os.path.join(self.staging_root(), name)
                os.replace(path, kept)
                archive["path"] = kept
                archive["temporary"] = True
            for entry in targets:
                entry.pop("local_path", None)
            code = failed[0]["code"] if failed else errors.SUCCESSFUL
            error = None
            if failed:
                error = "; ".join("target %d (%s %s): %s" % (t["index"], t["type"], t["location"] or "", t["error"])
                                  for t in failed)
            res = self.result(code, archive=archive, targets=targets, error=error, sources=self.source_report(plan))
            self.finish(res)
            return res
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def source_report(self, plan) -> list:
        out = []
        for src in plan:
            entry = {"category": src.category, "kind": src.kind, "origin": src.origin, "member": src.member,
                     "size": src.size, "files": src.files}
            if src.rows is not None:
                entry["rows"] = dict(src.rows)  # per table, in the dump's own snapshot: what a drill checks
            out.append(entry)
        return out

    def manifest(self, plan) -> dict:
        job = self.job
        return new_manifest(job=job["name"], host=self.host, created=_iso(self.started), categories=job["data"],
                            compression=job["compression"], encryption=job.get("encryption"),
                            sources=self.source_report(plan), tool="sar-backup %s" % VERSION)

    def signer(self):
        """The host's signing key (made on the first run): every archive says which host made it."""
        try:
            return signing.load_or_create(self.store.config_dir)
        except OSError as exc:
            raise SarError("cannot create the signing key in %s: %s" % (self.store.config_dir, exc.strerror or exc))

    def build(self, path: str, plan, workdir: str) -> dict:
        """Dump the databases into `workdir` and build the archive at `path`.

        The file trees are compressed while the dumps run (ArchiveWriter.spool_tree, on a thread of
        its own): the manifest comes first in the archive and needs the dumps' sizes, but the trees
        need no dump. Once the dumps are done, the archive is written in the sources' order, each
        spooled tree copied in as the compressed bytes it already is."""
        # Built under a partial name, renamed when complete: a killed run never
        # leaves a truncated file under a .sar name, not even in staging.
        building = os.path.join(os.path.dirname(path), partial_name(os.path.basename(path)))
        profile = self.settings["profile"]
        signer = self.signer()
        dumps = [src for src in plan if src.kind == sources.KIND_DB]
        trees = [src for src in plan if src.kind != sources.KIND_DB]
        self.log("dumping database and measuring file trees")
        sources.measure_trees(plan)
        tick = None
        # bytes archived, of how many (the trees' now, the dumps' once they are done)
        done, total = [0], [sum(src.size or 0 for src in trees)]
        if self.progress:
            ticking = threading.Lock()

            def tick(increment):
                with ticking:
                    done[0] += increment
                    self.progress("archive", done[0], total[0])
        writer = ArchiveWriter(building, compression=self.job["compression"], encryption=self.job.get("encryption"),
                               signer=signer)
        try:
            if dumps and trees:
                writer.plan(self.manifest(plan))
                spool = _Spool(writer, trees, tick)
                try:
                    sources.prepare(plan, profile, workdir, log=self.log_func, measure=False)
                except BaseException:
                    writer.cancel()
                    spool.join()
                    raise
                spool.join()
                spool.check()
            else:
                sources.prepare(plan, profile, workdir, log=self.log_func, measure=False)
            total[0] += sum(src.size or 0 for src in dumps)
            self.log("building %s" % os.path.basename(path))
            writer.add_manifest(self.manifest(plan))
            for src in plan:
                if src.kind == sources.KIND_DB:
                    writer.add_file(src.member, src.local_path, progress=tick)
                    os.unlink(src.local_path)  # free staging space early
                elif dumps:
                    writer.add_spooled(src.member)
                else:
                    writer.add_tree(src.member, src.origin, progress=tick)
            info = dict(writer.close())
            os.replace(building, path)
        except BaseException:
            writer.abort()
            raise
        info["path"] = path
        info["signer"] = signer.public_key
        return info

    def deliver_one(self, index: int, options: dict, path: str, archive: dict) -> dict:
        entry = self.target_entry(index, options)
        if entry["error"]:
            return entry
        begin = time.monotonic()
        target = None
        try:
            target = target_class(options["type"])(options, self.context())
            outcome = target.deliver(path, archive["name"], archive["size"], archive["sha256"])
            entry.update(status="ok", code=errors.SUCCESSFUL, bytes=outcome.get("bytes", archive["size"]),
                         pruned=outcome.get("pruned", []))
            kept_at = getattr(target, "local_path", None)
            if kept_at is not None and kept_at(archive["name"]):  # None: not readable after the run (usb)
                entry["local_path"] = kept_at(archive["name"])
        except MissingLibrary as exc:
            entry.update(code=exc.code, error=self.describe_missing(exc))
        except SarError as exc:
            entry.update(code=exc.code, error=str(exc))
        except Exception as exc:  # pylint: disable=broad-except
            entry.update(code=errors.FAILED, error="unexpected %s: %s" % (type(exc).__name__, exc))
        entry["seconds"] = round(time.monotonic() - begin, 3)
        self.log("target %d %s %s: %s%s" % (index, entry["type"], entry["location"], entry["code"],
                                            (" (%s)" % entry["error"]) if entry["error"] else ""))
        return entry

    def deliver(self, path: str, archive: dict) -> list:
        targets = self.job["targets"]
        with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
            futures = [pool.submit(self.deliver_one, i, opts, path, archive) for i, opts in enumerate(targets)]
            return [f.result() for f in futures]

    # -- check mode ----------------------------------------------------------
    def dry_run(self) -> dict:
        """Resolve sources, estimate the size, log in to every target; write nothing."""
        job = self.job
        profile = self.settings["profile"]
        lock_free = True
        lock = MaintenanceLock(self.settings["lock_path"])
        try:
            lock.acquire(wait=0)
            lock.release()
        except (LockBusy, OSError):
            lock_free = False
        try:
            plan = sources.plan(job["data"], profile)
            sources.check(plan, profile)
            estimate = sources.estimate(plan, profile, spool_part=SPOOL_PART)
        except SourceError as exc:
            return self.result(exc.code, targets=self.all_failed(exc.code, str(exc)), error=str(exc),
                               lock_free=lock_free)

        name = archive_name(job["name"], self.host, self.started)

        def check_one(index, options):
            entry = self.target_entry(index, options)
            if entry["error"]:
                return entry
            begin = time.monotonic()
            try:
                entry["would_prune"] = target_class(options["type"])(options, self.context(check_mode=True)).check(name)
                entry.update(status="ok", code=errors.SUCCESSFUL)
            except MissingLibrary as exc:
                entry.update(code=exc.code, error=self.describe_missing(exc))
            except SarError as exc:
                entry.update(code=exc.code, error=str(exc))
            except Exception as exc:  # pylint: disable=broad-except
                entry.update(code=errors.FAILED, error="unexpected %s: %s" % (type(exc).__name__, exc))
            entry["seconds"] = round(time.monotonic() - begin, 3)
            return entry

        with ThreadPoolExecutor(max_workers=max(1, len(job["targets"]))) as pool:
            entries = [f.result() for f in [pool.submit(check_one, i, o) for i, o in enumerate(job["targets"])]]
        failed = [t for t in entries if t["status"] != "ok"]
        code = failed[0]["code"] if failed else errors.SUCCESSFUL
        return self.result(code, targets=entries, archive={"name": name, "size": None, "sha256": None,
                                                           "created": None, "path": None},
                           estimated_size=estimate, lock_free=lock_free,
                           error="; ".join("target %d: %s" % (t["index"], t["error"]) for t in failed) or None,
                           sources=self.source_report(plan))


class _Spool:
    """The file trees of a run compressed on a thread of their own (ArchiveWriter.spool_tree) while
    the database dumps run; join() waits, check() raises what stopped it."""

    def __init__(self, writer: ArchiveWriter, trees: list, tick):
        self.writer, self.trees, self.tick = writer, trees, tick
        self.error = None
        self.thread = threading.Thread(target=self._work, name="sar-spool", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        try:
            for src in self.trees:
                self.writer.spool_tree(src.member, src.origin, progress=self.tick)
        except BaseException as exc:  # pylint: disable=broad-except  # raised on the run's thread by check()
            self.error = exc

    def join(self) -> None:
        self.thread.join()

    def check(self) -> None:
        if self.error is not None:
            raise self.error


def run_job(job: dict, store, **kwargs) -> dict:
    return Run(job, store, **kwargs).execute()


def dry_run_job(job: dict, store, **kwargs) -> dict:
    return Run(job, store, **kwargs).dry_run()


__all__ = ["Run", "run_job", "dry_run_job", "archive_name", "TargetError"]
