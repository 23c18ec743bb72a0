# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""`sar-backup`: the command timers run on the appliance (no Ansible needed).

    sar-backup [--config-dir DIR] run JOB [--scheduled] [--wait D]
    sar-backup [--config-dir DIR] list [JOB ...] [--archives] [--format text|json]
    sar-backup [--config-dir DIR] verify FILE [--passphrase-file F | --identity F]
    sar-backup [--config-dir DIR] restore (FILE | --job J [--target N] [--archive NAME|latest])
               [--data CAT ...] [--verify-only | --dry-run | --yes] [--wait D] [--passphrase-file F | --identity F]
    sar-backup [--config-dir DIR] status [--job J] [--warn 26h] [--crit 50h] [--format text|json|checkmk]
    sar-backup [--config-dir DIR] metrics
    sar-backup [--config-dir DIR] crash-report JOB [--unit U] [--drill]

The installed wrapper calls main() and exits with what it returns.

Exit codes: run 0 success (or not due yet), 1 the run failed, 2 bad usage or
configuration; list 0, or 1 when a target's archives could not be listed;
verify 0 intact, 1 corrupt or unreadable, 2 usage; restore 0 restored (or,
with --dry-run/--verify-only, would be / is intact), 1 failed (nothing
changed), 2 bad usage; status 0/1/2/3 as Nagios (OK/WARNING/CRITICAL/UNKNOWN).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

from . import errors, report
from .errors import ArchiveError, DecryptKeyError, SarError, TrustError, ValidationError
from .fsutil import format_size, parse_duration, short_hostname
from .runner import VERSION, run_job
from .store import Store, effective_metrics_path
from .targets import job_target

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def out(text: str) -> None:
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    sys.stderr.write(text + "\n")


