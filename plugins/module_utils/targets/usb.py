# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""`usb`: a USB mass-storage filesystem plugged into the appliance (seed: "Clé USB").

Discovery (pyudev): block devices (partitions, or whole disks formatted without
a partition table) whose udev properties say they carry a filesystem
(`ID_FS_TYPE` set, `ID_FS_USAGE=filesystem`), with a non-zero size, and that sit
on a USB bus (`is_usb`: `ID_BUS=usb` or an ancestor in the `usb` subsystem).
`label` matches `ID_FS_LABEL` (exactly, else case-insensitively: FAT labels are
stored upper-case), `uuid` matches `ID_FS_UUID` case-insensitively; with
neither, the only USB filesystem present is used and several are an error.

Mounting: a filesystem already mounted read-write (its root, per
/proc/self/mountinfo) is used where it is and left mounted. Otherwise it is
mounted with `mount -t <type> -o nosuid,nodev,noexec[,umask=077 for FAT/exFAT]
[,mount_options]` on a fresh 0700 directory below the `usb_mount_dir` setting
(default /run/sar-backup, the role's RuntimeDirectory), falling back to the
`staging_dir` setting. When the kernel cannot mount vfat/exfat (no driver), the
FUSE drivers are used instead: `fusefat -o rw+,blkdev,fsname=<dev>` (Debian
package fusefat) and `mount.exfat-fuse` (exfat-fuse). Both then run as
`fuseblk` mounts, so the kernel claims the device (no second mount of it) and
`umount` waits for the driver to write everything out. close() runs
`sync -f` on the mount, unmounts what this target mounted (retrying; as a last
resort a lazy unmount, always logged) and removes the directory.

Writing: the usb target is the `local` target (local.py) on the filesystem of
the drive: the same listing, removal, reading, write probe and error mapping,
archives in <mount>/starface-backup/<job>/ under a partial name, fsync, rename,
fsync of the folder (`copy_atomic`). What it adds: errors that mean the drive
(read-only, unplugged or failing: `mountfail`), and, refused before writing,
with code `diskFull` (the appliance's word for "this medium cannot take the
archive", as EFBIG is for the local target): an archive larger than the free
space, and on FAT (vfat) any archive of 4 GiB or more, which FAT cannot store.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

from .. import errors
from ..archive import partial_pattern
from ..errors import MissingLibrary, TargetError
from ..fsutil import format_size
from .local import LocalTarget, copy_atomic
from .local import os_error as local_os_error

try:
    import pyudev
except ImportError:  # pragma: no cover
    pyudev = None

DEFAULT_MOUNT_DIR = "/run/sar-backup"
FAT_TYPES = ("vfat", "msdos", "fat")
FAT_MAX_FILE = 4 * 1024 ** 3 - 1  # FAT stores a file size in 32 bits
# mount(8) of a hardened service may lack sbin in PATH.
TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
COMMAND_TIMEOUT = 120
UMOUNT_ATTEMPTS = 3
UMOUNT_RETRY_DELAY = 1.0  # seconds, times the attempt number


def is_usb(device) -> bool:
    """Whether a pyudev block device sits on a USB bus. Tests replace this
    (monkeypatch) to accept their loop devices: nothing here is on a USB bus."""
    if device.properties.get("ID_BUS") == "usb":
        return True
    return any(parent.subsystem == "usb" for parent in device.ancestors)


@dataclass
class UsbFilesystem:
    """A filesystem udev found on a USB block device."""

    node: str  # /dev/sdb1
    label: str
    uuid: str
    fstype: str
    size: int  # bytes of the block device
    devnum: int  # dev_t, to find it in mountinfo

    def describe(self) -> str:
        return "%s (label %s, uuid %s, %s, %s)" % (
            self.node, self.label or "-", self.uuid or "-", self.fstype, format_size(self.size))


@dataclass
class Mount:
    mountpoint: str
    writable: bool


def _udev_decode(value: str) -> str:
    """udev's *_ENC properties escape bytes as \\xNN (e.g. spaces in labels)."""
    raw = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), value)
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def discover(context=None) -> list:
    """Every USB filesystem udev knows, sorted by device node."""
    if pyudev is None:
        raise MissingLibrary("pyudev", "usb target")
    context = context or pyudev.Context()
    found = []
    for device in context.list_devices(subsystem="block"):
        props = device.properties
        fstype = props.get("ID_FS_TYPE")
        if not fstype or props.get("ID_FS_USAGE") != "filesystem":
            continue
        if device.device_type not in ("disk", "partition") or not device.device_node:
            continue
        try:
            size = device.attributes.asint("size") * 512  # sysfs counts 512-byte sectors
        except (KeyError, ValueError, UnicodeDecodeError):
            size = 0
        if size <= 0:  # empty card-reader slot, or a stale udev entry of a gone device
            continue
        if not is_usb(device):
            continue
        label = props.get("ID_FS_LABEL_ENC")
        label = _udev_decode(label) if label else (props.get("ID_FS_LABEL") or "")
        found.append(UsbFilesystem(node=device.device_node, label=label, uuid=props.get("ID_FS_UUID") or "",
                                   fstype=fstype, size=size, devnum=device.device_number))
    return sorted(found, key=lambda f: f.node)


