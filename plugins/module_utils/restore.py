# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Restore a .sar archive onto the appliance (SPEC sections 6 and 9; docs/restore.md).

The same code runs inside `sar.backup.sar_backup_restore` and behind
`sar-backup restore`. Order, so that a failure at any step changes nothing:

1. find the archive: a file on the host, or a job's target (downloaded into staging);
2. verify it completely (every layer, every member's SHA-256, safety);
3. check what the restore needs (database reachable, PostgreSQL clients, room);
4. all of it under the maintenance lock (no backup or archiving meanwhile), taken
   first - only a check-mode or verify-only look at a file on the host goes without;
5. extract, in one pass, each file tree next to where it goes (same file system)
   and each database dump into staging;
6. swap the trees in (the current ones are kept aside), then restore every dump in
   ONE database transaction; if that fails, the kept trees are swapped back;
7. remove the kept trees and the staging files.

A restored category is exactly as archived: its database tables as they were
(later rows gone), its file trees as they were (later files gone). Other
categories are not touched."""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import stat
import tempfile

from . import archive, dumpguard, errors, signing, sources
from .errors import SarError, ValidationError
from .fsutil import clean_staging, short_hostname
from .job import CATEGORIES
from .lock import MaintenanceLock
from .targets import job_target
from .targets.base import CHUNK


def parse_identities(text: str | None) -> list | None:
    """AGE-SECRET-KEY-1... lines of an age identity file's text (comments and blank lines ignored)."""
    if not text:
        return None
    keys = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("AGE-SECRET-KEY-")]
    if not keys:
        raise ValidationError("identity", "holds no AGE-SECRET-KEY-1... line")
    return keys


def validate_data(data) -> list | None:
    if data is None:
        return None
    if isinstance(data, str):
        data = [data]
    out = []
    for i, cat in enumerate(data):
        if cat not in CATEGORIES:
            raise ValidationError("data[%d]" % i, "must be one of %s, got %r" % (", ".join(CATEGORIES), cat))
        if cat not in out:
            out.append(cat)
    if not out:
        raise ValidationError("data", "must name at least one category (or be omitted: all in the archive)")
    return out


def _tree_index(member: str, category: str):
    """The profile path index of tree member files/<category>/<index>, or None."""
    match = re.match(r"^files/%s/(0|[1-9][0-9]{0,5})$" % re.escape(category), member or "")
    return int(match.group(1)) if match else None


def validate_scratch_dir(path, profile: dict) -> str | None:
    """A scratch directory to restore into instead of the profile's places: absolute, empty or absent,
    and apart from every profile path (neither inside one nor holding one)."""
    if path is None or path == "":
        return None
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise ValidationError("scratch_dir", "must be an absolute path, got %r" % (path,))
    path = os.path.normpath(path)
    if path == "/":
        raise ValidationError("scratch_dir", "must not be /")
    for cat, spec in sorted((profile.get("categories") or {}).items()):
        for i, place in enumerate((spec or {}).get("paths") or []):
            place = os.path.normpath(place)
            if path == place or path.startswith(place.rstrip("/") + "/") or place.startswith(path + "/"):
                raise ValidationError("scratch_dir", "%s overlaps the profile's path %s (categories.%s.paths[%d]): "
                                      "give a directory apart from the appliance's data" % (path, place, cat, i))
    if os.path.lexists(path):
        if os.path.islink(path) or not os.path.isdir(path):
            raise ValidationError("scratch_dir", "%s exists and is not a directory" % path)
        if os.listdir(path):
            raise ValidationError("scratch_dir", "%s is not empty: give a new or empty directory" % path)
    return path


