# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""lock.py: the maintenance lock against a real second process holding a flock."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys

import pytest

from ansible_collections.sar.backup.plugins.module_utils import lock as lockmod
from ansible_collections.sar.backup.plugins.module_utils.errors import ALREADY_RUNNING, LockBusy

# The other process (the appliance's archiving, another job): locks, says so,
# then releases on "release" (or after `hold` seconds), says so, and waits for EOF.
HOLDER = r"""
import fcntl, os, select, sys
path, hold = sys.argv[1], float(sys.argv[2])
os.makedirs(os.path.dirname(path), exist_ok=True)
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
if hold >= 0:
    select.select([sys.stdin], [], [], hold)
else:
    sys.stdin.readline()
fcntl.flock(fd, fcntl.LOCK_UN)
print("released", flush=True)
sys.stdin.read()
"""


class Holder:
    def __init__(self, path, hold=-1.0):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(hold)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"

    @property
    def pid(self):
        return self.proc.pid

    def release(self):
        self.proc.stdin.write("release\n")
        self.proc.stdin.flush()
        self.wait_released()

    def wait_released(self):
        assert self.proc.stdout.readline().strip() == "released"

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def holder_factory():
    started = []

    def start(path, hold=-1.0):
        h = Holder(path, hold)
        started.append(h)
        return h
    yield start
    for h in started:
        h.stop()


@pytest.fixture
def lock_path(tmp_path):
    return str(tmp_path / "run" / "lock" / "sar-backup.lock")


