# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""What every target shares: layout, partial-then-commit delivery, verification,
retention, retries. A target type implements the small primitives below."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from .. import errors, retention
# The format's names, where every target takes them from.
from ..archive import archive_pattern, partial_pattern
from ..errors import TargetError
from ..fsutil import sha256_stream

ROOT_DIR = "starface-backup"
CHUNK = 1024 * 1024


@dataclass
class TargetContext:
    """What a target may know about the run; never imports the runner."""

    job: str
    host: str
    config_dir: str
    settings: dict = field(default_factory=dict)
    log: object = None  # callable(str) or None
    check_mode: bool = False


@dataclass
class RemoteFile:
    name: str
    size: int
    mtime: float  # epoch seconds


class Target:
    """Base class. Subclasses set TYPE (its options, rules and tag: types.py) and implement the primitives."""

    TYPE = ""
    # Whether `verify: full` is done by re-reading (False: the target checks
    # a service-side hash in `verify_full` instead).
    RETRY_ATTEMPTS = 3
    RETRY_BACKOFF = 2.0  # seconds, doubled each attempt

    def __init__(self, options: dict, ctx: TargetContext):
        self.options = options
        self.ctx = ctx

    # -- primitives every type implements --------------------------------
    def connect(self) -> None:
        """Open the connection / mount; raise TargetError with a result code."""

    def close(self) -> None:
        """Release everything; must not raise."""

    def location(self) -> str:
        """Where archives go, for humans and reports; never a secret."""
        raise NotImplementedError

    def ensure_dir(self) -> None:
        """Create <base>/starface-backup/<job>/ (and missing parents)."""
        raise NotImplementedError

    def put(self, src_path: str, name: str, size: int) -> None:
        """Upload `src_path` as `name`: under partial_name(name) first, then
        an atomic rename/commit. Never leaves an incomplete file named .sar."""
        raise NotImplementedError

    def listdir(self) -> list:
        """RemoteFile entries of the job folder (all names, filtering is ours)."""
        raise NotImplementedError

    def remove(self, name: str) -> None:
        raise NotImplementedError

    def open_read(self, name: str):
        """A binary file object reading archive `name` (for verify/restore)."""
        raise NotImplementedError

    def probe_write(self) -> None:
        """Check mode: prove write permission with a file that does not stay."""
        raise NotImplementedError

    # -- provided --------------------------------------------------------
    def log(self, msg: str) -> None:
        if self.ctx.log:
            self.ctx.log("%s: %s" % (self.TYPE, msg))

    def size_of(self, name: str):
        for entry in self.listdir():
            if entry.name == name:
                return entry.size
        return None

    def verify_full(self, name: str, size: int, sha256: str) -> None:
        """Re-read the uploaded archive and compare SHA-256 (override when the
        service offers its own hash)."""
        with self.open_read(name) as handle:
            digest, total = sha256_stream(handle, CHUNK)
        if total != size or digest.hexdigest() != sha256:
            raise TargetError(
                "%s: read-back of %s does not match (%d bytes, sha256 %s; expected %d bytes, %s)"
                % (self.location(), name, total, digest.hexdigest(), size, sha256),
                errors.VERIFY_FAILED)

    def verify(self, name: str, size: int, sha256: str) -> None:
        mode = self.options.get("verify", "size")
        remote = self.size_of(name)
        if remote is None:
            raise TargetError("%s: %s is missing after upload" % (self.location(), name), errors.VERIFY_FAILED)
        if remote != size:
            raise TargetError("%s: %s has %d bytes after upload, expected %d"
                              % (self.location(), name, remote, size), errors.VERIFY_FAILED)
        if mode == "full":
            self.verify_full(name, size, sha256)

    def archives(self) -> list:
        """This job's archives on the target, newest first."""
        pattern = archive_pattern(self.ctx.job)
        found = [e for e in self.listdir() if pattern.match(e.name)]
        # The name carries the UTC time: sorting by name is sorting by age.
        return sorted(found, key=lambda e: e.name, reverse=True)

    def retention_rules(self) -> dict:
        rules = {rule: int(self.options.get(rule) or 0) for rule in retention.RULES}
        rules["keep"] = int(self.options.get("keep", 7) or 0)
        return rules

    def would_prune(self, protect: str = "") -> list:
        """What prune() would remove now (check mode): archives the retention rules do not keep."""
        return retention.to_remove([e.name for e in self.archives()], self.retention_rules(),
                                   protect=[protect] if protect else [])

    def prune(self, protect: str = "") -> list:
        """Apply the retention rules (retention.py: keep and the calendar rules; the archive just written and the
        newest are never removed) and remove leftover partials of this job. Returns the names removed."""
        removed = []
        entries = self.listdir()
        partials = partial_pattern(self.ctx.job)
        for entry in entries:
            if partials.match(entry.name):
                self.remove(entry.name)
                removed.append(entry.name)
        for name in self.would_prune(protect):
            self.remove(name)
            removed.append(name)
        return removed

    def deliver(self, src_path: str, name: str, size: int, sha256: str) -> dict:
        """The whole delivery: connect, folder, upload, verify, prune.
        Returns {'bytes', 'pruned'}; raises TargetError."""
        self.connect()
        try:
            self.ensure_dir()
            self.put(src_path, name, size)
            try:
                self.verify(name, size, sha256)
            except TargetError as exc:
                if exc.code == errors.VERIFY_FAILED:
                    self.discard_bad(name, exc)
                raise
            pruned = self.prune(protect=name)
            return {"bytes": size, "pruned": pruned}
        finally:
            self.close()

    def discard_bad(self, name: str, exc: TargetError) -> None:
        """A copy that failed verification must not stay under a .sar name, where it would look like a
        good backup (and count for retention); earlier archives are not touched."""
        try:
            if self.size_of(name) is None:
                return
            self.remove(name)
            exc.msg = "%s; the bad copy was removed" % exc.msg
            exc.args = (exc.msg,)
        except Exception as cleanup:  # pylint: disable=broad-except  # the verify failure is what we report
            exc.msg = "%s; removing the bad copy failed too: %s" % (exc.msg, cleanup)
            exc.args = (exc.msg,)

    def check(self, new_name: str = "") -> list:
        """Check mode: log in and prove write access; leaves nothing behind. Returns what a run writing
        `new_name` would prune under the retention rules."""
        self.connect()
        try:
            self.probe_write()
            names = [e.name for e in self.archives()]
            if new_name and new_name not in names:
                names.append(new_name)
            return retention.to_remove(names, self.retention_rules(), protect=[new_name] if new_name else [])
        finally:
            self.close()

    def retrying(self, what: str, func, *args, **kwargs):
        """Run func, retrying TargetError(transient=True) with backoff."""
        delay = self.RETRY_BACKOFF
        for attempt in range(1, self.RETRY_ATTEMPTS + 1):
            try:
                return func(*args, **kwargs)
            except TargetError as exc:
                if not exc.transient or attempt == self.RETRY_ATTEMPTS:
                    raise
                self.log("%s failed (%s), retry %d/%d in %.0fs"
                         % (what, exc, attempt, self.RETRY_ATTEMPTS - 1, delay))
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")


def job_dir(base: str, job: str) -> str:
    """<base>/starface-backup/<job> for path-like targets."""
    return os.path.join(base, ROOT_DIR, job)