def _downloaded(target, name: str, size: int, workdir: str, log=None) -> str:
    """Copy archive `name` from the target into workdir (partial name, then rename); returns the path."""
    free = shutil.disk_usage(workdir).free
    if free < size:
        raise SarError("staging directory %s has %d bytes free, the archive %s needs %d"
                       % (workdir, free, name, size), errors.DISK_FULL)
    path = os.path.join(workdir, name)
    part = path + ".partial"
    if log:
        log("downloading %s (%d bytes) from %s" % (name, size, target.location()))
    done = 0
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with target.open_read(name) as src, os.fdopen(fd, "wb") as out:
        while True:
            chunk = src.read(CHUNK)
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    if done != size:
        raise SarError("download of %s from %s ended after %d of %d bytes" % (name, target.location(), done, size),
                       errors.VERIFY_FAILED)
    os.replace(part, path)
    return path


class Restore:
    """One restore; `execute()` returns the result dict or raises SarError."""

    def __init__(self, store, *, path: str | None = None, job: str | None = None, target: int = 0,
                 archive_name: str = "latest", data=None, passphrase: str | None = None, identities=None,
                 verify_only: bool = False, check_mode: bool = False, wait: float = 0, log=None,
                 trusted_keys=None, trust: str = "signed", scratch_dir: str | None = None, wait_option: str = "wait",
                 lock_held: bool = False):
        if bool(path) == bool(job):
            raise ValidationError("path", "give either path (a .sar on the host) or job (and target, archive)")
        if archive_name != "latest" and not archive.ARCHIVE_NAME_RE.match(archive_name or ""):
            raise ValidationError("archive", "must be 'latest' or an archive name like "
                                  "<job>_<host>_<YYYYMMDDTHHMMSSZ>.sar, got %r" % archive_name)
        if not isinstance(target, int) or isinstance(target, bool) or target < 0:
            raise ValidationError("target", "must be the index (0, 1, ...) of one of the job's targets, got %r" % (target,))
        self.store = store
        self.settings = store.settings()
        self.path = path
        self.job = job
        self.target = target
        self.archive_name = archive_name
        self.data = validate_data(data)
        self.passphrase = passphrase or None
        self.identities = identities or None
        self.verify_only = verify_only
        self.check_mode = check_mode
        self.wait = wait
        self.log_func = log
        self.workdir = None
        self.wait_option = wait_option
        self.lock_held = lock_held  # a drill holds the maintenance lock itself
        self.scanned = None
        self.trust = signing.validate_trust(trust)
        signing.parse_trusted_keys(trusted_keys)  # refuse a bad key before anything is fetched
        self.trusted_keys = trusted_keys
        self.scratch_dir = validate_scratch_dir(scratch_dir, self.settings["profile"])

    def log(self, msg: str) -> None:
        if self.log_func:
            self.log_func(msg)

    # -- 1. find the archive ---------------------------------------------------
    def staging(self) -> str:
        if self.workdir is None:
            root = self.settings["staging_dir"]
            os.makedirs(root, 0o700, exist_ok=True)
            self.workdir = tempfile.mkdtemp(prefix=".restore-", dir=root)
        return self.workdir

    def locate(self) -> tuple:
        """(local path of the archive, description of where it came from)."""
        if self.path:
            st = None
            try:
                st = os.stat(self.path)
            except OSError as exc:
                raise ValidationError("path", "cannot read %s: %s" % (self.path, exc.strerror or exc)) from None
            if not stat.S_ISREG(st.st_mode):
                raise ValidationError("path", "%s is not a regular file" % self.path)
            return self.path, None
        job = self.store.load_job(self.job)
        tgt = job_target(job, self.target, self.store.config_dir, self.settings, short_hostname(), log=self.log_func)
        where = {"job": job["name"], "target": self.target, "type": tgt.TYPE, "location": tgt.location()}
        if tgt.TYPE == "email":
            raise ValidationError("target", "target %d of job %r is an e-mail target: archives sent by mail cannot be "
                                  "fetched back; save the attachment and give its path" % (self.target, job["name"]))
        tgt.connect()
        try:
            found = tgt.archives()
            if self.archive_name == "latest":
                if not found:
                    raise SarError("no archive of job %r on target %d (%s)" % (job["name"], self.target, tgt.location()))
                entry = found[0]
            else:
                if not archive.archive_pattern(job["name"]).match(self.archive_name):
                    raise ValidationError("archive", "%r is not an archive name of job %r" % (self.archive_name, job["name"]))
                matches = [e for e in found if e.name == self.archive_name]
                if not matches:
                    raise SarError("archive %s is not on target %d of job %r (%s); %d archive(s) there"
                                   % (self.archive_name, self.target, job["name"], tgt.location(), len(found)))
                entry = matches[0]
            where["name"] = entry.name
            local = getattr(tgt, "local_path", None)
            if tgt.TYPE == "local" and local is not None and local(entry.name):
                return local(entry.name), where
            return _downloaded(tgt, entry.name, entry.size, self.staging(), self.log_func), where
        finally:
            tgt.close()

    # -- 2./3. verify and plan --------------------------------------------------
    def plan(self, manifest: dict) -> list:
        """Where each archived source of the chosen categories goes: the place the host's profile gives for its
        category and index (or the scratch directory), never the manifest's `origin`. An archive whose sources
        do not match the profile is refused, unless restoring into a scratch directory."""
        in_archive = list(manifest.get("categories") or [])
        wanted = self.data or in_archive
        for i, cat in enumerate(wanted):
            if cat not in in_archive:
                raise ValidationError("data[%d]" % i, "the archive holds %s, not %r"
                                      % (", ".join(in_archive) or "no category", cat))
        profile = self.settings["profile"]
        categories = profile.get("categories") or {}
        chosen, mismatches = [], []
        for src in manifest.get("sources") or []:
            cat = src["category"]
            if cat not in wanted:
                continue
            entry = {"category": cat, "kind": src["kind"], "origin": None, "archived_origin": src["origin"],
                     "member": src["member"], "size": src.get("size"), "files": src.get("files")}
            spec = categories.get(cat) or {}
            if entry["kind"] == sources.KIND_FILES:
                index = _tree_index(src["member"], cat)
                paths = [os.path.normpath(p) for p in spec.get("paths") or []]
                if index is None:
                    raise SarError("manifest.json: member %r of a %s tree is not files/%s/<index>" % (src["member"], cat, cat),
                                   errors.VERIFY_FAILED)
                if index >= len(paths):
                    mismatches.append("%s: the archive holds tree %s, the profile has %d path(s) for %s"
                                      % (cat, src["member"], len(paths), cat))
                else:
                    entry["origin"] = paths[index]
                    if os.path.normpath(src["origin"]) != paths[index]:
                        mismatches.append("%s: tree %s was archived from %s, the profile puts it at %s"
                                          % (cat, src["member"], src["origin"], paths[index]))
                if self.scratch_dir:
                    entry["origin"] = os.path.join(self.scratch_dir, *src["member"].split("/"))
            elif entry["kind"] == sources.KIND_DB:
                tables = list(spec.get("tables") or [])
                exclude = list(spec.get("exclude_tables") or [])
                if src["member"] != "db/%s.pgdump" % cat:
                    raise SarError("manifest.json: member %r of a %s dump is not db/%s.pgdump" % (src["member"], cat, cat),
                                   errors.VERIFY_FAILED)
                if not (tables or exclude):
                    mismatches.append("%s: the archive holds a database dump, the profile has no tables for %s"
                                      % (cat, cat))
                entry["origin"] = sources.database_origin(profile, tables, exclude)
                if self.scratch_dir:
                    entry["origin"] = os.path.join(self.scratch_dir, *src["member"].split("/"))
            else:
                raise SarError("manifest.json: unknown source kind %r (member %s)" % (entry["kind"], entry["member"]),
                               errors.VERIFY_FAILED)
            chosen.append(entry)
        # What the profile has for a chosen category and the archive lacks would not be restored "as archived".
        for cat in wanted:
            spec = categories.get(cat) or {}
            members = {e["member"] for e in chosen if e["category"] == cat}
            for index, place in enumerate(spec.get("paths") or []):
                if "files/%s/%d" % (cat, index) not in members:
                    mismatches.append("%s: the profile's path %s (paths[%d]) is not in the archive" % (cat, place, index))
            if (spec.get("tables") or spec.get("exclude_tables")) and "db/%s.pgdump" % cat not in members:
                mismatches.append("%s: the profile dumps tables of %s, the archive has no dump of them" % (cat, cat))
        if mismatches and not self.scratch_dir:
            raise SarError("the archive's sources do not match this host's profile, so there is no safe place to "
                           "restore them (restore into a scratch directory with scratch_dir / --scratch-dir to look at "
                           "them): %s" % "; ".join(mismatches), errors.VERIFY_FAILED)
        return chosen

    def preflight(self, plan: list) -> None:
        profile = self.settings["profile"]
        if self.scratch_dir:
            return  # nothing of the appliance is touched: dumps are written as files, trees into the scratch directory
        if any(e["kind"] == sources.KIND_DB for e in plan):
            for tool in ("pg_restore", "psql"):
                sources.find_tool(tool, profile)
            sources.check([sources.Source(category=plan[0]["category"], kind=sources.KIND_DB, origin="", member="")],
                          profile)
        for entry in plan:
            if entry["kind"] != sources.KIND_FILES:
                continue
            origin = entry["origin"]
            if os.path.ismount(origin):
                raise SarError("%s: %s is a mount point; restore replaces the directory itself, so restore it into "
                               "a directory below the mount point (change the profile path) or by hand"
                               % (entry["category"], origin))
            if os.path.lexists(origin) and not os.path.isdir(origin) or os.path.islink(origin):
                raise SarError("%s: %s exists and is not a directory (or is a symlink); refusing to replace it"
                               % (entry["category"], origin))

    # -- 5./6. extract and swap -------------------------------------------------
    def execute(self) -> dict:
        lock = None
        if not self.lock_held and not (self.path and (self.check_mode or self.verify_only)):
            # Staging (downloads, dumps) and the appliance's data belong to the lock's holder: a run
            # cleaning staging must never see our download as a killed run's leftover.
            lock = MaintenanceLock(self.settings["lock_path"], wait_option=self.wait_option)
            lock.acquire(wait=self.wait)
            # What killed runs, restores and drills left in staging: ours now that we hold the lock.
            clean_staging(self.settings["staging_dir"], log=self.log_func)
        try:
            return self._execute()
        finally:
            if self.workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            if lock is not None:
                lock.release()

    def _execute(self) -> dict:
        path, where = self.locate()
        self.log("verifying %s" % os.path.basename(path))
        scanned = self.scanned = archive.scan(path, self.passphrase, self.identities)
        trust = signing.check_trust(scanned.get("signature"), self.store.config_dir, self.trusted_keys, self.trust)
        if trust["signed"] and trust["trusted"]:
            self.log("signed by %s (%s)" % (trust["fingerprint"], trust["trusted_by"]))
        else:
            self.log("%s, accepted because trust is any"
                     % ("signed by an unknown key %s" % trust["fingerprint"] if trust["signed"] else "not signed"))
        manifest = scanned["manifest"]
        info = {"name": os.path.basename(path), "path": path if not self.workdir or not path.startswith(self.workdir) else None,
                "size": scanned["size"], "sha256": scanned["sha256"], "created": manifest.get("created"),
                "job": manifest.get("job"), "host": manifest.get("host"), "categories": manifest.get("categories") or [],
                "compression": scanned["compression"], "encrypted": scanned["encrypted"], "from": where,
                "signature": trust}
        plan = self.plan(manifest)
        result = {"archive": info, "verified": True, "restored": plan, "scratch_dir": self.scratch_dir,
                  "members": len(scanned["members"]),
                  "categories": sorted({e["category"] for e in plan}, key=CATEGORIES.index),
                  "changed": False, "check_mode": self.check_mode, "verify_only": self.verify_only}
        if self.verify_only or self.check_mode:
            # Verify says what restore will say: the dumps' contents are checked as a restore checks them.
            result["dumps_checked"] = self.check_dumps(path, plan, scanned)
        if self.verify_only:
            result["restored"] = []
            result["categories"] = []
            return result
        self.preflight(plan)
        if self.check_mode:
            result["changed"] = bool(plan)
            return result
        self.apply(path, plan, scanned)
        result["changed"] = bool(plan)
        return result

    def check_dumps(self, path: str, plan: list, scanned: dict) -> list:
        """Extract the plan's dumps into staging and check each as restore_dumps will (dumpguard: the table of
        contents and the SQL may touch only what the profile gives its category); nothing runs. Into a scratch
        directory dumps are only written as files: nothing to check there."""
        dumps = [e for e in plan if e["kind"] == sources.KIND_DB]
        if not dumps or self.scratch_dir:
            return []
        routes = {e["member"]: os.path.join(self.staging(), "check-" + os.path.basename(e["member"])) for e in dumps}
        archive.extract_routed(path, routes, self.passphrase, self.identities, scanned=scanned)
        checked = []
        for e in dumps:
            script = dumpguard.check_dump(routes[e["member"]], e["category"], self.settings["profile"], self.staging(),
                                          member=e["member"])
            for leftover in (script, routes[e["member"]]):
                try:
                    os.unlink(leftover)
                except OSError:
                    pass
            checked.append(e["member"])
        return checked

    def apply(self, path: str, plan: list, scanned: dict) -> None:
        dumps = [e for e in plan if e["kind"] == sources.KIND_DB]
        trees = [e for e in plan if e["kind"] == sources.KIND_FILES]
        routes = {}
        fresh = {}  # origin -> the directory the archived tree is extracted into
        links = {}  # origin -> staging file of its links member
        if dumps:
            need = sum(int(e.get("size") or 0) for e in dumps)
            free = shutil.disk_usage(self.staging()).free
            if free < need * 2:  # the dump and its SQL script
                raise SarError("staging directory %s has %d bytes free, restoring the database needs about %d"
                               % (self.staging(), free, need * 2), errors.DISK_FULL)
            for e in dumps:
                if self.scratch_dir:
                    os.makedirs(os.path.dirname(e["origin"]), 0o700, exist_ok=True)
                    routes[e["member"]] = e["origin"]
                else:
                    routes[e["member"]] = os.path.join(self.staging(), os.path.basename(e["member"]))
        if self.scratch_dir:
            os.makedirs(self.scratch_dir, 0o700, exist_ok=True)
            os.chmod(self.scratch_dir, 0o700)  # what an archive holds is nobody else's business
        _check_room(trees)
        kept = []
        for e in trees:
            _remove_leftovers(e["origin"], ".sar-restore-", self.log)  # of a restore that was killed
        try:
            for e in trees:
                origin = e["origin"]
                parent = os.path.dirname(origin)
                os.makedirs(parent, 0o700 if self.scratch_dir else 0o755, exist_ok=True)
                fresh[origin] = tempfile.mkdtemp(prefix=".%s.sar-restore-" % os.path.basename(origin), dir=parent)
                routes[e["member"]] = fresh[origin]
                if (scanned.get("links") or {}).get(e["member"]):
                    links[origin] = scanned["links"][e["member"]]  # parsed and checked by the scan
            self.log("extracting %d tree(s) and %d database dump(s)" % (len(trees), len(dumps)))
            archive.extract_routed(path, routes, self.passphrase, self.identities, scanned=scanned)
            for origin, links_file in links.items():
                _recreate_links(fresh[origin], links_file)  # the scan's checked entries
            for e in dumps:
                if not self.scratch_dir:  # refused before any tree is swapped (restore_dumps checks again)
                    os.unlink(dumpguard.check_dump(routes[e["member"]], e["category"], self.settings["profile"],
                                                   self.staging(), member=e["member"]))
            # Swap the trees in; the current ones stay aside until the database is restored.
            for e in trees:
                origin = e["origin"]
                aside = None
                if os.path.lexists(origin):
                    aside = tempfile.mkdtemp(prefix=".%s.sar-old-" % os.path.basename(origin), dir=os.path.dirname(origin))
                    os.rmdir(aside)
                    os.rename(origin, aside)
                kept.append((origin, aside))
                os.rename(fresh.pop(origin), origin)
                self.log("%s: %s restored" % (e["category"], origin))
            if dumps and not self.scratch_dir:
                sources.restore_dumps([(e["category"], routes[e["member"]], e["member"]) for e in dumps], self.settings["profile"], self.staging(),
                                      log=self.log_func)
        except BaseException:
            for origin, aside in reversed(kept):
                _remove_tree(origin)
                if aside:
                    os.rename(aside, origin)
            for leftover in fresh.values():
                _remove_tree(leftover)
            raise
        for origin, aside in kept:
            if aside:
                _remove_tree(aside)
            _remove_leftovers(origin, ".sar-old-", self.log)  # trees a killed restore had set aside


