# SPDX-License-Identifier: GPL-3.0-or-later
"""The `smb` target with the real smbprotocol library against a real Samba
smbd (tests/harness/smbd.py) on loopback: delivery to a share and to folders
in it, retention, encryption, login forms, the result codes of every refusal,
check mode, and an smbd killed in the middle of an upload."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time

import pytest

from harness import smbd as smbd_harness

from ansible_collections.sar.backup.plugins.module_utils import errors
from ansible_collections.sar.backup.plugins.module_utils.errors import TargetError
from ansible_collections.sar.backup.plugins.module_utils.job import validate_target
from ansible_collections.sar.backup.plugins.module_utils.targets import target_class
from ansible_collections.sar.backup.plugins.module_utils.targets.base import ROOT_DIR, TargetContext
from ansible_collections.sar.backup.plugins.module_utils.archive import partial_name

JOB = "nightly"
HOST = "pbx1"


def name_at(second: int) -> str:
    return "%s_%s_20260102T0304%02dZ.sar" % (JOB, HOST, second)


NAME = name_at(5)


@pytest.fixture(scope="module")
def server():
    """One smbd for the tests that do not kill it (with a 4 MiB tmpfs share)."""
    srv = smbd_harness.SmbServer(small_share=True).start()
    yield srv
    srv.stop()


@pytest.fixture
def own_server():
    """A fresh smbd a test may kill."""
    started = []

    def start(**kwargs):
        srv = smbd_harness.SmbServer(**kwargs).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def share_dirs(server):
    """Empty every share before a test: tests see only their own files."""
    def clean():
        for share in ("share", "secure", "readonly", "small"):
            root = server.share_path(share)
            for entry in os.listdir(root):
                path = os.path.join(root, entry)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
    clean()
    yield server
    clean()


def make_archive(tmp_path, size: int, name: str = NAME) -> tuple:
    path = tmp_path / ("src-" + name)
    data = os.urandom(size)
    path.write_bytes(data)
    return str(path), hashlib.sha256(data).hexdigest()


def make_target(srv, tmp_path, log=None, **options):
    raw = {"type": "smb", "server": "127.0.0.1", "port": srv.port, "share": "share",
           "username": srv.user, "password": srv.password, "encrypt": False}
    raw.update(options)
    normalized = validate_target(raw, 0)
    ctx = TargetContext(job=JOB, host=HOST, config_dir=str(tmp_path), log=log)
    target = target_class("smb")(normalized, ctx)
    target.RETRY_BACKOFF = 0  # retries stay, the waiting goes
    return target


def job_dir(srv, share: str = "share", *sub: str) -> str:
    return os.path.join(srv.share_path(share), *sub, ROOT_DIR, JOB)


def server_dirs(srv, folder: str) -> str:
    """mkdir -p on the server's disk, owned by the share user (as if made over SMB)."""
    root = os.path.dirname(os.path.dirname(folder))
    while not os.path.isdir(root):
        root = os.path.dirname(root)
    os.makedirs(folder, exist_ok=True)
    path = folder
    while path != root and path.startswith(root):
        shutil.chown(path, srv.user, srv.user)
        path = os.path.dirname(path)
    return folder


def sha_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def all_files(root: str) -> list:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _dirs, files in os.walk(root) for f in files)


def assert_no_secret(exc: BaseException, srv) -> None:
    assert srv.password not in str(exc)
    assert srv.password not in repr(exc.args)


# -- delivery ---------------------------------------------------------------------

@pytest.mark.parametrize("share,sub", [("share", ()), ("share/sub/dirs", ("sub", "dirs"))])
def test_deliver_creates_folders_and_arrives_identical(tmp_path, share_dirs, share, sub):
    srv = share_dirs
    path, sha = make_archive(tmp_path, 3 * 1024 * 1024 + 17)  # several write requests, an odd tail
    target = make_target(srv, tmp_path, share=share, verify="full")
    assert target.location() == "127.0.0.1:/" + share
    assert not os.path.exists(os.path.join(srv.share_path("share"), *sub, ROOT_DIR))

    outcome = target.deliver(path, NAME, os.path.getsize(path), sha)

    assert outcome == {"bytes": os.path.getsize(path), "pruned": []}
    folder = job_dir(srv, "share", *sub)
    assert os.listdir(folder) == [NAME]
    assert sha_of(os.path.join(folder, NAME)) == sha
    assert target._cache == {}  # pylint: disable=protected-access  # connection closed


