# SPDX-License-Identifier: GPL-3.0-or-later
"""The fast paths of a run (issue 10) keep every rule of the slow ones:

- a local target on the filesystem of staging gets the finished archive by a hard link (partial
  name, rename, fsync of the folder), not by a second copy (when local.LINK_FROM_STAGING is on); across filesystems, or where links are
  refused, it copies as before; an existing archive is never replaced; a killed run's partial is
  cleared;
- the dumps of different categories run at once: the archive holds each, and a dump that fails
  fails the run without leaving an archive (or a staged dump) behind."""

from __future__ import annotations

import errno
import os

import pytest

from ansible_collections.sar.backup.plugins.module_utils import archive, errors, runner, sources
from ansible_collections.sar.backup.plugins.module_utils.errors import TargetError
from ansible_collections.sar.backup.plugins.module_utils.job import validate_job
from ansible_collections.sar.backup.plugins.module_utils.store import Store, validate_settings
from ansible_collections.sar.backup.plugins.module_utils.targets import local
from ansible_collections.sar.backup.plugins.module_utils.targets.base import TargetContext
from ansible_collections.sar.backup.plugins.module_utils.archive import partial_name

NAME = "nightly_host_20260101T000000Z.sar"


@pytest.fixture(autouse=True)
def link_on(monkeypatch):
    """The link is off by default (local.LINK_FROM_STAGING, see its comment); these tests prove it."""
    monkeypatch.setattr(local, "LINK_FROM_STAGING", True)


def _target(base):
    ctx = TargetContext(job="nightly", host="host", config_dir=str(base), settings={"archive_dir": str(base)})
    return local.LocalTarget({"type": "local"}, ctx)


def _archive(directory, data=b"x" * 100000):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, NAME)
    with open(path, "wb") as handle:
        handle.write(data)
    return path, len(data)


def test_same_filesystem_links_instead_of_copying(tmp_path, monkeypatch):
    src, size = _archive(str(tmp_path / "staging"))
    target = _target(tmp_path / "archives")
    target.ensure_dir()
    synced = []
    monkeypatch.setattr(local, "fsync_dir", synced.append)
    monkeypatch.setattr(local, "copy_atomic", lambda *a, **k: pytest.fail("copied although a link was possible"))
    target.put(src, NAME, size)
    final = os.path.join(target.folder, NAME)
    assert os.stat(final).st_ino == os.stat(src).st_ino  # one file, two names: no second copy
    assert not os.path.exists(os.path.join(target.folder, partial_name(NAME)))
    assert synced == [target.folder]  # the rename is made durable
    target.verify(NAME, size, "")


def test_link_goes_through_the_partial_name(tmp_path, monkeypatch):
    src, size = _archive(str(tmp_path / "staging"))
    target = _target(tmp_path / "archives")
    target.ensure_dir()
    linked = []
    real_link = os.link

    def spy(a, b, *args, **kwargs):
        linked.append(os.path.basename(b))
        return real_link(a, b, *args, **kwargs)
    monkeypatch.setattr(local.os, "link", spy)
    # a killed run's partial under the same name does not stop the link
    with open(os.path.join(target.folder, partial_name(NAME)), "wb") as handle:
        handle.write(b"half")
    target.put(src, NAME, size)
    assert linked == [partial_name(NAME)]
    assert sorted(os.listdir(target.folder)) == [NAME]


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EPERM, errno.EMLINK])
def test_no_link_falls_back_to_the_copy(tmp_path, monkeypatch, code):
    src, size = _archive(str(tmp_path / "staging"))
    target = _target(tmp_path / "archives")
    target.ensure_dir()

    def refuse(*_args, **_kwargs):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(local.os, "link", refuse)
    target.put(src, NAME, size)
    final = os.path.join(target.folder, NAME)
    assert os.stat(final).st_ino != os.stat(src).st_ino
    assert open(final, "rb").read() == open(src, "rb").read()
    assert sorted(os.listdir(target.folder)) == [NAME]