def _check_room(trees: list) -> None:
    """Each tree is extracted next to its place: that file system needs the bytes the manifest declares
    (the archive reader refuses members beyond what is declared)."""
    need: dict = {}
    for e in trees:
        parent = os.path.dirname(e["origin"])
        while not os.path.isdir(parent):
            parent = os.path.dirname(parent)
        dev = os.stat(parent).st_dev
        entry = need.setdefault(dev, [parent, 0])
        entry[1] += int(e.get("size") or 0)
    for parent, size in need.values():
        free = shutil.disk_usage(parent).free
        if free < size:
            raise SarError("%s has %d bytes free, the archived trees restored there need %d" % (parent, free, size),
                           errors.DISK_FULL)


def _remove_leftovers(origin: str, kind: str, log=None) -> None:
    """Remove `.<name><kind>XXXXXXXX` next to `origin`: what a killed restore left (we hold the lock)."""
    parent, base = os.path.split(origin)
    pattern = re.compile(r"^\.%s%s[a-z0-9_]{8}$" % (re.escape(base), re.escape(kind)))
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if pattern.match(name):
            if log:
                log("removing %s, left by an interrupted restore" % os.path.join(parent, name))
            _remove_tree(os.path.join(parent, name))


def _remove_tree(path: str) -> None:
    """rm -rf that also removes trees whose directories are read-only (their archived modes), walking
    with a stack of its own (no recursion limit, whatever a killed restore or a hostile archive left)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    stack = [(path, False)]
    while stack:
        current, listed = stack.pop()
        if listed:
            os.rmdir(current)
            continue
        os.chmod(current, 0o700)
        stack.append((current, True))
        with os.scandir(current) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, False))
                else:
                    os.unlink(entry.path)


def _recreate_links(root: str, entries: list) -> None:
    """The tree's symlinks that point out of it (archive member <tree>.links.json, parsed and checked by
    archive.parse_links during the scan), created inside `root` only: never through another symlink,
    never over anything already there."""
    as_root = os.geteuid() == 0
    for entry in entries:
        rel = entry["path"]
        parts = rel.split("/")
        where = root
        for part in parts[:-1]:
            where = os.path.join(where, part)
            if not stat.S_ISDIR(os.lstat(where).st_mode):
                raise SarError("cannot recreate link %r: %s is not a directory" % (rel, where), errors.VERIFY_FAILED)
        link = os.path.join(where, parts[-1])
        if os.path.lexists(link):
            raise SarError("cannot recreate link %r: something is already there" % rel, errors.VERIFY_FAILED)
        os.symlink(entry["target"], link)
        if as_root:
            try:
                os.lchown(link, _id(pwd.getpwnam, entry.get("owner"), entry.get("uid")),
                          _id(grp.getgrnam, entry.get("group"), entry.get("gid")))
            except (OSError, ValueError, TypeError):
                pass
        mtime = entry.get("mtime")
        if isinstance(mtime, int) and os.utime in os.supports_follow_symlinks:
            os.utime(link, (mtime, mtime), follow_symlinks=False)


def _id(lookup, name, number) -> int:
    """Owner by name where the name exists here, else the archived number (as tar does)."""
    if name:
        try:
            entry = lookup(name)
            return entry[2]
        except KeyError:
            pass
    return int(number) if number is not None else -1


def restore(store, **kwargs) -> dict:
    return Restore(store, **kwargs).execute()
