# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""`local`: the appliance's own disk (seed: "Disque dur serveur")."""

from __future__ import annotations

import errno
import io
import os
import uuid

from .. import errors
from ..archive import partial_name
from ..errors import TargetError
from ..fsutil import fsync_dir, read_pieces
from .base import CHUNK, RemoteFile, Target, job_dir


def _publish(partial: str, dest_dir: str, name: str, where: str, map_error, fill) -> None:
    """`fill()` writes and checks the partial file; then it gets its name - never over an existing
    archive (we hold the maintenance lock: no race) - and the folder is fsynced. On any failure the
    partial is removed and earlier files stay as they were; OSErrors become TargetError via `map_error`."""
    try:
        fill()
        final = os.path.join(dest_dir, name)
        if os.path.lexists(final):
            raise TargetError("%s: %s already exists; an archive is never replaced" % (where, name), errors.FAILED)
        os.replace(partial, final)
        fsync_dir(dest_dir)
    except BaseException as exc:
        try:
            os.unlink(partial)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise map_error(exc, where) from exc
        raise


SEND_CHUNK = 8 * CHUNK  # bytes per sendfile(2) call (each call is one chance for a kill or a full disk to show)

# sendfile(2) errors that mean "not between these two files" (an old kernel, a filesystem without it):
# the copy goes on through a buffer. Anything else (ENOSPC, EIO) is the copy's own failure.
_NO_SENDFILE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP)


def _copy_data(src, dst) -> int:
    """Copy what is left of `src` to `dst` (raw binary files); the number of bytes copied.

    sendfile(2), as `cp` copies (copy_file_range): the kernel moves the data from the page cache to
    the file without a round trip through Python. Where it is refused, one reused buffer (read_pieces): a fresh
    bytes object per read() is fresh memory for the kernel to hand out and zero each time, which
    doubled the copy's CPU on a VM that returns freed pages to its host (bench_local: 0.44x `cp`
    with read(), 0.64x into one buffer, 1.02x with sendfile). sendfile only from exactly a file open()
    made, as the sftp target's: a wrapper around one (a test pausing or killing the copy at a byte)
    sees every byte pass through its readinto (or read)."""
    copied = 0
    if src.__class__ is io.BufferedReader:
        try:
            while True:
                sent = os.sendfile(dst.fileno(), src.fileno(), None, SEND_CHUNK)
                if not sent:
                    return copied
                copied += sent
        except OSError as exc:
            if exc.errno not in _NO_SENDFILE:
                raise
    # From where sendfile stopped: it moved both files' offsets as far as it copied.
    for view in read_pieces(src, CHUNK):
        copied += len(view)
        while view:  # raw writes may be short
            written = dst.write(view)
            view = view[written:]
    return copied


def copy_atomic(src_path: str, dest_dir: str, name: str, size: int, where: str = "", map_error=None) -> None:
    """Copy `src_path` (`size` bytes) to dest_dir/name: written as
    partial_name(name) (_copy_data), fsync, rename, fsync of the folder (_publish). On
    any failure the partial is removed and earlier files stay as they were;
    OSErrors become TargetError via `map_error` (ENOSPC -> diskFull)."""
    where = where or dest_dir
    partial = os.path.join(dest_dir, partial_name(name))

    def fill() -> None:
        with open(src_path, "rb") as src:
            # Created 0600 at once: no chmod, which FAT filesystems refuse.
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb", buffering=0) as dst:
                copied = _copy_data(src, dst)
                os.fsync(dst.fileno())
        if copied != size:
            raise TargetError("%s: the archive %s changed while it was copied (%d bytes read, %d expected)"
                              % (where, name, copied, size), errors.FAILED)
    _publish(partial, dest_dir, name, where, map_error or os_error, fill)


# A local target on the filesystem of staging takes the finished archive by a hard link (link_atomic)
# instead of a second copy; elsewhere (EXDEV, links refused) it copies (copy_atomic). The kill tests that
# pause a local target in the middle of its copy refuse os.link in their child to get a copy to pause.
LINK_FROM_STAGING = True