def test_a_copy_of_several_pieces_is_byte_for_byte_the_archive(tmp_path, monkeypatch):
    """The copy reads into one reused buffer: every piece, the short last one too, lands whole and in order."""
    data = os.urandom(2 * local.CHUNK + 12345)
    src, size = _archive(str(tmp_path / "staging"), data)
    target = _target(tmp_path / "archives")
    target.ensure_dir()

    def refuse(*_args, **_kwargs):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
    monkeypatch.setattr(local.os, "link", refuse)
    target.put(src, NAME, size)
    with open(os.path.join(target.folder, NAME), "rb") as handle:
        assert handle.read() == data


@pytest.mark.parametrize("refused_after", [0, 1, 2])
def test_where_sendfile_is_refused_the_copy_goes_on_through_a_buffer(tmp_path, monkeypatch, refused_after):
    """sendfile(2) refused at once, or after some calls (EINVAL: not between these files): the buffer
    copies from where it stopped, and the archive arrives whole."""
    data = os.urandom(3 * local.SEND_CHUNK + 999)
    src, size = _archive(str(tmp_path / "staging"), data)
    calls = []
    real = os.sendfile

    def sendfile(out_fd, in_fd, offset, count):
        calls.append(count)
        if len(calls) > refused_after:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real(out_fd, in_fd, offset, count)
    monkeypatch.setattr(local.os, "sendfile", sendfile)
    dest = tmp_path / "dest"
    dest.mkdir()
    local.copy_atomic(src, str(dest), NAME, size)
    with open(str(dest / NAME), "rb") as handle:
        assert handle.read() == data
    assert len(calls) == refused_after + 1 and os.listdir(str(dest)) == [NAME]


def test_a_failing_sendfile_fails_the_copy_and_removes_the_partial(tmp_path, monkeypatch):
    """An error that is the copy's own (here EIO on the second call) is not a reason to try a buffer."""
    src, size = _archive(str(tmp_path / "staging"), os.urandom(2 * local.SEND_CHUNK))
    real, calls = os.sendfile, []

    def sendfile(out_fd, in_fd, offset, count):
        calls.append(count)
        if len(calls) == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(out_fd, in_fd, offset, count)
    monkeypatch.setattr(local.os, "sendfile", sendfile)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(TargetError) as info:
        local.copy_atomic(src, str(dest), NAME, size)
    assert "input/output error" in str(info.value).lower() and len(calls) == 2
    assert os.listdir(str(dest)) == []


def test_a_wrapped_source_is_copied_through_its_readinto(tmp_path, monkeypatch):
    """Not sendfile from a wrapper's descriptor (the kill and fault tests wrap open() to stop a copy at
    a byte): every byte passes through the wrapper."""
    data = os.urandom(local.SEND_CHUNK + 4321)
    src, size = _archive(str(tmp_path / "staging"), data)
    seen = [0]

    class Wrapper:
        def __init__(self, handle):
            self.handle = handle

        def readinto(self, buf):
            got = self.handle.readinto(buf)
            seen[0] += got
            return got

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def __getattr__(self, name):
            return getattr(self.handle, name)
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, mode="r", *a, **k: Wrapper(real_open(path, mode, *a, **k))
                        if path == src else real_open(path, mode, *a, **k))
    monkeypatch.setattr(local.os, "sendfile", lambda *_a: pytest.fail("sendfile from a wrapped source"))
    dest = tmp_path / "dest"
    dest.mkdir()
    local.copy_atomic(src, str(dest), NAME, size)
    assert seen[0] == len(data)
    with real_open(str(dest / NAME), "rb") as handle:
        assert handle.read() == data


def test_other_filesystem_copies(tmp_path):
    shm = "/dev/shm"
    if not os.path.isdir(shm) or not os.access(shm, os.W_OK) or os.stat(shm).st_dev == os.stat(str(tmp_path)).st_dev:
        pytest.skip("no second filesystem at /dev/shm")
    import tempfile
    staging = tempfile.mkdtemp(dir=shm)
    try:
        src, size = _archive(staging)
        target = _target(tmp_path / "archives")
        target.ensure_dir()
        target.put(src, NAME, size)
        final = os.path.join(target.folder, NAME)
        assert os.stat(final).st_dev != os.stat(src).st_dev
        assert open(final, "rb").read() == open(src, "rb").read()
        assert sorted(os.listdir(target.folder)) == [NAME]
    finally:
        import shutil
        shutil.rmtree(staging, ignore_errors=True)