def test_listdir_open_read_and_remove(tmp_path, share_dirs):
    srv = share_dirs
    path, sha = make_archive(tmp_path, 200_000)
    target = make_target(srv, tmp_path)
    target.deliver(path, NAME, 200_000, sha)
    target.connect()
    try:
        [entry] = target.listdir()
        assert (entry.name, entry.size) == (NAME, 200_000)
        assert abs(entry.mtime - os.path.getmtime(os.path.join(job_dir(srv), NAME))) < 2
        with target.open_read(NAME) as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == sha
        target.remove(NAME)
        target.remove(NAME)  # already gone: not an error
        assert target.listdir() == []
    finally:
        target.close()


def test_same_name_twice_replaces(tmp_path, share_dirs):
    srv = share_dirs
    first, _sha = make_archive(tmp_path, 1000, "a")
    second, sha2 = make_archive(tmp_path, 2000, "b")
    make_target(srv, tmp_path).deliver(first, NAME, 1000, sha_of(first))
    make_target(srv, tmp_path, verify="full").deliver(second, NAME, 2000, sha2)
    assert os.listdir(job_dir(srv)) == [NAME]
    assert sha_of(os.path.join(job_dir(srv), NAME)) == sha2


def test_prune_keeps_newest_and_leaves_foreign_files(tmp_path, share_dirs):
    srv = share_dirs
    folder = server_dirs(srv, job_dir(srv))
    foreign = ["notes.txt", "other_pbx1_20260102T030401Z.sar", "%s_%s_20260102T0304Z.sar.bak" % (JOB, HOST)]
    for name in foreign:
        with open(os.path.join(folder, name), "w", encoding="ascii") as handle:
            handle.write("not ours\n")
    leftover = partial_name(name_at(0))  # a partial of ours from a crashed run
    with open(os.path.join(folder, leftover), "wb") as handle:
        handle.write(b"half")
    for name in foreign + [leftover]:
        shutil.chown(os.path.join(folder, name), srv.user, srv.user)
    pruned = []
    for second in (1, 2, 3):
        path, sha = make_archive(tmp_path, 1000 + second, name_at(second))
        pruned.append(make_target(srv, tmp_path, keep=2).deliver(path, name_at(second), 1000 + second, sha)["pruned"])
    assert pruned == [[leftover], [], [name_at(1)]]
    assert sorted(os.listdir(folder)) == sorted(foreign + [name_at(2), name_at(3)])


def test_encrypt_true_against_encrypted_share(tmp_path, share_dirs):
    srv = share_dirs
    path, sha = make_archive(tmp_path, 1_500_000)
    messages = []
    target = make_target(srv, tmp_path, share="secure/enc", encrypt=True, verify="full", log=messages.append)
    target.deliver(path, NAME, 1_500_000, sha)
    assert sha_of(os.path.join(job_dir(srv, "secure", "enc"), NAME)) == sha
    assert any("encrypted" in m and "not encrypted" not in m for m in messages)


def test_encrypt_false_still_works_when_the_share_requires_it(tmp_path, share_dirs):
    srv = share_dirs
    path, sha = make_archive(tmp_path, 10_000)
    make_target(srv, tmp_path, share="secure", encrypt=False, verify="full").deliver(path, NAME, 10_000, sha)
    assert sha_of(os.path.join(job_dir(srv, "secure"), NAME)) == sha


def test_encrypt_true_against_server_without_encryption_is_mountfail(tmp_path, own_server):
    srv = own_server(global_options={"server smb encrypt": "off"})
    path, sha = make_archive(tmp_path, 1000)
    with pytest.raises(TargetError) as info:
        make_target(srv, tmp_path, encrypt=True).deliver(path, NAME, 1000, sha)
    assert info.value.code == errors.MOUNTFAIL
    assert "cannot encrypt" in str(info.value) and "encrypt: false" in str(info.value)
    assert_no_secret(info.value, srv)
    assert not os.path.exists(os.path.join(srv.share_path("share"), ROOT_DIR))
    # The user's explicit choice: unencrypted is then allowed.
    make_target(srv, tmp_path, encrypt=False).deliver(path, NAME, 1000, sha)
    assert os.listdir(job_dir(srv)) == [NAME]