class Console:
    """Phase lines: on a terminal with times and a live progress line (bytes,
    rate, ETA) for people; under systemd plain lines the journal timestamps."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.began = time.monotonic()
        self.phase_began = None
        self.drawn = 0.0
        self.live = False

    def __call__(self, msg: str) -> None:
        self._end_live()
        if self.tty:
            self.stream.write("[%6.1fs] %s\n" % (time.monotonic() - self.began, msg))
        else:
            self.stream.write("%s\n" % msg)
        self.stream.flush()

    def progress(self, phase: str, done: int, total) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if self.phase_began is None:
            self.phase_began = now
        if now - self.drawn < 0.2 and not (total and done >= total):
            return
        self.drawn = now
        rate = done / max(now - self.phase_began, 1e-6)
        line = "  %s: %s" % (phase, format_size(done, "MB"))
        if total:
            eta = max(total - done, 0) / rate if rate else 0
            line += " / %s (%3d%%)  ETA %d:%02d" % (format_size(total, "MB"), min(100, done * 100 // max(total, 1)), eta // 60, eta % 60)
        line += "  %s/s" % format_size(rate, "MB")
        self.stream.write("\r" + line.ljust(78))
        self.stream.flush()
        self.live = True

    def _end_live(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.live = False
            self.phase_began = None


def _read_secret_file(path):
    if not path:
        return None
    with open(path, "r", encoding="utf-8") as handle:
        return handle.read().strip()


def cmd_run(store: Store, args) -> int:
    job = store.load_job(args.job)
    console = Console()
    result = run_job(job, store, wait=parse_duration(args.wait, "--wait"), scheduled=args.scheduled, log=console,
                     progress=console.progress, wait_option="--wait")
    code = result["code"]
    archive = result.get("archive") or {}
    if code == errors.NOT_DUE:
        console(result.get("error") or "not due")
        return EXIT_OK
    console("%s: %s%s" % (job["name"], code, (" - %s" % result["error"]) if result.get("error") else ""))
    for warning in result.get("warnings") or []:
        console("warning: %s" % warning)
    if archive.get("name"):
        console("archive %s, %d bytes, sha256 %s" % (archive["name"], archive.get("size") or 0, archive.get("sha256")))
    return EXIT_OK if code == errors.SUCCESSFUL else EXIT_FAILED


def cmd_list(store: Store, args) -> int:
    from . import info  # local: only list needs it (a timer's run does not load it)
    rows = info.jobs_info(store, args.job)
    found, unreachable = info.archives_info(store, args.job, log=None) if args.archives else ([], [])
    if args.format == "json":
        data = dict(info.host_key_info(store), jobs=rows)
        if args.archives:
            data.update(archives=found, unreachable_targets=unreachable)
        out(json.dumps(data, indent=2))  # the shape sar_backup_info returns
        return EXIT_FAILED if unreachable else EXIT_OK
    if not rows:
        out("no jobs in %s" % store.jobs_dir)
    for row in rows:
        job, last = row["job"], row["last_run"] or {}
        if job is None:
            out("%-24s INVALID: %s" % (row["name"], row.get("error")))
            continue
        out("%-24s %-8s next %-26s last %s %s" % (
            row["name"], job["interval"], (row["schedule"]["next_runs"] or ["-"])[0], last.get("code", "never"),
            last.get("finished", "")))
        for i, target in enumerate(job["targets"]):
            out("    %d. %s" % (i, target["type"]))
            for entry in (e for e in found if e["job"] == row["name"] and e["target"] == i):
                out("         %s  %12d bytes  %s" % (entry["name"], entry["size"], entry["created"]))
            for entry in (e for e in unreachable if e["job"] == row["name"] and e["target"] == i):
                out("         cannot list archives (%s): %s" % (entry["code"], entry["error"]))
    return EXIT_FAILED if unreachable else EXIT_OK


def _trusted_keys(args) -> list:
    """--trusted-key KEY (repeatable) and --trusted-keys-file FILE (one key a line, # comments)."""
    keys = list(args.trusted_key or [])
    if args.trusted_keys_file:
        try:
            with open(args.trusted_keys_file, "r", encoding="utf-8") as handle:
                text = handle.read(1024 * 1024)
        except OSError as exc:
            raise ValidationError("--trusted-keys-file", "cannot read %s: %s" % (args.trusted_keys_file, exc.strerror or exc))
        keys += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return keys


def cmd_verify(store: Store, args) -> int:
    """The checks a restore makes before it changes anything (same code: Restore with verify_only)."""
    from .restore import Restore  # local: a timer's run does not load the restore code
    try:
        result = Restore(store, path=args.file, passphrase=_read_secret_file(args.passphrase_file),
                         identities=_identities(args.identity), verify_only=True, trust=args.trust,
                         trusted_keys=_trusted_keys(args)).execute()
    except TrustError as exc:
        out("UNTRUSTED %s: %s" % (args.file, exc))
        return EXIT_FAILED
    except DecryptKeyError as exc:
        out("ENCRYPTED %s: %s" % (args.file, exc))
        return EXIT_FAILED
    except ArchiveError as exc:  # damage only: a missing file, key or trust is said as such
        out("CORRUPT %s: %s" % (args.file, exc))
        return EXIT_FAILED
    except ValidationError:
        raise
    except SarError as exc:
        out("REFUSED %s: %s" % (args.file, exc))
        return EXIT_FAILED
    info = result["archive"]
    sig = info.get("signature") or {}
    out("OK %s: %d members verified, job %s from %s at %s, sha256 %s, %s" % (
        args.file, result["members"], info.get("job"), info.get("host"), info.get("created"), info["sha256"],
        ("signed by %s (%s)" % (sig.get("fingerprint"), sig.get("trusted_by"))) if sig.get("signed")
        else "not signed (trust: any)"))
    return EXIT_OK


def _identities(path):
    if not path:
        return None
    from .restore import parse_identities  # local, as Restore
    with open(path, "r", encoding="utf-8") as handle:
        return parse_identities(handle.read())


def cmd_restore(store: Store, args) -> int:
    if bool(args.file) == bool(args.job):
        raise ValidationError("FILE", "give an archive file or --job (with --target and --archive)")
    if not (args.yes or args.dry_run or args.verify_only):
        raise ValidationError("--yes", "a restore replaces the archived categories' database tables and file trees "
                              "on this appliance; add --yes to do it, or --dry-run to see what it would restore")
    from .restore import Restore  # local: a timer's run does not load the restore code
    console = Console()
    result = Restore(store, path=args.file, job=args.job, target=args.target, archive_name=args.archive,
                     data=args.data, passphrase=_read_secret_file(args.passphrase_file),
                     identities=_identities(args.identity), verify_only=args.verify_only, check_mode=args.dry_run,
                     wait=parse_duration(args.wait, "--wait"), log=console, trust=args.trust,
                     trusted_keys=_trusted_keys(args), scratch_dir=args.scratch_dir, wait_option="--wait").execute()
    info = result["archive"]
    out("OK %s: verified (%d bytes, sha256 %s), job %s from %s at %s" % (
        info["name"], info["size"], info["sha256"], info["job"], info["host"], info["created"]))
    verb = "would restore" if args.dry_run else "restored"
    for entry in result["restored"]:
        out("  %s %s: %s %s (%s bytes)" % (verb, entry["category"], entry["kind"], entry["origin"], entry["size"]))
    if result.get("scratch_dir"):
        out("  into the scratch directory %s: the appliance's data was not touched" % result["scratch_dir"])
    return EXIT_OK


def _intervals(store: Store, names: list) -> dict:
    """The jobs' current intervals (a job file that cannot be read: the status file's, if any)."""
    out = {}
    for name in names:
        try:
            out[name] = store.load_job(name)["interval"]
        except SarError:
            pass
    return out


def cmd_drill(store: Store, args) -> int:
    """A restore drill of the job's newest archive into isolation (drill.py)."""
    from .drill import run_drill  # local: only drills need it
    console = Console()
    drill = run_drill(store, args.job, target=args.target, scheduled=args.scheduled,
                      wait=parse_duration(args.wait, "--wait"), log=console, wait_option="--wait",
                      passphrase=_read_secret_file(args.passphrase_file), identities=_identities(args.identity),
                      trusted_keys=_trusted_keys(args), trust=args.trust)
    archive = drill.get("archive") or {}
    checks = drill.get("checks") or {}
    out("%s %s: restore drill from target %s of %s: %d table(s) and %d file(s) checked%s" % (
        "OK" if drill["success"] else "FAILED", drill["job"], drill.get("target"), archive.get("name") or "-",
        checks.get("tables", 0), checks.get("files", 0), (" - %s (%s)" % (drill["error"], drill["code"]))
        if drill.get("error") else ""))
    if drill.get("isolation"):
        out("  database isolation: %s" % {"scratch_database": "a scratch database %s on the profile's server"
                                          % drill.get("database"),
                                          "private_cluster": "a private temporary PostgreSQL cluster"}.get(
            drill["isolation"], drill["isolation"]))
    for table in drill.get("tables") or []:
        out("  table %-40s %10s rows%s" % (table["table"], table["rows"], "" if table["ok"] else "  <- %s" % table["problem"]))
    for tree in drill.get("trees") or []:
        out("  tree  %-40s %10d files %12d bytes%s" % (tree["member"], tree["files"], tree["bytes"],
                                                       "" if tree["ok"] else "  <- %s" % tree["problem"]))
    return EXIT_OK if drill["success"] else EXIT_FAILED


def _drill_intervals(store: Store, names: list) -> dict:
    out = {}
    for name in names:
        try:
            drill = store.load_job(name).get("drill")
        except SarError:
            continue
        if drill:
            out[name] = drill["interval"]
    return out


def cmd_status(store: Store, args) -> int:
    try:
        settings = store.settings()
        names = list(args.jobs or []) + ([args.job] if args.job else [])
        names = names or store.job_names()
        statuses = report.all_statuses(settings, names)
    except SarError as exc:
        out("UNKNOWN - %s" % exc)
        return 3
    if args.format == "checkmk":
        sys.stdout.write(report.checkmk_section(statuses))
        return EXIT_OK
    warn, crit = parse_duration(args.warn, "--warn"), parse_duration(args.crit, "--crit")
    intervals = _intervals(store, names)
    drills = _drill_intervals(store, names)
    if args.format == "checkmk-local":
        sys.stdout.write(report.checkmk_local(statuses, warn, crit, time.time(), intervals, drills))
        return EXIT_OK
    code, text = report.nagios_status(statuses, warn, crit, time.time(), intervals, drills)
    if args.format == "json":
        out(json.dumps({"exit": code, "summary": text, "jobs": statuses}, indent=2))
    else:
        out(text)
    return code


def cmd_metrics(store: Store, args) -> int:
    del args
    settings = store.settings()
    report.write_metrics(settings, store.job_names(), effective_metrics_path(settings))
    return EXIT_OK


def _reported_by_runner(env) -> bool:
    """Whether the failed service was a run that failed and said so itself (exit 1: status file
    written, report mailed). systemd >= 251 tells OnFailure= units how the service ended; without
    that, assume the worst (a duplicate mail beats a crash nobody hears of)."""
    return env.get("MONITOR_SERVICE_RESULT") == "exit-code" and env.get("MONITOR_EXIT_STATUS") == str(EXIT_FAILED)


def cmd_crash_report(store: Store, args) -> int:
    """OnFailure= hook: the runner died without reporting (killed, crashed, out of memory, bad
    configuration). Records it in the job's status file and the metrics, so monitoring sees a
    failed run and not the last success, and mails the job's report_to. With --drill, the same
    for a restore drill: `last_drill` says failed (the last successful drill is kept)."""
    what = "drill" if args.drill else "run"
    unit = args.unit or ("sar-backup-drill@%s.service" if args.drill else "sar-backup@%s.service") % args.job
    if _reported_by_runner(os.environ):
        out("%s: the %s failed and reported it itself; nothing to add" % (unit, what))
        return EXIT_OK
    settings = store.settings()
    job = store.load_job(args.job)
    how = os.environ.get("MONITOR_SERVICE_RESULT")
    how = "ended with %s (exit status %s)" % (how, os.environ.get("MONITOR_EXIT_STATUS", "?")) if how \
        else "stopped without reporting (killed or crashed)"
    msg = "the %s service %s %s; see journalctl -u %s" % ("restore drill" if args.drill else "backup", unit, how, unit)
    now = datetime.datetime.now(datetime.timezone.utc)
    if args.drill:
        from .drill import drill_record  # local: only drills need it
        result = drill_record(job, now, errors.FAILED, None, msg, crash=True)
        report.record(settings, store, job["name"], report.write_drill, result, result.setdefault("warnings", []))
    else:
        result = _crashed_run(store, settings, job, now, msg)
    out(msg)
    if job.get("report_to") and job.get("report_on") != "never":
        (report.mail_drill_report if args.drill else report.mail_report)(settings, job, result)
    return EXIT_OK


def _crashed_run(store: Store, settings: dict, job: dict, now: datetime.datetime, msg: str) -> dict:
    """A failed run in the job's status file and the metrics: each target failed with `msg`."""
    when = now.astimezone().isoformat(timespec="seconds")
    host = short_hostname()
    targets = []
    for index, options in enumerate(job["targets"]):
        entry = {"index": index, "type": options["type"], "location": None, "status": "failed", "code": errors.FAILED,
                 "bytes": 0, "seconds": 0.0, "error": msg, "pruned": []}
        try:
            entry["location"] = job_target(job, index, store.config_dir, settings, host).location()
        except Exception:  # pylint: disable=broad-except  # a report must not fail on a broken target
            pass
        targets.append(entry)
    result = {"job": job["name"], "interval": job["interval"], "host": host, "code": errors.FAILED, "success": False, "error": msg,
              "started": when, "started_epoch_ms": int(now.timestamp() * 1000), "finished": when, "duration": None,
              "archive": None, "targets": targets, "crash": True}
    report.write_status(settings, result)
    report.write_metrics(settings, store.job_names(), effective_metrics_path(settings))
    return result


def cmd_module_call(store: Store, args) -> int:
    """The runtime side of a module run on a Python without the libraries (calls.py): JSON request on
    stdin (validated module parameters: secrets never on a command line), JSON outcome on stdout."""
    from . import calls  # local: only module calls need it
    try:
        request = json.loads(sys.stdin.read(16 * 1024 * 1024))
        params = dict(request["params"], config_dir=store.config_dir)
        outcome = calls.call(args.module, params, bool(request.get("check_mode")))
    except (ValueError, KeyError, TypeError) as exc:
        outcome = {"failed": True, "result": {"msg": "bad module-call request: %s" % exc}, "warnings": [], "secrets": []}
    except SarError as exc:
        outcome = calls._failure(exc)  # pylint: disable=protected-access
    sys.stdout.write(json.dumps(outcome))
    sys.stdout.flush()
    return EXIT_OK


def _exit_codes():
    doc = __doc__ or ""  # None under python -OO
    return doc[doc.index("Exit codes:"):] if "Exit codes:" in doc else None


def _trust_args(p) -> None:
    p.add_argument("--trust", choices=("signed", "any"), default="signed",
                   help="signed (default): only archives signed by this host's key or a --trusted-key; "
                        "any: also unsigned archives and other keys")
    p.add_argument("--trusted-key", action="append", metavar="KEY",
                   help="another host's public key 'ed25519:...' (its signing.pub; repeatable)")
    p.add_argument("--trusted-keys-file", metavar="FILE", help="file of trusted public keys, one a line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sar-backup", description="Backups of a PBX appliance (sar.backup runtime).",
                                     epilog=_exit_codes(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-dir", help="configuration directory (default $SAR_BACKUP_CONFIG_DIR or /etc/sar-backup)")
    parser.add_argument("--version", action="version", version="sar-backup %s" % VERSION)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run a saved job now")
    p.add_argument("job")
    p.add_argument("--scheduled", action="store_true", help="a timer run: defer and retry when the lock is taken")
    p.add_argument("--wait", default="0", help="ad hoc: how long to wait for the maintenance lock (e.g. 10m)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("list", help="saved jobs, schedules and last results (and archives on every target)")
    p.add_argument("job", nargs="*", help="only these jobs")
    p.add_argument("--archives", action="store_true", help="also list the archives on every target of each job")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("verify", help="verify a .sar archive completely")
    p.add_argument("file")
    p.add_argument("--passphrase-file", help="file holding the passphrase of an encrypted archive")
    p.add_argument("--identity", help="age identity file for an archive encrypted to recipients")
    _trust_args(p)
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("restore", help="verify an archive, then restore its categories onto this appliance")
    p.add_argument("file", nargs="?", help="a .sar file on this host (or use --job)")
    p.add_argument("--job", help="restore from a target of this saved job")
    p.add_argument("--target", type=int, default=0, help="index of the job's target (0 = the first)")
    p.add_argument("--archive", default="latest", help="archive name on the target, or latest")
    p.add_argument("--data", nargs="+", help="only these categories (default: all in the archive)")
    p.add_argument("--verify-only", action="store_true", help="verify, restore nothing")
    p.add_argument("--dry-run", action="store_true", help="verify and list what would be restored")
    p.add_argument("--yes", action="store_true", help="really replace the data (required to restore)")
    p.add_argument("--wait", default="0", help="how long to wait for the maintenance lock (e.g. 10m)")
    p.add_argument("--passphrase-file", help="file holding the passphrase of an encrypted archive")
    p.add_argument("--identity", help="age identity file for an archive encrypted to recipients")
    p.add_argument("--scratch-dir", help="restore into this new or empty directory instead of the appliance's places "
                                         "(trees as files/<category>/<i>, dumps as db/<category>.pgdump files)")
    _trust_args(p)
    p.set_defaults(func=cmd_restore)
    p = sub.add_parser("drill", help="restore drill: restore the job's newest archive into isolation and check it")
    p.add_argument("job")
    p.add_argument("--target", type=int, help="index of the job's target to drill (default: the job's drill.target, rotate)")
    p.add_argument("--scheduled", action="store_true", help="a timer run: defer and retry when the lock is taken")
    p.add_argument("--wait", default="0", help="how long to wait for the maintenance lock (e.g. 10m)")
    p.add_argument("--passphrase-file", help="passphrase file (default: the job's own passphrase)")
    p.add_argument("--identity", help="age identity file, for archives encrypted to recipients")
    _trust_args(p)
    p.set_defaults(func=cmd_drill)

    p = sub.add_parser("status", help="monitoring: Nagios exit codes, JSON or the checkmk section")
    p.add_argument("jobs", nargs="*", metavar="JOB", help="only these jobs (default: every saved job)")
    p.add_argument("--job", help=argparse.SUPPRESS)  # the older spelling of one JOB
    p.add_argument("--warn", default="26h")
    p.add_argument("--crit", default="50h")
    p.add_argument("--format", choices=("text", "json", "checkmk", "checkmk-local"), default="text",
                   help="text: Nagios plugin output; checkmk: the <<<starface_backups>>> section; "
                        "checkmk-local: a <<<local>>> section, one service per job")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("metrics", help="rewrite the Prometheus textfile from the status files")
    p.set_defaults(func=cmd_metrics)
    p = sub.add_parser("module-call", help="internal: a module run through this runtime (JSON on stdin and stdout)")
    p.add_argument("module")
    p.set_defaults(func=cmd_module_call)

    p = sub.add_parser("crash-report", help="OnFailure= hook: mail that a run (or drill) died unreported")
    p.add_argument("job")
    p.add_argument("--unit")
    p.add_argument("--drill", action="store_true", help="the service was a restore drill")
    p.set_defaults(func=cmd_crash_report)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    store = Store(args.config_dir)
    try:
        return args.func(store, args)
    except ValidationError as exc:
        err("sar-backup: %s" % exc)
        return 3 if args.command == "status" else EXIT_USAGE
    except SarError as exc:
        err("sar-backup: %s" % exc)
        return 3 if args.command == "status" else EXIT_FAILED
    except OSError as exc:
        err("sar-backup: %s" % exc)
        return 3 if args.command == "status" else EXIT_FAILED