def test_acquire_creates_dir_and_file_writes_pid_and_releases(lock_path):
    lock = lockmod.MaintenanceLock(lock_path)
    old = os.umask(0o077)  # even under a strict umask the documented modes apply
    try:
        lock.acquire()
    finally:
        os.umask(old)
    try:
        assert lock.held
        assert stat.S_IMODE(os.stat(os.path.dirname(lock_path)).st_mode) == 0o755
        assert stat.S_IMODE(os.stat(lock_path).st_mode) == 0o644
        with open(lock_path) as handle:
            assert handle.read().strip() == str(os.getpid())
        assert lock.holder() == os.getpid()
        # Nobody else can take it now (a separate open file description, as another process has).
        fd = os.open(lock_path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        lock.release()
    assert not lock.held
    fd = os.open(lock_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again
    finally:
        os.close(fd)


def test_context_manager_and_reacquire(lock_path):
    with lockmod.MaintenanceLock(lock_path) as lock:
        assert lock.held
        assert lock.acquire() is lock  # already ours: no self-deadlock
    assert not lock.held
    with lockmod.MaintenanceLock(lock_path).acquire(wait=1) as again:
        assert again.held
    assert not again.held


def test_busy_fails_at_once_with_already_running(lock_path, holder_factory):
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    with open(lock_path, "w") as handle:
        handle.write("999999999\n")  # stale content must not matter
    holder = holder_factory(lock_path)
    lock = lockmod.MaintenanceLock(lock_path)
    with pytest.raises(LockBusy) as err:
        lock.acquire(wait=0)
    assert err.value.code == ALREADY_RUNNING
    assert lock_path in err.value.msg
    assert "pid %d" % holder.pid in err.value.msg
    assert "retry later or give wait (e.g. wait: 10m)" in err.value.msg
    assert lock.holder() == holder.pid
    assert not lock.held
    # The command's users give --wait.
    with pytest.raises(LockBusy) as err:
        lockmod.MaintenanceLock(lock_path, wait_option="--wait").acquire(wait=0)
    assert "retry later or give --wait (e.g. --wait 10m)" in err.value.msg


def test_wait_succeeds_once_holder_releases(lock_path, holder_factory):
    holder = holder_factory(lock_path, hold=0.5)
    lock = lockmod.MaintenanceLock(lock_path)
    lock.acquire(wait=10, poll=0.05)
    try:
        assert lock.held
        holder.wait_released()  # we got it because the holder let go, not before
        with open(lock_path) as handle:
            assert handle.read().strip() == str(os.getpid())
    finally:
        lock.release()


def test_wait_gives_up_when_held_for_good(lock_path, holder_factory):
    holder_factory(lock_path)
    lock = lockmod.MaintenanceLock(lock_path)
    with pytest.raises(LockBusy) as err:
        lock.acquire(wait=0.3, poll=0.05)
    assert err.value.code == ALREADY_RUNNING
    assert "gave up after waiting" in err.value.msg
    assert not lock.held


def test_scheduled_defers_then_gives_up(lock_path, holder_factory):
    holder_factory(lock_path)
    lock = lockmod.MaintenanceLock(lock_path)
    calls, sleeps = [], []
    with pytest.raises(LockBusy) as err:
        lockmod.acquire_scheduled(lock, defer=0.1, retries=2, on_defer=lambda *a: calls.append(a), sleep=sleeps.append)
    assert calls == [(1, 2, 0.1), (2, 2, 0.1)]
    assert sleeps == [0.1, 0.1]
    assert err.value.code == ALREADY_RUNNING
    assert "gave up after 2 retries" in err.value.msg
    assert not lock.held


def test_scheduled_returns_deferrals_when_released_in_between(lock_path, holder_factory):
    holder = holder_factory(lock_path)
    lock = lockmod.MaintenanceLock(lock_path)
    calls = []

    def fake_sleep(seconds):
        if len(calls) == 2:  # the holder finishes during the second wait
            holder.release()

    taken = lockmod.acquire_scheduled(lock, defer=0.1, retries=3, on_defer=lambda *a: calls.append(a), sleep=fake_sleep)
    try:
        assert taken == 2
        assert calls == [(1, 3, 0.1), (2, 3, 0.1)]
        assert lock.held
    finally:
        lock.release()


def test_scheduled_free_lock_takes_no_deferral(lock_path):
    lock = lockmod.MaintenanceLock(lock_path)
    assert lockmod.acquire_scheduled(lock, defer=3600, retries=3, on_defer=pytest.fail, sleep=pytest.fail) == 0
    assert lock.held
    lock.release()


def test_scheduled_without_retries_fails_at_once(lock_path, holder_factory):
    holder_factory(lock_path)
    lock = lockmod.MaintenanceLock(lock_path)
    with pytest.raises(LockBusy) as err:
        lockmod.acquire_scheduled(lock, defer=3600, retries=0, on_defer=pytest.fail, sleep=pytest.fail)
    assert err.value.code == ALREADY_RUNNING


def test_read_only_lock_file_can_still_be_locked(lock_path, holder_factory, monkeypatch):
    """A lock file we may not write (owned by the appliance's archiving) still locks and excludes."""
    os.makedirs(os.path.dirname(lock_path))
    with open(lock_path, "w"):
        pass
    real_open = os.open

    def no_write(path, flags, *args):
        if path == lock_path and flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args)
    monkeypatch.setattr(lockmod.os, "open", no_write)
    with lockmod.MaintenanceLock(lock_path) as lock:
        assert lock.held
        monkeypatch.setattr(lockmod.os, "open", real_open)
        fd = os.open(lock_path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_replaced_lock_file_is_relocked(lock_path, holder_factory, monkeypatch):
    """If the file is swapped between open and flock, the lock follows the new file."""
    lock = lockmod.MaintenanceLock(lock_path)
    real_open = lock._open
    swapped = []

    def open_then_swap():
        fd = real_open()
        if not swapped:
            swapped.append(True)
            os.unlink(lock_path)
            holder_factory(lock_path)  # someone else now holds the new file
        return fd
    monkeypatch.setattr(lock, "_open", open_then_swap)
    with pytest.raises(LockBusy):
        lock.acquire(wait=0)
    assert not lock.held


def test_holder_none_when_free_and_ignores_dead_pid_in_file(lock_path):
    lock = lockmod.MaintenanceLock(lock_path)
    assert lock.holder() is None  # no file yet
    os.makedirs(os.path.dirname(lock_path))
    with open(lock_path, "w") as handle:
        handle.write("999999999\n")
    assert lock.holder() is None
