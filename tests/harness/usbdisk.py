# SPDX-License-Identifier: GPL-3.0-or-later
"""Loop-device filesystems standing in for USB drives, for tests of the `usb` target.

Nothing on the test machines is on a USB bus, so a test widens
`targets.usb.is_usb` to the device nodes made here (`disks.only(...)`) and
never to any other disk of the machine.

    with UsbDisks() as disks:                     # starts systemd-udevd if none runs
        disk = disks.make("ext4", size_mb=32)     # image in tmp, losetup, mkfs, udev knows it
        disk.node, disk.label, disk.uuid, disk.fstype
        monkeypatch.setattr(usb, "is_usb", disks.only(disk))
        path = disks.mount(disk)                  # "someone else" mounts it (FUSE for FAT/exFAT)
        disks.mounts_of(disk)                     # where it is mounted now
        disks.unmount(disk)
    # detaches every loop device, unmounts what is left, stops udevd if the
    # harness started it and no other test process still uses it

`make` writes the filesystem on the image file, attaches it with
`losetup -f --show`, then `udevadm trigger --action=add` for that device only
and polls until pyudev reports its ID_FS_TYPE and ID_FS_UUID. Labels are random
per disk (`SAR` + 8 hex digits, valid for FAT too), so parallel test runs
never see each other's drives by label.

systemd-udevd is shared by every test process of the machine: users register
their pid in /run/sar-test-udevd/users (under a flock); the first one starts
`systemd-udevd` (when none answers `udevadm control --ping`) and writes its
pid there; the last one out stops it. A udevd that was running before any
test (the machine's own) is never stopped.

`unavailable()` / `fuse_unavailable(fstype)` return why the loop devices / a
FUSE mount cannot work here (None when they can), for pytest skips.
Needs root and the Debian packages util-linux, e2fsprogs, dosfstools, udev,
fusefat (FAT), exfat-fuse + exfatprogs (exFAT).
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass

STATE_DIR = "/run/sar-test-udevd"
UDEVD_CANDIDATES = ("/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd")
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MKFS = {
    "ext4": lambda label, image: ["mkfs.ext4", "-q", "-F", "-L", label, image],
    "vfat": lambda label, image: ["mkfs.vfat", "-n", label, image],
    "exfat": lambda label, image: ["mkfs.exfat", "-L", label, image],
}
FUSE_TOOL = {"vfat": "fusefat", "exfat": "mount.exfat-fuse"}


def _env() -> dict:
    return dict(os.environ, LC_ALL="C", PATH=SBIN_PATH + ":" + os.environ.get("PATH", ""))


def _which(tool: str):
    return shutil.which(tool, path=SBIN_PATH + ":" + os.environ.get("PATH", ""))


def _run(argv: list, what: str, timeout: float = 120) -> str:
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=_env(), timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (what, proc.returncode, proc.stdout.strip()))
    return proc.stdout


def _ok(argv: list, timeout: float = 30) -> bool:
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=_env(), timeout=timeout, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def udevd_binary():
    for path in UDEVD_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return _which("systemd-udevd")


def unavailable():
    """Why loop-device drives cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (losetup, mount)"
    for tool in ("losetup", "mount", "umount", "udevadm", "blkid", "mkfs.ext4"):
        if not _which(tool):
            return "%s is not installed" % tool
    if not udevd_binary():
        return "systemd-udevd is not installed (Debian package udev)"
    if not os.path.exists("/dev/loop-control"):
        return "no /dev/loop-control: loop devices are unavailable"
    try:
        import pyudev  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        return "pyudev is not installed"
    try:
        _run(["losetup", "-f"], "losetup -f")
    except (RuntimeError, OSError) as exc:
        return "no free loop device: %s" % exc
    return None