def test_domain_backslash_user_form(tmp_path, share_dirs):
    srv = share_dirs
    path, sha = make_archive(tmp_path, 1000)
    make_target(srv, tmp_path, username="%s\\%s" % (srv.workgroup, srv.user)).deliver(path, NAME, 1000, sha)
    assert os.listdir(job_dir(srv)) == [NAME]


# -- refusals -----------------------------------------------------------------------

def test_wrong_password_is_auth_failed(tmp_path, share_dirs):
    srv = share_dirs
    path, sha = make_archive(tmp_path, 1000)
    target = make_target(srv, tmp_path, password=srv.password + "x")
    with pytest.raises(TargetError) as info:
        target.deliver(path, NAME, 1000, sha)
    assert info.value.code == errors.AUTH_FAILED
    assert str(info.value) == "SMB login to 127.0.0.1:%d as '%s' failed: wrong user or password" % (srv.port, srv.user)
    assert srv.password + "x" not in str(info.value)
    assert_no_secret(info.value, srv)
    assert all_files(srv.share_path("share")) == []


def test_unknown_user_is_auth_failed(tmp_path, share_dirs):
    srv = share_dirs
    with pytest.raises(TargetError) as info:
        make_target(srv, tmp_path, username="nosuchuser").check()
    assert info.value.code == errors.AUTH_FAILED
    assert "'nosuchuser'" in str(info.value)


def test_unreachable_port_is_mountfail(tmp_path):
    port = smbd_harness.free_port()
    raw = {"type": "smb", "server": "127.0.0.1", "port": port, "share": "share", "username": "backup",
           "password": "Secret-Pa55"}
    target = target_class("smb")(validate_target(raw, 0), TargetContext(job=JOB, host=HOST, config_dir=str(tmp_path)))
    target.RETRY_BACKOFF = 0
    path, sha = make_archive(tmp_path, 1000)
    with pytest.raises(TargetError) as info:
        target.deliver(path, NAME, 1000, sha)
    assert info.value.code == errors.MOUNTFAIL
    assert "127.0.0.1:%d" % port in str(info.value)
    assert "Secret-Pa55" not in str(info.value)


def test_missing_share_is_mountfail(tmp_path, share_dirs):
    srv = share_dirs
    path, sha = make_archive(tmp_path, 1000)
    with pytest.raises(TargetError) as info:
        make_target(srv, tmp_path, share="nosuchshare/sub").deliver(path, NAME, 1000, sha)
    assert info.value.code == errors.MOUNTFAIL
    assert "'nosuchshare' not found" in str(info.value)
    assert_no_secret(info.value, srv)


@pytest.mark.parametrize("how", ["deliver", "check"])
def test_read_only_share_is_auth_failed(tmp_path, share_dirs, how):
    # The documented choice (module docstring): access denied on the share
    # is authFailed, like the SFTP target's sftpRightProblem.
    srv = share_dirs
    path, sha = make_archive(tmp_path, 1000)
    target = make_target(srv, tmp_path, share="readonly")
    with pytest.raises(TargetError) as info:
        if how == "deliver":
            target.deliver(path, NAME, 1000, sha)
        else:
            target.check()
    assert info.value.code == errors.AUTH_FAILED
    assert "access denied for user '%s'" % srv.user in str(info.value)
    assert_no_secret(info.value, srv)
    assert all_files(srv.share_path("readonly")) == []


def test_archive_larger_than_free_space_is_disk_full(tmp_path, share_dirs):
    srv = share_dirs
    size = smbd_harness.SMALL_SHARE_BYTES + 1024 * 1024
    path, sha = make_archive(tmp_path, size)
    with pytest.raises(TargetError) as info:
        make_target(srv, tmp_path, share="small").deliver(path, NAME, size, sha)
    assert info.value.code == errors.DISK_FULL
    assert "not enough space" in str(info.value)
    assert os.listdir(job_dir(srv, "small")) == []