def link_atomic(src_path: str, dest_dir: str, name: str, size: int, where: str = "", map_error=None) -> bool:
    """Put the finished archive `src_path` at dest_dir/name without a second copy: a hard link made
    under partial_name(name), then the same rename and fsync of the folder as copy_atomic. The
    archive's data is already on disk (the writer fsyncs it before the archive gets its name); the
    file is fsynced again here (nothing dirty: cheap) so the rule does not depend on the writer.
    Returns False, having changed nothing, when the folder cannot take a link to it (another
    filesystem: EXDEV; a filesystem without hard links; links refused): the caller copies instead."""
    where = where or dest_dir
    map_error = map_error or os_error
    partial = os.path.join(dest_dir, partial_name(name))
    try:
        try:
            os.unlink(partial)  # a killed run's leftover (copy_atomic truncates it; a link needs the name free)
        except FileNotFoundError:
            pass
        os.link(src_path, partial)
    except OSError:
        return False  # the copy either works or says what is wrong with the folder

    def fill() -> None:
        fd = os.open(partial, os.O_RDONLY)
        try:
            linked = os.fstat(fd).st_size
            os.fsync(fd)
        finally:
            os.close(fd)
        if linked != size:
            raise TargetError("%s: the archive %s changed before it was delivered (%d bytes, %d expected)"
                              % (where, name, linked, size), errors.FAILED)
    _publish(partial, dest_dir, name, where, map_error, fill)
    return True


def os_error(exc: OSError, where: str) -> TargetError:
    """Map an OSError on a filesystem target to a result code."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return TargetError("%s: no space left (%s)" % (where, exc.strerror), errors.DISK_FULL)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return TargetError("%s: permission denied (%s)" % (where, exc.strerror), errors.FAILED)
    return TargetError("%s: %s" % (where, exc), errors.FAILED)


class LocalTarget(Target):
    """Archives in <base>/starface-backup/<job>/ on a mounted filesystem. The usb target is this target on
    the filesystem of a drive it mounts (usb.py): listing, removal, reading, the write probe and the error
    mapping live here once; a subclass says where the files are (`base`), how errors name the place
    (`fs_error`) and whether the files stay reachable after the run (`local_path`)."""

    TYPE = "local"

    @property
    def base(self) -> str:
        return self.options.get("path") or self.ctx.settings.get("archive_dir") or "/var/lib/sar-backup/archives"

    @property
    def folder(self) -> str:
        return job_dir(self.base, self.ctx.job)

    def location(self) -> str:
        return self.base

    def fs_error(self, exc: OSError, path: str) -> TargetError:
        """An OSError on `path` of this filesystem as a TargetError with a result code."""
        return os_error(exc, path)

    def check_base(self) -> None:
        """A `path` the job gives must exist: a typo, or a backup disk that is not mounted, must not
        quietly fill the root file system. Only starface-backup/<job>/ below it is created. The
        settings' archive_dir (the collection's own directory, the default) is created when missing."""
        if self.options.get("path") and not os.path.isdir(self.base):
            raise TargetError("%s does not exist or is not a directory (a disk not mounted, or a typo?); the local "
                              "target creates only the folders below its path" % self.base, errors.MOUNTFAIL)

    def ensure_dir(self) -> None:
        self.check_base()
        try:
            os.makedirs(self.folder, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise self.fs_error(exc, self.folder) from exc

    def put(self, src_path: str, name: str, size: int) -> None:
        # Staging and the archive folder on one filesystem (the usual case): a link, not a second copy.
        if LINK_FROM_STAGING and link_atomic(src_path, self.folder, name, size, where=self.folder,
                                             map_error=self.fs_error):
            self.log("%s linked into %s (same filesystem as staging: no copy)" % (name, self.folder))
            return
        copy_atomic(src_path, self.folder, name, size, where=self.folder, map_error=self.fs_error)

    def listdir(self) -> list:
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self.fs_error(exc, self.folder) from exc
        out = []
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                stat = entry.stat(follow_symlinks=False)
                out.append(RemoteFile(entry.name, stat.st_size, stat.st_mtime))
        return out

    def remove(self, name: str) -> None:
        try:
            os.unlink(os.path.join(self.folder, name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self.fs_error(exc, self.folder) from exc

    def open_read(self, name: str):
        path = os.path.join(self.folder, name)
        try:
            return open(path, "rb")
        except OSError as exc:
            raise self.fs_error(exc, path) from exc

    def local_path(self, name: str):
        """Where archive `name` stays readable after the run (restores read it there), or None."""
        return os.path.join(self.folder, name)

    def probe_write(self) -> None:
        self.check_base()
        # The folder may not exist yet: probe the nearest existing ancestor.
        probe_dir = self.folder
        while not os.path.isdir(probe_dir):
            parent = os.path.dirname(probe_dir)
            if parent == probe_dir:
                break
            probe_dir = parent
        probe = os.path.join(probe_dir, ".sar-backup-probe-%s" % uuid.uuid4().hex)
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # 0600 at once: FAT refuses chmod
            with os.fdopen(fd, "wb") as handle:
                handle.write(b"probe")
        except OSError as exc:
            raise self.fs_error(exc, probe_dir) from exc
        finally:
            try:
                os.unlink(probe)
            except OSError:
                pass


TARGET = LocalTarget
