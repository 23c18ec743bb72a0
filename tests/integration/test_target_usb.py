# SPDX-License-Identifier: GPL-3.0-or-later
"""The `usb` target with the real pyudev, a real systemd-udevd, real mount(8)
and loop-device filesystems (tests/harness/usbdisk.py) standing in for USB
drives: finding the drive by label, by uuid or as the only one; mounting and
unmounting (or using someone else's mount and leaving it); verification;
retention; disk full; FAT and exFAT through FUSE and FAT's 4 GiB limit.

`usb.is_usb` is widened to the loop devices each test made (matched by device
node), so no other disk of the machine is ever seen by the target."""

from __future__ import annotations

import hashlib
import os

import pytest

from harness import usbdisk

from ansible_collections.sar.backup.plugins.module_utils import errors
from ansible_collections.sar.backup.plugins.module_utils.errors import MissingLibrary, TargetError
from ansible_collections.sar.backup.plugins.module_utils.job import validate_target
from ansible_collections.sar.backup.plugins.module_utils.targets import usb
from ansible_collections.sar.backup.plugins.module_utils.targets.base import ROOT_DIR, TargetContext
from ansible_collections.sar.backup.plugins.module_utils.archive import partial_name

UNAVAILABLE = usbdisk.unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason="loop-device USB drives unavailable: %s" % UNAVAILABLE)

JOB = "nightly"
HOST = "pbx1"
MiB = 1024 * 1024


def name_at(second: int, job: str = JOB) -> str:
    return "%s_%s_20260102T0304%02dZ.sar" % (job, HOST, second)


NAME = name_at(5)


@pytest.fixture(scope="module")
def usb_disks():
    with usbdisk.UsbDisks() as disks:
        yield disks


class Drives:
    """The drives of one test: made on demand, detached after the test."""

    def __init__(self, disks, monkeypatch, tmp_path):
        self.disks = disks
        self.monkeypatch = monkeypatch
        self.made = []
        self.mount_base = str(tmp_path / "mnt")
        self.tmp_path = tmp_path
        self.log = []

    def make(self, fstype: str = "ext4", size_mb: int = 32):
        disk = self.disks.make(fstype, size_mb)
        self.made.append(disk)
        return disk

    def expose(self, *disks) -> None:
        """Only these drives count as USB for the target."""
        self.monkeypatch.setattr(usb, "is_usb", self.disks.only(*disks))

    def target(self, **options):
        raw = {"type": "usb"}
        raw.update(options)
        ctx = TargetContext(job=JOB, host=HOST, config_dir=str(self.tmp_path), log=self.log.append,
                            settings={"usb_mount_dir": self.mount_base, "staging_dir": str(self.tmp_path / "staging")})
        return usb.UsbTarget(validate_target(raw, 0), ctx)

    def files(self, disk, job: str = JOB) -> dict:
        """{name: sha256} of the job folder on the drive (mounted by the harness to look)."""
        was_mounted = self.disks.mounts_of(disk)
        path = was_mounted[0] if was_mounted else self.disks.mount(disk)
        try:
            folder = os.path.join(path, ROOT_DIR, job)
            if not os.path.isdir(folder):
                return {}
            return {n: sha_of(os.path.join(folder, n)) for n in sorted(os.listdir(folder))}
        finally:
            if not was_mounted:
                self.disks.unmount(disk)

    def our_mount_dirs(self) -> list:
        return sorted(os.listdir(self.mount_base)) if os.path.isdir(self.mount_base) else []

    def cleanup(self) -> None:
        for disk in self.made:
            self.disks.detach(disk)


@pytest.fixture
def drives(usb_disks, monkeypatch, tmp_path):
    state = Drives(usb_disks, monkeypatch, tmp_path)
    yield state
    state.cleanup()