def test_share_filling_up_during_upload_is_disk_full(tmp_path, share_dirs):
    # Free space looked fine at the start (another writer took it): the
    # server's STATUS_DISK_FULL on a write request must come out as diskFull,
    # with no .sar and no partial left behind.
    srv = share_dirs
    size = 3 * 1024 * 1024
    path, sha = make_archive(tmp_path, size)
    target = make_target(srv, tmp_path, share="small")
    original = target._check_space  # pylint: disable=protected-access

    def then_fill(need):
        original(need)
        with open(os.path.join(srv.share_path("small"), "hog"), "wb") as hog:
            hog.write(b"\0" * (smbd_harness.SMALL_SHARE_BYTES - 2 * 1024 * 1024))

    target._check_space = then_fill  # pylint: disable=protected-access
    with pytest.raises(TargetError) as info:
        target.deliver(path, NAME, size, sha)
    assert info.value.code == errors.DISK_FULL
    assert os.listdir(job_dir(srv, "small")) == []


# -- check mode -----------------------------------------------------------------------

@pytest.mark.parametrize("share", ["share", "share/not/yet"])
def test_check_leaves_nothing(tmp_path, share_dirs, share):
    srv = share_dirs
    before = all_files(srv.share_path("share"))
    messages = []
    make_target(srv, tmp_path, share=share, log=messages.append).check()
    assert all_files(srv.share_path("share")) == before == []
    assert os.listdir(srv.share_path("share")) == []  # no folder created either
    assert any("connected to" in m for m in messages)


def test_check_writes_into_existing_job_folder(tmp_path, share_dirs):
    srv = share_dirs
    folder = server_dirs(srv, job_dir(srv))
    os.chmod(folder, 0o500)  # the probe must land here: make that fail visibly
    target = make_target(srv, tmp_path)
    with pytest.raises(TargetError) as info:
        target.check()
    assert info.value.code == errors.AUTH_FAILED
    os.chmod(folder, 0o755)
    target.check()
    assert os.listdir(folder) == []


# -- an smbd that dies mid-upload -------------------------------------------------------

class Watcher(threading.Thread):
    """Polls the job folder on the server's disk: kills smbd once the partial
    has `at` bytes (restarting it when told) and records any `.sar` name seen
    with fewer bytes than the archive."""

    def __init__(self, srv, folder: str, at: int, size: int, restart: bool):
        super().__init__(daemon=True)
        self.srv, self.folder, self.at, self.size, self.restart = srv, folder, at, size, restart
        self.killed_at = None
        self.incomplete = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                entries = list(os.scandir(self.folder))
            except FileNotFoundError:
                entries = []
            for entry in entries:
                try:
                    size = entry.stat().st_size
                except FileNotFoundError:
                    continue
                if entry.name.endswith(".sar") and size != self.size:
                    self.incomplete.append((entry.name, size))
                if self.killed_at is None and entry.name.endswith(".partial") and size >= self.at:
                    self.killed_at = size
                    self.srv.kill()
                    if self.restart:
                        time.sleep(0.3)
                        self.srv.start(attempts=20)
            time.sleep(0.002)