def test_link_never_replaces_an_archive(tmp_path):
    src, size = _archive(str(tmp_path / "staging"))
    target = _target(tmp_path / "archives")
    target.ensure_dir()
    existing = os.path.join(target.folder, NAME)
    with open(existing, "wb") as handle:
        handle.write(b"earlier")
    with pytest.raises(TargetError, match="already exists"):
        target.put(src, NAME, size)
    assert open(existing, "rb").read() == b"earlier"
    assert sorted(os.listdir(target.folder)) == [NAME]


def test_link_checks_the_size(tmp_path):
    src, size = _archive(str(tmp_path / "staging"))
    target = _target(tmp_path / "archives")
    target.ensure_dir()
    with pytest.raises(TargetError, match="changed"):
        target.put(src, NAME, size + 1)
    assert os.listdir(target.folder) == []


# -- whole runs ---------------------------------------------------------------
@pytest.fixture
def host(tmp_path, appliance):
    store = Store(str(tmp_path / "etc"))
    settings = validate_settings({
        "profile": appliance.profile,
        "archive_dir": str(tmp_path / "archives"),
        "staging_dir": str(tmp_path / "staging"),
        "status_dir": str(tmp_path / "status"),
        "lock_path": str(tmp_path / "lock" / "sar-backup.lock"),
    })
    store.write_settings(settings)
    return {"store": store, "settings": settings, "tmp": tmp_path}


def _job(store, **over):
    raw = {"name": "nightly", "data": ["core", "cdr_voicemail", "announcements"], "targets": [{"type": "local"}]}
    raw.update(over)
    job = validate_job(raw)
    store.write_job(job)
    return job


def test_run_links_into_a_local_target_and_the_archive_verifies(host):
    job = _job(host["store"])
    lines = []
    res = runner.run_job(job, host["store"], log=lines.append)
    assert res["code"] == errors.SUCCESSFUL, res
    assert any("linked into" in line for line in lines), lines
    path = res["archive"]["path"]
    assert os.stat(path).st_nlink == 1  # staging is gone; the target's name is the only one left
    result = archive.verify(path)
    assert result["checksums_ok"] is True
    names = {m["name"] for m in result["members"]}
    assert {"db/core.pgdump", "db/cdr_voicemail.pgdump"} <= names
    assert os.listdir(host["settings"]["staging_dir"]) == []


def test_two_local_targets_get_the_same_archive(host, tmp_path):
    other = tmp_path / "second"
    other.mkdir()
    job = _job(host["store"], targets=[{"type": "local"}, {"type": "local", "path": str(other)}])
    res = runner.run_job(job, host["store"])
    assert res["code"] == errors.SUCCESSFUL, res
    first = res["archive"]["path"]
    second = os.path.join(str(other), "starface-backup", "nightly", res["archive"]["name"])
    assert open(first, "rb").read() == open(second, "rb").read()
    assert archive.verify(second)["checksums_ok"] is True


def test_dumps_run_at_once_and_one_failing_fails_the_run_cleanly(host, monkeypatch):
    job = _job(host["store"])
    real_dump = sources.dump
    started = []

    def failing(source, profile, dest_path, log=None):
        started.append(source.category)
        if source.category == "core":
            with open(dest_path, "wb") as handle:
                handle.write(b"PGDMP half a dump")
            os.unlink(dest_path)
            raise errors.SourceError("core: pg_dump failed (test)")
        return real_dump(source, profile, dest_path, log=log)
    monkeypatch.setattr(sources, "dump", failing)
    res = runner.run_job(job, host["store"])
    assert res["code"] == errors.SOURCE_FAILED, res
    assert sorted(started) == ["cdr_voicemail", "core"]
    archives = os.path.join(host["settings"]["archive_dir"])
    found = [f for _d, _s, fs in os.walk(archives) for f in fs] if os.path.isdir(archives) else []
    assert found == []
    assert os.listdir(host["settings"]["staging_dir"]) == []
