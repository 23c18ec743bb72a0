# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""The appliance's maintenance lock (seed step 1: backup and archiving never run at once).

An exclusive `flock` on `lock_path` (SPEC section 9). Whoever holds it -- the
appliance's own archiving or another backup job -- blocks a run. The kernel
releases the lock when the holder's descriptor closes (even on a crash), so
there is nothing stale to clean up. The pid written into the file is for
people and messages only; correctness never depends on it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from typing import Callable, Optional

from .errors import ALREADY_RUNNING, LockBusy, SarError

DEFAULT_LOCK_PATH = "/run/lock/sar-backup.lock"


class MaintenanceLock:
    """`with MaintenanceLock(path):` or `lock.acquire(wait=60)` ... `lock.release()`."""

    def __init__(self, path: str = DEFAULT_LOCK_PATH, wait_option: str = "wait"):
        self.path = path
        # How the caller's users give a wait: the modules' `wait`, the command's `--wait`.
        self.wait_option = wait_option
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _open(self) -> int:
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            try:
                os.makedirs(parent, 0o755)
                os.chmod(parent, 0o755)  # makedirs' mode is subject to the umask
            except FileExistsError:
                pass  # created by someone else meanwhile
            except OSError as exc:
                raise SarError("cannot create the directory of the maintenance lock %s: %s; "
                               "check lock_path in the settings" % (self.path, exc.strerror or exc))
        flags = os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            existed = os.path.exists(self.path)
            fd = os.open(self.path, os.O_RDWR | flags, 0o644)
            if not existed:
                try:
                    os.fchmod(fd, 0o644)
                except OSError:
                    pass
            return fd
        except PermissionError:
            # The file may belong to the appliance's archiving; a read-only
            # descriptor can still be flocked, we just cannot note our pid.
            try:
                return os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as exc:
                raise SarError("cannot open the maintenance lock %s: %s; check lock_path in the settings"
                               % (self.path, exc.strerror or exc))
        except OSError as exc:
            raise SarError("cannot open the maintenance lock %s: %s; check lock_path in the settings"
                           % (self.path, exc.strerror or exc))

    def _try_once(self) -> bool:
        """One non-blocking attempt. True when we hold the lock afterwards."""
        for _attempt in range(5):
            locked = self._lock_current_file()
            if locked is not None:
                return locked
        raise SarError("the maintenance lock %s keeps being replaced while locking; "
                       "is another tool deleting it?" % self.path)

    def _lock_current_file(self) -> Optional[bool]:
        """True: locked; False: busy; None: the file was replaced meanwhile, try again."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise SarError("cannot lock %s: %s" % (self.path, exc.strerror or exc))
        # Someone may have removed/replaced the file between open and flock:
        # a lock on an unlinked inode excludes nobody, so try again.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(self.path))
        except OSError:
            same = False
        if not same:
            os.close(fd)
            return None
        self._fd = fd
        self._note_pid()
        return True

    def _note_pid(self) -> None:
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, ("%d\n" % os.getpid()).encode("ascii"), 0)
        except OSError:
            pass  # read-only descriptor or full disk: the pid is information only

    def acquire(self, wait: float = 0, poll: float = 0.5) -> "MaintenanceLock":
        """Take the lock, polling up to `wait` seconds; LockBusy (alreadyRunning) after that."""
        if self._fd is not None:
            return self
        deadline = time.monotonic() + max(0.0, float(wait or 0))
        poll = max(0.01, float(poll))
        while True:
            if self._try_once():
                return self
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockBusy(self.busy_message(
                    "retry later or give %s (e.g. %s 10m)" % (self.wait_option, self._example()) if not wait else
                    "gave up after waiting %s; retry later or give a longer %s" % (_seconds(wait), self.wait_option)),
                    ALREADY_RUNNING)
            time.sleep(min(poll, remaining))

    def _example(self) -> str:
        return self.wait_option if self.wait_option.startswith("-") else self.wait_option + ":"

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # no stale pid for the next reader
        except OSError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "MaintenanceLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def holder(self) -> Optional[int]:
        """Best-effort pid of the process holding the lock (None when unknown)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        pid = _pid_from_proc_locks(st)
        if pid:
            return pid
        try:
            with open(self.path, "r", encoding="ascii", errors="replace") as handle:
                text = handle.read(32).strip()
            pid = int(text.split()[0]) if text else 0
        except (OSError, ValueError, IndexError):
            return None
        # The file may carry a dead writer's pid (crash): only name a live process.
        return pid if pid > 0 and os.path.exists("/proc/%d" % pid) else None

    def busy_message(self, advice: str) -> str:
        pid = self.holder()
        who = ""
        if pid and pid != os.getpid():
            who = "pid %d%s: " % (pid, _comm(pid))
        return "the maintenance lock %s is held by another process (%sappliance archiving or another backup); %s" % (
            self.path, who, advice)


def _seconds(value: float) -> str:
    """Seconds the way durations are written in the options: 1h, 5m, 30s, 0.5s."""
    value = float(value)
    if value != int(value):
        return "%.1fs" % value
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return "%d%s" % (value // size, unit)
    return "%ds" % value


def _comm(pid: int) -> str:
    try:
        with open("/proc/%d/comm" % pid, "r", encoding="utf-8", errors="replace") as handle:
            name = handle.read().strip()
        return " %s" % name if name else ""
    except OSError:
        return ""


def _pid_from_proc_locks(st: os.stat_result) -> Optional[int]:
    """The pid of a granted lock on this inode in /proc/locks
    (lines like `1: FLOCK  ADVISORY  WRITE 7263 fe:00:2146323 0 EOF`)."""
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    try:
        with open("/proc/locks", "r", encoding="ascii", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or "->" in fields:
            continue  # a blocked waiter, not the holder
        try:
            major, minor, inode = fields[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == want:
                pid = int(fields[4])
                return pid if pid > 0 else None
        except ValueError:
            continue
    return None


def acquire_scheduled(lock: MaintenanceLock, defer: int, retries: int,
                      on_defer: Optional[Callable[[int, int, int], None]] = None,
                      sleep: Callable[[float], None] = time.sleep) -> int:
    """A scheduled run: when the lock is taken, report `deferred` (on_defer), wait `defer`
    seconds and try again, up to `retries` times; then LockBusy (alreadyRunning).
    Returns how many deferrals were taken."""
    deferrals = 0
    while True:
        try:
            lock.acquire(wait=0)
            return deferrals
        except LockBusy:
            if deferrals >= retries:
                if retries:
                    advice = "gave up after %d retr%s %s apart; move this job's start or raise defer/retries" % (
                        retries, "y" if retries == 1 else "ies", _seconds(defer))
                else:
                    advice = "the job has retries 0, so it does not wait; move this job's start or raise retries"
                raise LockBusy(lock.busy_message(advice), ALREADY_RUNNING)
        deferrals += 1
        if on_defer is not None:
            on_defer(deferrals, retries, defer)
        sleep(defer)