SIZE = 256 * 1024 * 1024  # big enough to be cut in the middle on a fast loopback


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    path = folder / NAME
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        for _block in range(SIZE // (16 << 20)):
            block = os.urandom(16 << 20)
            digest.update(block)
            handle.write(block)
    return str(path), digest.hexdigest()


@pytest.mark.parametrize("early_flush", [None, 16 * 1024 * 1024], ids=["early-flush-default", "early-flush-16MiB"])
def test_smbd_killed_mid_upload_and_restarted_resumes(tmp_path, own_server, big_archive, monkeypatch, early_flush):
    if early_flush:  # FLUSH requests still on their way when the server dies, then more after the resume
        from ansible_collections.sar.backup.plugins.module_utils.targets import smb as smb_mod  # pylint: disable=import-outside-toplevel
        monkeypatch.setattr(smb_mod, "EARLY_FLUSH", early_flush)
    srv = own_server()
    path, sha = big_archive
    messages = []
    target = make_target(srv, tmp_path, verify="full", log=messages.append)
    target.RETRY_ATTEMPTS = 6
    target.RETRY_BACKOFF = 0.5
    target.connect()
    target.ensure_dir()
    target.close()
    watcher = Watcher(srv, job_dir(srv), at=48 * 1024 * 1024, size=SIZE, restart=True)
    watcher.start()
    try:
        outcome = target.deliver(path, NAME, SIZE, sha)
    finally:
        watcher.stop.set()
        watcher.join(30)
    assert watcher.killed_at is not None, "the upload finished before smbd could be killed"
    assert outcome["bytes"] == SIZE
    assert watcher.incomplete == []
    assert os.listdir(job_dir(srv)) == [NAME]
    assert sha_of(os.path.join(job_dir(srv), NAME)) == sha
    resumed = [m for m in messages if "resuming upload at byte" in m]
    assert resumed, messages
    offset = int(resumed[0].split("resuming upload at byte ")[1].split()[0])
    assert 0 < offset < SIZE  # continued, not started over
    assert any("lost" in m for m in messages)


def test_smbd_gone_for_good_fails_cleanly(tmp_path, own_server, big_archive):
    srv = own_server()
    path, sha = big_archive
    target = make_target(srv, tmp_path)
    target.connect()
    target.ensure_dir()
    target.close()
    watcher = Watcher(srv, job_dir(srv), at=32 * 1024 * 1024, size=SIZE, restart=False)
    watcher.start()
    try:
        with pytest.raises(TargetError) as info:
            target.deliver(path, NAME, SIZE, sha)
    finally:
        watcher.stop.set()
        watcher.join(30)
    assert watcher.killed_at is not None, "the upload finished before smbd could be killed"
    assert info.value.code == errors.MOUNTFAIL
    assert "127.0.0.1:%d" % srv.port in str(info.value)
    assert_no_secret(info.value, srv)
    assert watcher.incomplete == []
    names = os.listdir(job_dir(srv))
    assert not [n for n in names if n.endswith(".sar")]
    assert names == [partial_name(NAME)]  # left for the next run's prune
    assert target._cache == {}  # pylint: disable=protected-access


# -- WRITE requests built by the target (_WriteFrames), one home for transfers ----------------------

@pytest.fixture
def negotiate(monkeypatch):
    """Make smbprotocol negotiate a given dialect / signing / cipher (None: its defaults)."""
    from smbprotocol import connection as smb_connection  # pylint: disable=import-outside-toplevel

    def use(dialect=None, signing=None, cipher=None):
        connect = smb_connection.Connection.connect

        def forced(self, dialect_=None, timeout=60, preferred_encryption_algos=None, preferred_signing_algos=None):
            return connect(self, dialect=dialect or dialect_, timeout=timeout,
                           preferred_encryption_algos=[cipher] if cipher is not None else preferred_encryption_algos,
                           preferred_signing_algos=[signing] if signing is not None else preferred_signing_algos)
        monkeypatch.setattr(smb_connection.Connection, "connect", forced)
    return use


def frames_spy(monkeypatch):
    """Records, for each upload, whether the target built its own WRITE frames and
    what the connection negotiated (dialect, signing algorithm, cipher, signed, sealed)."""
    from ansible_collections.sar.backup.plugins.module_utils.targets import smb as smb_mod  # pylint: disable=import-outside-toplevel
    seen = []
    for_pipe = smb_mod._WriteFrames.for_pipe.__func__  # pylint: disable=protected-access

    def spy(cls, pipe, raw):
        frames = for_pipe(cls, pipe, raw)
        conn = pipe.conn
        seen.append({"own": frames is not None, "dialect": conn.dialect,
                     "signing": getattr(conn, "signing_algorithm_id", None) if conn.dialect >= 0x0311 else None,
                     "cipher": getattr(conn, "cipher_id", None) if conn.dialect >= 0x0311 else None,
                     "signed": frames is not None and frames.signer is not None,
                     "sealed": frames is not None and frames.sealer is not None})
        return frames
    monkeypatch.setattr(smb_mod._WriteFrames, "for_pipe", classmethod(spy))  # pylint: disable=protected-access
    return seen


def test_early_flushes_go_out_during_the_upload_and_are_all_answered(tmp_path, share_dirs, monkeypatch):
    """Every EARLY_FLUSH bytes an SMB2 FLUSH goes out behind the writes without
    waiting (the server writes the file to disk while the rest arrives); every
    one is answered before the last FLUSH, which still comes after all writes."""
    from smbprotocol.open import Open  # pylint: disable=import-outside-toplevel
    from ansible_collections.sar.backup.plugins.module_utils.targets import smb as smb_mod  # pylint: disable=import-outside-toplevel
    monkeypatch.setattr(smb_mod, "EARLY_FLUSH", 2 * 1024 * 1024)
    events = []
    open_flush = Open.flush

    def flush(self, send=True):
        events.append("flush" if send else "early flush")
        return open_flush(self, send)
    monkeypatch.setattr(Open, "flush", flush)
    writes = smb_mod._SmbWrites  # pylint: disable=protected-access
    collect, drain = writes.collect, writes.drain

    def collected(self):
        events.append("write answered")
        return collect(self)

    def drained(self):
        waiting = list(self.flushes)
        drain(self)
        events.append("drained %d, answered %d, outstanding %d" % (
            len(waiting), sum(r.response is not None for r in waiting),
            sum(r.message["message_id"].get_value() in self.pipe.conn.outstanding_requests for r in waiting)))
    monkeypatch.setattr(writes, "collect", collected)
    monkeypatch.setattr(writes, "drain", drained)
    srv = share_dirs
    size = 17 * 1024 * 1024 + 17
    path, sha = make_archive(tmp_path, size)
    make_target(srv, tmp_path, verify="full").deliver(path, NAME, size, sha)
    assert sha_of(os.path.join(job_dir(srv), NAME)) == sha
    early = events.count("early flush")
    # one at least 2 MiB after the one before, none in the last 0.5 MiB
    assert 2 <= early <= 8, events
    assert events[-2:] == ["drained %d, answered %d, outstanding 0" % (early, early), "flush"], events
    last_write = len(events) - 3
    assert events[last_write] == "write answered" and events.index("early flush") < last_write, events


def test_no_early_flush_for_an_archive_shorter_than_the_interval(tmp_path, share_dirs, monkeypatch):
    from smbprotocol.open import Open  # pylint: disable=import-outside-toplevel
    sent = []
    open_flush = Open.flush

    def flush(self, send=True):
        sent.append(send)
        return open_flush(self, send)
    monkeypatch.setattr(Open, "flush", flush)
    srv = share_dirs
    size = 9 * 1024 * 1024 + 17
    path, sha = make_archive(tmp_path, size)
    make_target(srv, tmp_path).deliver(path, NAME, size, sha)
    assert sha_of(os.path.join(job_dir(srv), NAME)) == sha
    assert sent == [True]  # the last FLUSH only


@pytest.mark.parametrize("dialect,signing,cipher,encrypt", [
    ("SMB_2_1_0", None, None, False),              # HMAC-SHA256 signing
    ("SMB_3_0_2", None, None, False),              # AES-CMAC signing
    ("SMB_3_0_2", None, None, True),               # AES-128-CCM encryption
    ("SMB_3_1_1", "AES_CMAC", "AES_128_CCM", True),
    ("SMB_3_1_1", "AES_GMAC", "AES_256_GCM", True),
    ("SMB_3_1_1", "HMAC_SHA256", None, False),
    ("SMB_3_1_1", None, None, False),              # what smbprotocol picks: AES-GMAC signing
    ("SMB_3_1_1", None, None, True),               # and AES-128-GCM
])
def test_own_write_frames_for_every_signing_and_cipher(tmp_path, share_dirs, negotiate, monkeypatch,
                                                       dialect, signing, cipher, encrypt):
    """The upload's WRITE requests are built by the target itself (signature and
    encryption computed over its own buffer) for every dialect, signing algorithm
    and cipher smbprotocol negotiates; smbd checks them, the copy on the server is
    identical."""
    from smbprotocol.connection import Ciphers, Dialects, SigningAlgorithms  # pylint: disable=import-outside-toplevel
    srv = share_dirs
    negotiate(getattr(Dialects, dialect), getattr(SigningAlgorithms, signing) if signing else None,
              getattr(Ciphers, cipher) if cipher else None)
    seen = frames_spy(monkeypatch)
    size = 3 * 1024 * 1024 + 4099  # several requests, an odd tail
    path, sha = make_archive(tmp_path, size)
    make_target(srv, tmp_path, encrypt=encrypt, verify="full").deliver(path, NAME, size, sha)
    assert sha_of(os.path.join(job_dir(srv), NAME)) == sha
    [upload] = seen
    assert upload["own"] and upload["dialect"] == getattr(Dialects, dialect)
    assert upload["sealed"] == encrypt and upload["signed"] == (not encrypt)
    if signing:
        assert upload["signing"] == getattr(SigningAlgorithms, signing)
    if cipher:
        assert upload["cipher"] == getattr(Ciphers, cipher)


def test_own_write_frames_sign_and_seal_where_the_share_requires_encryption(tmp_path, share_dirs, monkeypatch):
    """encrypt: false on a share that requires encryption: smbprotocol signs the
    message and encrypts it (the tree asks for it); the target's frames do both."""
    srv = share_dirs
    seen = frames_spy(monkeypatch)
    path, sha = make_archive(tmp_path, 2 * 1024 * 1024 + 1)
    make_target(srv, tmp_path, share="secure", encrypt=False, verify="full").deliver(path, NAME, 2 * 1024 * 1024 + 1, sha)
    assert sha_of(os.path.join(job_dir(srv, "secure"), NAME)) == sha
    assert [(s["own"], s["signed"], s["sealed"]) for s in seen] == [(True, True, True)]


@pytest.mark.parametrize("encrypt", [False, True])
def test_smbprotocol_built_writes_still_deliver(tmp_path, share_dirs, monkeypatch, encrypt):
    """Where the target cannot build the frames itself (an smbprotocol whose
    internals differ), smbprotocol builds each request: same result."""
    from ansible_collections.sar.backup.plugins.module_utils.targets import smb as smb_mod  # pylint: disable=import-outside-toplevel
    monkeypatch.setattr(smb_mod._WriteFrames, "for_pipe", classmethod(lambda cls, pipe, raw: None))  # pylint: disable=protected-access
    srv = share_dirs
    size = 3 * 1024 * 1024 + 17
    path, sha = make_archive(tmp_path, size)
    make_target(srv, tmp_path, encrypt=encrypt, verify="full").deliver(path, NAME, size, sha)
    assert sha_of(os.path.join(job_dir(srv), NAME)) == sha


def test_unreadable_archive_is_reported_as_the_archive(tmp_path, share_dirs):
    """The source that cannot be opened is named as such (the same wording as the
    sftp target: one home for transfers), and nothing is left on the share."""
    srv = share_dirs
    missing = str(tmp_path / "gone.sar")
    with pytest.raises(TargetError) as info:
        make_target(srv, tmp_path).deliver(missing, NAME, 1000, "0" * 64)
    assert info.value.code == errors.FAILED
    assert str(info.value).startswith("cannot read the archive %s: " % missing)
    assert os.listdir(job_dir(srv)) == []


def test_smbd_gone_says_the_upload_could_not_be_resumed(tmp_path, own_server, big_archive):
    """Retries used up after the connection dropped: the message says so, with
    the number of attempts (the wording the sftp target has always had)."""
    srv = own_server()
    path, sha = big_archive
    target = make_target(srv, tmp_path)
    target.connect()
    target.ensure_dir()
    target.close()
    watcher = Watcher(srv, job_dir(srv), at=32 * 1024 * 1024, size=SIZE, restart=False)
    watcher.start()
    try:
        with pytest.raises(TargetError) as info:
            target.deliver(path, NAME, SIZE, sha)
    finally:
        watcher.stop.set()
        watcher.join(30)
    assert watcher.killed_at is not None, "the upload finished before smbd could be killed"
    assert info.value.code == errors.MOUNTFAIL
    assert "upload of %s interrupted and could not be resumed (%d attempts)" % (NAME, target.RETRY_ATTEMPTS) \
        in str(info.value)