def select(found: list, label=None, uuid_=None) -> UsbFilesystem:
    """The filesystem the options name (or the only one); TargetError(mountfail) otherwise."""
    listing = "; ".join(f.describe() for f in found)
    if uuid_:
        matches = [f for f in found if f.uuid.lower() == uuid_.lower()]
        wanted = "uuid %s" % uuid_
    elif label:
        matches = [f for f in found if f.label == label] or [f for f in found if f.label.lower() == label.lower()]
        wanted = "label %s" % label
    else:
        if not found:
            hint = ""
            if not os.path.isdir("/run/udev/data"):
                hint = "; udev does not seem to run on this host (no /run/udev/data), so no filesystem can be recognized"
            raise TargetError("no USB storage found (plug in a USB drive with a filesystem on it, e.g. ext4, "
                              "exFAT or FAT32%s)" % hint, errors.MOUNTFAIL)
        if len(found) > 1:
            raise TargetError("several USB filesystems are present, set label or uuid to choose one: %s" % listing,
                              errors.MOUNTFAIL)
        return found[0]
    if not matches:
        raise TargetError("no USB storage with %s found (present: %s)" % (wanted, listing or "none"), errors.MOUNTFAIL)
    if len(matches) > 1:
        raise TargetError("several USB filesystems have %s, set uuid to choose one: %s"
                          % (wanted, "; ".join(f.describe() for f in matches)), errors.MOUNTFAIL)
    return matches[0]