def fuse_unavailable(fstype: str):
    """Why a FUSE mount of `fstype` (vfat/exfat) cannot work here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse: FUSE is unavailable in this environment"
    if not _which(FUSE_TOOL[fstype]):
        return "%s is not installed" % FUSE_TOOL[fstype]
    mkfs = MKFS[fstype]("X", "x")[0]
    if not _which(mkfs):
        return "%s is not installed" % mkfs
    if "fuse" not in open("/proc/filesystems", encoding="ascii").read():
        return "the kernel has no fuse filesystem"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _is_udevd(pid: int) -> bool:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return b"udev" in handle.read()
    except OSError:
        return False


class Udevd:
    """Shared systemd-udevd for test processes (see the module docstring)."""

    def __init__(self, state_dir: str = STATE_DIR):
        self.state_dir = state_dir
        self.users = os.path.join(state_dir, "users")
        self.pid_file = os.path.join(state_dir, "pid")
        self.registered = False

    def _locked(self):
        os.makedirs(self.users, mode=0o700, exist_ok=True)
        handle = open(os.path.join(self.state_dir, "lock"), "a+", encoding="ascii")  # pylint: disable=consider-using-with
        fcntl.flock(handle, fcntl.LOCK_EX)
        return handle

    @staticmethod
    def running() -> bool:
        return _ok(["udevadm", "control", "--ping", "--timeout=5"], timeout=10)

    def acquire(self) -> None:
        lock = self._locked()
        try:
            with open(os.path.join(self.users, str(os.getpid())), "w", encoding="ascii"):
                pass
            self.registered = True
            if not self.running():
                log = open(os.path.join(self.state_dir, "udevd.log"), "wb")  # pylint: disable=consider-using-with
                proc = subprocess.Popen([udevd_binary()], stdin=subprocess.DEVNULL, stdout=log,  # pylint: disable=consider-using-with
                                        stderr=log, start_new_session=True, env=_env())
                log.close()
                with open(self.pid_file, "w", encoding="ascii") as handle:
                    handle.write(str(proc.pid))
                deadline = time.monotonic() + 30
                while not self.running():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("systemd-udevd did not start (see %s/udevd.log)" % self.state_dir)
                    time.sleep(0.1)
        finally:
            lock.close()

    def release(self) -> None:
        if not self.registered:
            return
        lock = self._locked()
        try:
            try:
                os.unlink(os.path.join(self.users, str(os.getpid())))
            except FileNotFoundError:
                pass
            self.registered = False
            alive = []
            for name in os.listdir(self.users):
                if name.isdigit() and _pid_alive(int(name)):
                    alive.append(name)
                else:
                    os.unlink(os.path.join(self.users, name))
            if alive or not os.path.exists(self.pid_file):
                return
            with open(self.pid_file, encoding="ascii") as handle:
                pid = int(handle.read().strip() or 0)
            if pid and _pid_alive(pid) and _is_udevd(pid):
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while _pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if _pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
            os.unlink(self.pid_file)
        finally:
            lock.close()


@dataclass
class LoopDisk:
    image: str
    node: str  # /dev/loopN
    label: str
    uuid: str
    fstype: str
    size: int  # bytes

    @property
    def sysname(self) -> str:
        return os.path.basename(self.node)

    @property
    def majmin(self) -> str:
        rdev = os.stat(self.node).st_rdev
        return "%d:%d" % (os.major(rdev), os.minor(rdev))


def _unescape(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


class UsbDisks:
    """Loop-device "USB drives" of one test (module, session...); see the module docstring."""

    def __init__(self):
        self.root = None
        self.disks = []
        self.udevd = Udevd()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def start(self):
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        self.root = tempfile.mkdtemp(prefix="sar-usb-")
        self.udevd.acquire()
        return self

    @staticmethod
    def new_label() -> str:
        return "SAR" + secrets.token_hex(4).upper()  # 11 characters: fits a FAT label

    def make(self, fstype: str = "ext4", size_mb: int = 32, label: str | None = None) -> LoopDisk:
        label = label or self.new_label()
        image = os.path.join(self.root, "%s.img" % label)
        with open(image, "wb") as handle:
            handle.truncate(size_mb * 1024 * 1024)
        _run(MKFS[fstype](label, image), "mkfs %s" % fstype)
        node = _run(["losetup", "-f", "--show", image], "losetup").strip()
        fs_uuid = _run(["blkid", "-p", "-o", "value", "-s", "UUID", node], "blkid %s" % node).strip()
        disk = LoopDisk(image=image, node=node, label=label, uuid=fs_uuid, fstype=fstype, size=size_mb * 1024 * 1024)
        self.disks.append(disk)
        if not self._udev_sync(node, "add", lambda p: p.get("ID_FS_UUID") == fs_uuid and p.get("ID_FS_TYPE") == fstype, 30):
            raise RuntimeError("udev does not report the %s filesystem on %s (uuid %s)" % (fstype, node, fs_uuid))
        return disk

    @staticmethod
    def _udev_props(node: str) -> dict:
        import pyudev  # pylint: disable=import-outside-toplevel
        try:
            return dict(pyudev.Devices.from_device_file(pyudev.Context(), node).properties)
        except Exception:  # pylint: disable=broad-except
            return {}

    def _udev_sync(self, node: str, action: str, done, timeout: float) -> bool:
        """Have udev (re)probe `node` until done(properties) holds. Polls pyudev
        instead of `udevadm trigger --settle`, which can wait forever for an event
        of a loop device that a parallel test run detaches or re-attaches."""
        deadline = time.monotonic() + timeout
        while True:
            _ok(["udevadm", "trigger", "--action=%s" % action, node], timeout=30)
            retrigger = time.monotonic() + 2
            while time.monotonic() < min(retrigger, deadline):
                if done(self._udev_props(node)):
                    return True
                time.sleep(0.05)
            if time.monotonic() >= deadline:
                return False

    def only(self, *disks: LoopDisk):
        """An `is_usb` replacement accepting only these disks' device nodes."""
        nodes = {d.node for d in disks}
        return lambda device: device.device_node in nodes

    def mounts_of(self, disk: LoopDisk) -> list:
        """Mount points of this disk now (kernel, fuseblk, or FUSE with the device as source)."""
        majmin = disk.majmin
        out = []
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
            for line in handle:
                parts = line.split()
                sep = parts.index("-", 6)
                if parts[2] == majmin or _unescape(parts[sep + 2]) == disk.node:
                    out.append(_unescape(parts[4]))
        return out

    def mount(self, disk: LoopDisk, options: str = "") -> str:
        """Mount as "someone else" would (not the target): kernel for ext4, FUSE for FAT/exFAT."""
        path = tempfile.mkdtemp(prefix="mnt-%s-" % disk.label, dir=self.root)
        if disk.fstype == "ext4":
            argv = ["mount", "-t", "ext4"] + (["-o", options] if options else []) + [disk.node, path]
        elif disk.fstype == "vfat":
            argv = ["fusefat", "-o", ",".join(x for x in ("rw+,blkdev,fsname=" + disk.node, options) if x), disk.node, path]
        else:
            argv = ["mount.exfat-fuse"] + (["-o", options] if options else []) + [disk.node, path]
        _run(argv, "mounting %s" % disk.node)
        return path

    def unmount(self, disk: LoopDisk) -> None:
        for path in reversed(self.mounts_of(disk)):
            if not _ok(["umount", path]):
                _ok(["umount", "-l", path])

    def detach(self, disk: LoopDisk) -> None:
        self.unmount(disk)
        _ok(["losetup", "-d", disk.node])
        # udev forgets the filesystem (else a stale ID_FS_* stays for /dev/loopN
        # when udevd stops); a parallel run may already have re-used the node.
        self._udev_sync(disk.node, "change", lambda p: p.get("ID_FS_UUID") != disk.uuid, 10)
        if disk in self.disks:
            self.disks.remove(disk)

    def close(self) -> None:
        try:
            for disk in list(self.disks):
                try:
                    self.detach(disk)
                except (OSError, RuntimeError):
                    pass
        finally:
            self.udevd.release()
            if self.root:
                # Only remove the tree when nothing is mounted below it any more.
                with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
                    busy = any(_unescape(line.split()[4]).startswith(self.root + "/") for line in handle)
                if not busy:
                    shutil.rmtree(self.root, ignore_errors=True)
                self.root = None