def sha_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(MiB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_archive(tmp_path, size: int, name: str = NAME) -> tuple:
    path = tmp_path / ("src-" + name)
    data = os.urandom(size)
    path.write_bytes(data)
    return str(path), hashlib.sha256(data).hexdigest()


def deliver(target, path: str, sha: str, name: str = NAME) -> dict:
    return target.deliver(path, name, os.path.getsize(path), sha)


# -- finding the drive ----------------------------------------------------------

@pytest.mark.parametrize("how", ["label", "uuid", "only"])
def test_deliver_finds_the_drive_mounts_writes_and_unmounts(drives, tmp_path, how):
    disk = drives.make("ext4")
    other = drives.make("ext4")
    if how == "only":
        drives.expose(disk)
        target = drives.target(verify="full")
    else:
        drives.expose(disk, other)
        # uuid upper-cased: the match ignores case
        target = drives.target(verify="full", **({"label": disk.label} if how == "label" else {"uuid": disk.uuid.upper()}))
    path, sha = make_archive(tmp_path, 3 * MiB + 17)  # several chunks and an odd tail

    outcome = deliver(target, path, sha)

    assert outcome == {"bytes": 3 * MiB + 17, "pruned": []}
    assert drives.disks.mounts_of(disk) == [], "the target must unmount what it mounted"
    assert drives.our_mount_dirs() == [], "the private mount directory must be removed"
    assert target.unmount_problem is None
    assert any("mounted %s" % disk.node in line for line in drives.log)
    assert target.location() == {"label": disk.label, "uuid": disk.uuid.upper(), "only": disk.node}[how]
    assert drives.files(disk) == {NAME: sha}
    assert drives.files(other) == {}, "the other drive must not be written"


def test_several_drives_without_label_or_uuid_is_mountfail_listing_them(drives, tmp_path):
    one, two = drives.make("ext4"), drives.make("ext4")
    drives.expose(one, two)
    path, sha = make_archive(tmp_path, 1000)

    with pytest.raises(TargetError) as info:
        deliver(drives.target(), path, sha)

    assert info.value.code == errors.MOUNTFAIL
    message = str(info.value)
    assert "several USB filesystems" in message and "label or uuid" in message
    for disk in (one, two):
        assert disk.node in message and disk.label in message and disk.uuid in message
    assert "ext4" in message and "MB" in message
    assert drives.disks.mounts_of(one) == [] and drives.disks.mounts_of(two) == []


def test_no_drive_at_all_is_mountfail(drives, tmp_path):
    drives.make("ext4")
    drives.expose()  # nothing counts as USB
    path, sha = make_archive(tmp_path, 1000)
    with pytest.raises(TargetError) as info:
        deliver(drives.target(), path, sha)
    assert info.value.code == errors.MOUNTFAIL
    assert "no USB storage found" in str(info.value) and "plug in a USB drive" in str(info.value)


@pytest.mark.parametrize("option", ["label", "uuid"])
def test_absent_label_or_uuid_is_mountfail_naming_it(drives, tmp_path, option):
    disk = drives.make("ext4")
    drives.expose(disk)
    wanted = "NOSUCHDRIVE" if option == "label" else "0000-DEAD"
    path, sha = make_archive(tmp_path, 1000)
    with pytest.raises(TargetError) as info:
        deliver(drives.target(**{option: wanted}), path, sha)
    assert info.value.code == errors.MOUNTFAIL
    assert "%s %s" % (option, wanted) in str(info.value)
    assert disk.label in str(info.value), "the drives that are present are listed"
    assert drives.files(disk) == {}


def test_missing_pyudev_is_missing_library(drives, tmp_path, monkeypatch):
    monkeypatch.setattr(usb, "pyudev", None)
    path, sha = make_archive(tmp_path, 1000)
    with pytest.raises(MissingLibrary) as info:
        deliver(drives.target(), path, sha)
    assert info.value.library == "pyudev" and "usb target" in str(info.value)
    assert info.value.code == errors.MISSING_LIBRARY


# -- mounting ---------------------------------------------------------------------

def test_drive_mounted_by_someone_else_is_used_there_and_left_mounted(drives, tmp_path):
    disk = drives.make("ext4")
    drives.expose(disk)
    theirs = drives.disks.mount(disk)
    path, sha = make_archive(tmp_path, 2 * MiB)

    deliver(drives.target(label=disk.label), path, sha)

    assert drives.disks.mounts_of(disk) == [theirs], "someone else's mount must stay"
    assert sha_of(os.path.join(theirs, ROOT_DIR, JOB, NAME)) == sha
    assert drives.our_mount_dirs() == [], "nothing mounted by the target"


def test_drive_mounted_read_only_elsewhere_is_mountfail(drives, tmp_path):
    disk = drives.make("ext4")
    drives.expose(disk)
    theirs = drives.disks.mount(disk, "ro")
    path, sha = make_archive(tmp_path, 1000)
    with pytest.raises(TargetError) as info:
        deliver(drives.target(), path, sha)
    assert info.value.code == errors.MOUNTFAIL
    assert "read-only" in str(info.value) and theirs in str(info.value)
    assert drives.disks.mounts_of(disk) == [theirs]


def test_unmountable_filesystem_is_mountfail_and_leaves_no_directory(drives, tmp_path):
    disk = drives.make("ext4")
    drives.expose(disk)
    # The kernel refuses the mount (an option ext4 does not know). Deterministic, unlike wiping the
    # superblock behind udev's back: a udev event still queued re-probed the wiped disk now and then,
    # and the label vanished before the target looked.
    path, sha = make_archive(tmp_path, 1000)
    with pytest.raises(TargetError) as info:
        deliver(drives.target(label=disk.label, mount_options="sar_no_such_option"), path, sha)
    assert info.value.code == errors.MOUNTFAIL
    assert "cannot mount %s" % disk.node in str(info.value)
    assert drives.our_mount_dirs() == []


def test_mount_options_are_applied(drives, tmp_path, monkeypatch):
    disk = drives.make("ext4")
    drives.expose(disk)
    seen = []
    target = drives.target(label=disk.label, mount_options="noatime")
    real_put = usb.UsbTarget.put

    def spy_put(self, src_path, name, size):
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            seen.extend(line.split()[5] for line in handle if line.split()[4] == self.mountpoint)
        return real_put(self, src_path, name, size)

    monkeypatch.setattr(usb.UsbTarget, "put", spy_put)
    path, sha = make_archive(tmp_path, 1000)
    deliver(target, path, sha)
    assert len(seen) == 1
    opts = seen[0].split(",")
    assert "noatime" in opts and "nosuid" in opts and "nodev" in opts and "noexec" in opts


def test_busy_mount_is_reported_and_never_left_mounted_silently(drives, tmp_path, monkeypatch):
    disk = drives.make("ext4")
    drives.expose(disk)
    monkeypatch.setattr(usb, "UMOUNT_RETRY_DELAY", 0)
    target = drives.target(label=disk.label)
    target.connect()
    mountpoint = target.mountpoint
    assert drives.disks.mounts_of(disk) == [mountpoint]
    target.ensure_dir()
    with open(os.path.join(target.folder, "held-open"), "wb"):
        target.close()  # umount fails: busy
        assert target.unmount_problem and "could not unmount" in target.unmount_problem
        assert "detached it lazily" in target.unmount_problem
        assert any("could not unmount" in line for line in drives.log), "the problem is logged"
        assert not os.path.ismount(mountpoint), "our directory must not stay mounted"
    assert drives.our_mount_dirs() == []


def test_check_mode_proves_write_access_and_leaves_nothing(drives):
    disk = drives.make("ext4")
    drives.expose(disk)
    drives.target(label=disk.label).check()
    assert drives.disks.mounts_of(disk) == []
    assert drives.our_mount_dirs() == []
    root = drives.disks.mount(disk)
    try:
        assert sorted(os.listdir(root)) == ["lost+found"]
    finally:
        drives.disks.unmount(disk)


# -- verification and retention -----------------------------------------------------

def test_verify_detects_a_short_and_a_corrupted_copy(drives, tmp_path, monkeypatch):
    disk = drives.make("ext4")
    drives.expose(disk)
    path, sha = make_archive(tmp_path, MiB + 5)
    real_put = usb.UsbTarget.put
    damage = {}

    def damaging_put(self, src_path, name, size):
        real_put(self, src_path, name, size)
        with open(os.path.join(self.folder, name), "r+b") as handle:
            if damage["how"] == "short":
                handle.truncate(size - 1)
            else:
                handle.seek(1000)
                handle.write(b"X")

    earlier, earlier_sha = make_archive(tmp_path, 1000, name=name_at(1))
    deliver(drives.target(verify="full"), earlier, earlier_sha, name=name_at(1))  # a good, older archive
    monkeypatch.setattr(usb.UsbTarget, "put", damaging_put)
    damage["how"] = "short"
    with pytest.raises(TargetError) as info:
        deliver(drives.target(verify="size"), path, sha)
    assert info.value.code == errors.VERIFY_FAILED and "expected %d" % (MiB + 5) in str(info.value)

    damage["how"] = "flip"
    deliver(drives.target(verify="size"), path, sha)  # same size: `size` cannot see it
    # An archive is never replaced: remove that copy before the same name is delivered again.
    root = drives.disks.mount(disk)
    try:
        os.unlink(os.path.join(root, "starface-backup", JOB, NAME))
    finally:
        drives.disks.unmount(disk)
    with pytest.raises(TargetError) as info:
        deliver(drives.target(verify="full"), path, sha)
    assert info.value.code == errors.VERIFY_FAILED and "does not match" in str(info.value)
    assert "the bad copy was removed" in str(info.value)
    assert drives.disks.mounts_of(disk) == []
    # The bad copy is gone (it would look like a good backup), the earlier archive is untouched.
    root = drives.disks.mount(disk)
    try:
        assert sorted(os.listdir(os.path.join(root, "starface-backup", JOB))) == [name_at(1)]
    finally:
        drives.disks.unmount(disk)


def test_keep_2_prunes_older_archives_and_leftover_partials_only(drives, tmp_path):
    disk = drives.make("ext4")
    drives.expose(disk)
    theirs = drives.disks.mount(disk)
    folder = os.path.join(theirs, ROOT_DIR, JOB)
    os.makedirs(folder)
    foreign = {"notes.txt": b"keep me", name_at(1, job="other"): b"another job", partial_name(name_at(0)): b"left over"}
    for fname, data in foreign.items():
        with open(os.path.join(folder, fname), "wb") as handle:
            handle.write(data)
    drives.disks.unmount(disk)

    pruned = []
    for second in (10, 11, 12):
        path, sha = make_archive(tmp_path, 1000 + second, name=name_at(second))
        pruned.append(deliver(drives.target(label=disk.label, keep=2), path, sha, name=name_at(second))["pruned"])

    # put() already removed the leftover partial (it only takes space) before writing.
    assert pruned[0] == [] and pruned[1] == []
    assert pruned[2] == [name_at(10)]
    files = drives.files(disk)
    assert sorted(files) == sorted([name_at(11), name_at(12), "notes.txt", name_at(1, job="other")])


# -- disk full ---------------------------------------------------------------------

def test_disk_full_is_refused_and_keeps_the_earlier_archive(drives, tmp_path):
    disk = drives.make("ext4", size_mb=8)
    drives.expose(disk)
    good, good_sha = make_archive(tmp_path, MiB, name=name_at(1))
    deliver(drives.target(label=disk.label), good, good_sha, name=name_at(1))
    big, big_sha = make_archive(tmp_path, 20 * MiB, name=name_at(2))

    with pytest.raises(TargetError) as info:
        deliver(drives.target(label=disk.label), big, big_sha, name=name_at(2))

    assert info.value.code == errors.DISK_FULL
    assert "no space left" in str(info.value) and disk.label in str(info.value)
    assert drives.files(disk) == {name_at(1): good_sha}, "no partial, no new .sar, the good archive kept"
    assert drives.disks.mounts_of(disk) == []
    assert drives.our_mount_dirs() == []


def test_copy_atomic_running_out_of_space_removes_the_partial(drives, tmp_path):
    """The ENOSPC path itself (put() refuses earlier when it can tell)."""
    disk = drives.make("ext4", size_mb=8)
    theirs = drives.disks.mount(disk)
    folder = os.path.join(theirs, "dest")
    os.makedirs(folder)
    with open(os.path.join(folder, "earlier.sar"), "wb") as handle:
        handle.write(b"earlier")
    big, _sha = make_archive(tmp_path, 20 * MiB)

    with pytest.raises(TargetError) as info:
        usb.copy_atomic(big, folder, NAME, 20 * MiB, where="the test drive")

    assert info.value.code == errors.DISK_FULL
    assert str(info.value).startswith("the test drive: no space left")
    assert sorted(os.listdir(folder)) == ["earlier.sar"]


def test_copy_atomic_refuses_a_source_of_unexpected_size(tmp_path):
    src, _sha = make_archive(tmp_path, 1000)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(TargetError) as info:
        usb.copy_atomic(src, str(dest), NAME, 999)
    assert "changed while it was copied" in str(info.value)
    assert os.listdir(str(dest)) == []


# -- FAT and exFAT --------------------------------------------------------------------

@pytest.mark.parametrize("fstype", ["vfat", "exfat"])
def test_fat_and_exfat_drives_work_kernel_or_fuse(drives, tmp_path, fstype):
    reason = usbdisk.fuse_unavailable(fstype)
    if reason:
        pytest.skip(reason)
    disk = drives.make(fstype)
    drives.expose(disk)
    path, sha = make_archive(tmp_path, 2 * MiB + 3)

    outcome = deliver(drives.target(label=disk.label, verify="full", keep=1), path, sha)

    assert outcome["bytes"] == 2 * MiB + 3
    mounted = [line for line in drives.log if line.startswith("usb: mounted %s" % disk.node)]
    assert len(mounted) == 1
    kernel_has_driver = fstype in open("/proc/filesystems", encoding="ascii").read().split()
    if not kernel_has_driver:
        assert "fuse" in mounted[0] or "fusefat" in mounted[0], mounted[0]
    assert drives.disks.mounts_of(disk) == [], "unmounted after the run"
    assert drives.our_mount_dirs() == []
    assert drives.files(disk) == {NAME: sha}


def test_fat_refuses_an_archive_of_4_gib_before_writing(drives, tmp_path):
    reason = usbdisk.fuse_unavailable("vfat")
    if reason:
        pytest.skip(reason)
    disk = drives.make("vfat")
    drives.expose(disk)
    sparse = str(tmp_path / "big.sar")
    with open(sparse, "wb") as handle:
        handle.truncate(4 * 1024 ** 3)  # sparse: costs nothing
    target = drives.target(label=disk.label)
    target.connect()
    try:
        target.ensure_dir()
        with pytest.raises(TargetError) as info:
            target.put(sparse, NAME, 4 * 1024 ** 3)
        assert info.value.code == errors.DISK_FULL
        assert "FAT" in str(info.value) and "4 GiB" in str(info.value)
        assert os.listdir(target.folder) == [], "nothing written"
        # One byte less is a valid FAT file size: refused for the small drive's space, not for FAT.
        with pytest.raises(TargetError) as info:
            target.put(sparse, NAME, 4 * 1024 ** 3 - 1)
        assert info.value.code == errors.DISK_FULL and "FAT" not in str(info.value)
        assert "no space left" in str(info.value)
        assert os.listdir(target.folder) == []
    finally:
        target.close()
    assert drives.disks.mounts_of(disk) == []


# -- pure helpers -------------------------------------------------------------------------

def test_mounts_of_reads_escaped_mountinfo_and_skips_bind_mounts_of_sub_folders(tmp_path):
    fs = usb.UsbFilesystem(node="/dev/sdz1", label="B", uuid="1", fstype="ext4", size=1, devnum=os.makedev(8, 209))
    info = tmp_path / "mountinfo"
    info.write_text(
        "30 1 8:209 / /media/my\\040stick rw,relatime shared:1 - ext4 /dev/sdz1 rw\n"
        "31 1 8:209 /sub /srv/bind rw,relatime - ext4 /dev/sdz1 rw\n"
        "32 1 8:209 / /mnt/ro ro,relatime - ext4 /dev/sdz1 ro\n"
        "33 1 8:2 / / rw,relatime - ext4 /dev/sda2 rw\n")
    assert usb.mounts_of(fs, str(info)) == [usb.Mount("/media/my stick", True), usb.Mount("/mnt/ro", False)]


def test_select_prefers_exact_label_then_ignores_case():
    one = usb.UsbFilesystem("/dev/sdb1", "BACKUP", "AAAA-0001", "vfat", 8 * 10 ** 9, 1)
    two = usb.UsbFilesystem("/dev/sdc1", "Backup", "aaaa-0002", "ext4", 16 * 10 ** 9, 2)
    assert usb.select([one, two], label="Backup") is two
    assert usb.select([one], label="backup") is one
    assert usb.select([one, two], uuid_="AAAA-0002") is two
    with pytest.raises(TargetError) as info:
        usb.select([one, two], label="backup")
    assert "several USB filesystems have label backup" in str(info.value)
    assert "8.0 GB" in str(info.value) and "16.0 GB" in str(info.value)