def _unescape_mountinfo(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def mounts_of(fs: UsbFilesystem, mountinfo: str = "/proc/self/mountinfo") -> list:
    """Where the root of `fs` is mounted: Mount entries, in mount order."""
    majmin = "%d:%d" % (os.major(fs.devnum), os.minor(fs.devnum))
    out = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            parts = line.split()
            try:
                sep = parts.index("-", 6)
                source = _unescape_mountinfo(parts[sep + 2])
                super_opts = parts[sep + 3].split(",")
            except (ValueError, IndexError):
                continue
            # A kernel or fuseblk mount carries the device number; a plain FUSE
            # mount only its source name.
            if parts[2] != majmin and os.path.realpath(source) != fs.node:
                continue
            if parts[3] != "/":  # a bind mount of a sub-folder is not the filesystem's root
                continue
            writable = "rw" in parts[5].split(",") and "ro" not in super_opts
            out.append(Mount(_unescape_mountinfo(parts[4]), writable))
    return out


def is_mountpoint(path: str, mountinfo: str = "/proc/self/mountinfo") -> bool:
    real = os.path.realpath(path)
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as handle:
        return any(len(parts) > 4 and _unescape_mountinfo(parts[4]) == real
                   for parts in (line.split() for line in handle))


def _run(cmd: list) -> tuple:
    """(exit code, combined output) of a command; 127 when it cannot run."""
    env = dict(os.environ, LC_ALL="C", PATH=TOOL_PATH + ":" + os.environ.get("PATH", ""))
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=env, timeout=COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return 127, str(exc)
    return proc.returncode, proc.stdout.decode("utf-8", "replace").strip()


def _which(tool: str):
    return shutil.which(tool, path=TOOL_PATH + ":" + os.environ.get("PATH", ""))


def os_error(exc: OSError, where: str) -> TargetError:
    """Map an OSError on the drive to a result code: the local target's mapping (local.os_error), except
    for what means the drive itself (write-protected, unplugged, failing): mountfail."""
    if exc.errno == errno.EROFS:
        return TargetError("%s: the filesystem is read-only (write-protected, or mounted read-only)" % where,
                           errors.MOUNTFAIL)
    if exc.errno in (errno.EIO, errno.ENODEV, errno.ENXIO):
        return TargetError("%s: I/O error (%s): the drive was unplugged or is failing" % (where, exc.strerror),
                           errors.MOUNTFAIL)
    return local_os_error(exc, where)


class UsbTarget(LocalTarget):
    """A local target on the filesystem of a USB drive, found and mounted by connect(), unmounted by close()."""

    TYPE = "usb"

    def __init__(self, options: dict, ctx):
        super().__init__(options, ctx)
        self.fs = None  # UsbFilesystem once connected
        self.mountpoint = None
        self.mounted_here = False  # we mounted it, so we unmount it
        self.unmount_problem = None  # set by close() when unmounting failed

    # -- where -------------------------------------------------------------
    def location(self) -> str:
        return self.options.get("label") or self.options.get("uuid") or (self.fs.node if self.fs else "")

    @property
    def base(self) -> str:
        return self.mountpoint

    def check_base(self) -> None:
        """The drive's root: connect() found it mounted, or mounted it."""

    def fs_error(self, exc: OSError, path: str) -> TargetError:
        return os_error(exc, "%s: %s" % (self._where(), path))

    def local_path(self, name: str):
        return None  # the drive is unmounted after the run: nothing stays readable there

    def _where(self) -> str:
        where = self.fs.node if self.fs else "USB"
        if self.options.get("label") or self.options.get("uuid"):
            where = "%s (%s)" % (self.location(), where)
        return where

    # -- connect / close -----------------------------------------------------
    def connect(self) -> None:
        if pyudev is None:
            raise MissingLibrary("pyudev", "usb target")
        self.fs, self.mountpoint, self.mounted_here = None, None, False
        try:
            found = discover()
        except MissingLibrary:
            raise
        except Exception as exc:  # pylint: disable=broad-except
            raise TargetError("cannot list block devices through udev: %s" % exc, errors.MOUNTFAIL) from exc
        self.fs = select(found, label=self.options.get("label"), uuid_=self.options.get("uuid"))
        try:
            mounts = mounts_of(self.fs)
        except OSError as exc:
            raise TargetError("cannot read the mount table: %s" % exc, errors.MOUNTFAIL) from exc
        for mount in mounts:
            if mount.writable and os.path.isdir(mount.mountpoint):
                self.mountpoint = mount.mountpoint
                self.log("%s is mounted at %s, using it there" % (self.fs.describe(), mount.mountpoint))
                return
        if mounts:
            raise TargetError("%s is mounted read-only at %s: remount it read-write or unmount it"
                              % (self._where(), mounts[0].mountpoint), errors.MOUNTFAIL)
        self._mount()

    def _mount_dir(self) -> str:
        tried = []
        for base in (self.ctx.settings.get("usb_mount_dir") or DEFAULT_MOUNT_DIR, self.ctx.settings.get("staging_dir")):
            if not base:
                continue
            try:
                os.makedirs(base, mode=0o700, exist_ok=True)
                return tempfile.mkdtemp(prefix="usb-", dir=base)  # mkdtemp makes it 0700
            except OSError as exc:
                tried.append("%s: %s" % (base, exc.strerror))
        raise TargetError("no directory to mount %s on (%s)" % (self._where(), "; ".join(tried)), errors.MOUNTFAIL)

    def _mount(self) -> None:
        fs = self.fs
        directory = self._mount_dir()
        user_opts = [o.strip() for o in (self.options.get("mount_options") or "").split(",") if o.strip()]
        opts = ["nosuid", "nodev", "noexec"]
        if fs.fstype in FAT_TYPES or fs.fstype == "exfat":
            opts.append("umask=077")  # FAT has no permissions: keep archives root-only
        code, output = _run(["mount", "-t", fs.fstype, "-o", ",".join(opts + user_opts), fs.node, directory])
        how = "mount -t %s" % fs.fstype
        if code != 0:
            fuse = self._fuse_command(directory, ["nosuid", "nodev", "noexec"] + user_opts)
            if fuse is None:
                self._rmdir(directory)
                raise TargetError("cannot mount %s: %s" % (fs.describe(), output or "mount exit code %d" % code)
                                  + self._fuse_hint(), errors.MOUNTFAIL)
            kernel_output = output
            code, output = _run(fuse)
            how = fuse[0]
            if code != 0:
                self._rmdir(directory)
                detail = output or "exit code %d" % code
                raise TargetError("cannot mount %s: kernel: %s; %s: %s" % (fs.describe(), kernel_output, fuse[0], detail),
                                  errors.MOUNTFAIL)
        self.mountpoint = directory
        self.mounted_here = True
        self.log("mounted %s at %s (%s)" % (fs.describe(), directory, how))

    def _fuse_command(self, directory: str, opts: list):
        """The FUSE driver command for FAT/exFAT when the kernel has no driver."""
        fs = self.fs
        if fs.fstype in FAT_TYPES:
            tool = _which("fusefat")
            if tool:
                # rw+: fusefat is read-only without it. blkdev: a fuseblk mount,
                # so the kernel holds the device and umount waits for the writes.
                return [tool, "-o", ",".join(["rw+", "blkdev", "fsname=" + fs.node] + opts), fs.node, directory]
        elif fs.fstype == "exfat":
            tool = _which("mount.exfat-fuse")
            if tool:
                return [tool, "-o", ",".join(opts), fs.node, directory]
        return None

    def _fuse_hint(self) -> str:
        if self.fs.fstype in FAT_TYPES:
            return " (the FUSE driver fusefat, Debian package fusefat, is not installed either)"
        if self.fs.fstype == "exfat":
            return " (the FUSE driver mount.exfat-fuse, Debian package exfat-fuse, is not installed either)"
        return ""

    @staticmethod
    def _rmdir(directory: str) -> None:
        try:
            os.rmdir(directory)
        except OSError:
            pass

    def close(self) -> None:
        """sync, then unmount what we mounted (never raises; problems are logged
        and kept in `unmount_problem`)."""
        if not self.mounted_here or not self.mountpoint:
            return
        directory = self.mountpoint
        try:
            if _run(["sync", "-f", directory])[0] != 0:
                os.sync()
            output = ""
            for attempt in range(1, UMOUNT_ATTEMPTS + 1):
                code, output = _run(["umount", directory])
                if code == 0 or not is_mountpoint(directory):
                    break
                if attempt < UMOUNT_ATTEMPTS:
                    time.sleep(UMOUNT_RETRY_DELAY * attempt)
            if is_mountpoint(directory):
                # Still busy: detach it from the tree so nothing writes through our
                # directory any more; the kernel finishes when the last user goes.
                lazy_code, lazy_output = _run(["umount", "-l", directory])
                self.unmount_problem = ("could not unmount %s from %s (%s); %s" % (
                    self._where(), directory, output,
                    "detached it lazily: wait before unplugging the drive" if lazy_code == 0
                    else "it is STILL MOUNTED there (%s)" % lazy_output))
                self.log(self.unmount_problem)
            if not is_mountpoint(directory):
                self._rmdir(directory)
                self.mounted_here = False
                self.log("unmounted %s" % self._where())
        except Exception as exc:  # pylint: disable=broad-except
            self.unmount_problem = "unmounting %s from %s failed: %s" % (self._where(), directory, exc)
            self.log(self.unmount_problem)

    # -- writing -------------------------------------------------------------
    def _free_bytes(self) -> int:
        stat = os.statvfs(self.folder)
        blocks = stat.f_bfree if os.geteuid() == 0 else stat.f_bavail
        return blocks * stat.f_frsize

    def put(self, src_path: str, name: str, size: int) -> None:
        where = self._where()
        if self.fs.fstype in FAT_TYPES and size > FAT_MAX_FILE:
            raise TargetError("%s: the archive %s has %d bytes, but a FAT (%s) filesystem cannot store a file of "
                              "4 GiB or more; format the drive as exFAT or ext4" % (where, name, size, self.fs.fstype),
                              errors.DISK_FULL)
        # Leftover partials of this job (an interrupted run) only take space.
        partials = partial_pattern(self.ctx.job)
        for entry in self.listdir():
            if partials.match(entry.name):
                self.remove(entry.name)
        try:
            free = self._free_bytes()
        except OSError as exc:
            raise os_error(exc, where) from exc
        if size > free:
            raise TargetError("%s: no space left for %s (%d bytes needed, %d free); prune old archives "
                              "(keep) or use a larger drive" % (where, name, size, free), errors.DISK_FULL)
        # A copy, never local's link from staging: a drive is never the filesystem of staging.
        copy_atomic(src_path, self.folder, name, size, where=where, map_error=os_error)


TARGET = UsbTarget
