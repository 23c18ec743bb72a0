# SPDX-License-Identifier: GPL-3.0-or-later
"""The `dropbox` target with the real `dropbox` SDK against the local HTTPS
emulator of the Dropbox API (tests/harness/dropbox_emulator.py): small and
> 150 MB archives (upload sessions), content_hash and size verification,
retention, refresh-token / PKCE / access-token sign-in, refused credentials,
an unreachable API, 429 with Retry-After, connections dropped mid-append and
after finish, persistent failures mid-session (nothing committed), quota,
check mode, reading back, and production mode ignoring the SDK's host
variables. Also a few checks that the emulator answers like Dropbox does
(request limits, per-request content_hash, offsets)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

import dropbox as dropbox_sdk
from dropbox import exceptions as dbx_exc
from dropbox import files as dbx_files

from harness import dropbox_emulator
from harness.playbook import collections_path

from ansible_collections.sar.backup.plugins.module_utils import errors
from ansible_collections.sar.backup.plugins.module_utils.errors import TargetError
from ansible_collections.sar.backup.plugins.module_utils.job import validate_target
from ansible_collections.sar.backup.plugins.module_utils.targets import dropbox as dropbox_target
from ansible_collections.sar.backup.plugins.module_utils.targets.base import ROOT_DIR, TargetContext

JOB = "nightly"
HOST = "pbx1"
BASE = "/Backups/PBX"
FOLDER = "%s/%s/%s" % (BASE, ROOT_DIR, JOB)
MiB = 1024 * 1024
APPEND = "files/upload_session/append_v2"
FINISH = "files/upload_session/finish"


def name_at(second: int) -> str:
    return "%s_%s_20260102T0304%02dZ.sar" % (JOB, HOST, second)


NAME = name_at(5)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    emu = dropbox_emulator.DropboxEmulator(str(tmp_path_factory.mktemp("dropbox-emulator"))).start()
    yield emu
    emu.stop()


@pytest.fixture
def emu(server, monkeypatch):
    """The emulator, emptied, with the test-mode environment set (before any target is built)."""
    server.reset()
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    yield server
    server.reset()


class Recorder:
    """Log lines and the sleeps a target asked for (sleeping for real, shortened by `scale`)."""

    def __init__(self, scale: float = 1.0):
        self.lines = []
        self.sleeps = []
        self.scale = scale

    def log(self, line: str) -> None:
        self.lines.append(line)

    def sleep(self, seconds: float) -> None:
        import time
        self.sleeps.append(seconds)
        time.sleep(seconds * self.scale)


def make_target(emu, tmp_path, auth: str = "access", rec: Recorder | None = None, **options):
    raw = {"type": "dropbox", "path": BASE}
    if auth == "access":
        raw["access_token"] = emu.access_token
    elif auth == "refresh":
        raw.update(refresh_token=emu.refresh_token, app_key=emu.app_key, app_secret=emu.app_secret)
    elif auth == "pkce":
        raw.update(refresh_token=emu.pkce_refresh_token, app_key=emu.app_key)
    raw.update(options)
    normalized = validate_target(raw, 0)
    rec = rec or Recorder(scale=0.0)
    target = dropbox_target.DropboxTarget(normalized, TargetContext(job=JOB, host=HOST, config_dir=str(tmp_path),
                                                                    log=rec.log))
    target.BACKOFF = 0.01  # retries stay, the long waits go
    target._sleep = rec.sleep  # pylint: disable=protected-access
    return target


def make_archive(tmp_path, size: int, name: str = NAME) -> tuple:
    """A random file of `size` bytes written in 8 MiB pieces; (path, sha256, content hash)."""
    path = tmp_path / ("src-" + name)
    sha = hashlib.sha256()
    block_hashes = []
    with open(path, "wb") as handle:
        left = size
        while left:
            piece = os.urandom(min(left, 4 * MiB))  # 4 MiB pieces = Dropbox blocks
            handle.write(piece)
            sha.update(piece)
            block_hashes.append(hashlib.sha256(piece).digest())
            left -= len(piece)
    return str(path), sha.hexdigest(), hashlib.sha256(b"".join(block_hashes)).hexdigest()


def secrets_of(emu) -> list:
    return [emu.access_token, emu.refresh_token, emu.pkce_refresh_token, emu.app_secret]


def assert_no_secret(text: str, emu) -> None:
    for secret in secrets_of(emu):
        assert secret not in text


def sar_names(emu, folder: str = FOLDER) -> list:
    return [n for n in emu.list_names(folder) if n.endswith(".sar")]


def calls(emu, route: str) -> list:
    return [c for c in emu.calls if c.route == route]


# -- the module itself ------------------------------------------------------------------

def test_module_uses_the_sdk_not_itself():
    """`targets/dropbox.py` must not shadow the SDK package named `dropbox`."""
    assert dropbox_target.dropbox_sdk is dropbox_sdk
    assert dropbox_target.dropbox_sdk.__name__ == "dropbox"
    assert hasattr(dropbox_target.dropbox_sdk, "Dropbox")
    assert os.path.dirname(dropbox_sdk.__file__) != os.path.dirname(dropbox_target.__file__)
    assert dropbox_target.TARGET is dropbox_target.DropboxTarget
    assert dropbox_target.DropboxTarget.TYPE == "dropbox"


def test_local_content_hash_matches_dropbox_algorithm(tmp_path):
    hasher = dropbox_target.content_hasher()
    data = os.urandom(9 * MiB + 3)
    for i in range(0, len(data), 1000003):  # uneven pieces across block boundaries
        hasher.update(data[i:i + 1000003])
    assert hasher.hexdigest() == dropbox_emulator.content_hash_of(data)
    sdk_hash = getattr(getattr(dropbox_sdk, "content_hash", None), "content_hash", None)  # SDK 12.2+ only
    if sdk_hash is not None:
        assert hasher.hexdigest() == sdk_hash(data)


# -- delivery ---------------------------------------------------------------------------

def test_small_archive_single_upload_verified_by_content_hash(emu, tmp_path):
    path, sha, chash = make_archive(tmp_path, 300 * 1024 + 7)
    target = make_target(emu, tmp_path, verify="full")
    assert target.location() == "dropbox:" + BASE
    outcome = target.deliver(path, NAME, os.path.getsize(path), sha)

    assert outcome == {"bytes": os.path.getsize(path), "pruned": []}
    with open(path, "rb") as handle:
        assert emu.read_file(FOLDER + "/" + NAME) == handle.read()
    assert emu.node(FOLDER + "/" + NAME).content_hash == chash
    assert calls(emu, "files/upload") and not calls(emu, "files/upload_session/start")
    assert target.client is None  # closed after delivery


def test_160mb_archive_goes_through_an_upload_session(emu, tmp_path):
    size = 160 * 1000 * 1000  # over the 150 MiB single-request limit
    path, sha, chash = make_archive(tmp_path, size)
    target = make_target(emu, tmp_path, auth="refresh", verify="full")

    assert target.deliver(path, NAME, size, sha)["bytes"] == size

    node = emu.node(FOLDER + "/" + NAME)
    assert node.size == size and node.content_hash == chash
    assert calls(emu, "oauth2/token")
    assert len(calls(emu, "files/upload_session/start")) == 1 and len(calls(emu, FINISH)) == 1
    sent = [c for c in emu.calls if c.route.startswith("files/upload")]
    assert sum(c.length for c in sent) == size  # every byte once
    assert all(c.length <= dropbox_target.CHUNK for c in sent)  # bounded requests (and memory)
    assert all(c.length % (4 * MiB) == 0 for c in sent if c.route != FINISH)  # whole Dropbox blocks
    assert not calls(emu, "files/upload")
    assert emu.sessions == {}


def test_emulator_refuses_a_single_upload_over_150mib(emu, tmp_path):
    """Why the target needs sessions: one request of > 150 MiB is refused."""
    client = make_target(emu, tmp_path).build_client()
    data = b"\0" * (150 * MiB + 1)
    with pytest.raises(dbx_exc.ApiError) as info:
        client.files_upload(data, "/big.bin")
    assert info.value.error.is_payload_too_large()
    assert emu.node("/big.bin") is None


def test_keep_prunes_only_this_jobs_archives(emu, tmp_path):
    emu.put_file(FOLDER + "/notes.txt", b"not ours")
    emu.put_file(FOLDER + "/other_pbx1_20200101T000000Z.sar", b"another job")
    target = make_target(emu, tmp_path, keep=2)
    pruned = []
    for second in (1, 2, 3):
        path, sha = make_archive(tmp_path, 1000 + second, name_at(second))[:2]
        pruned += target.deliver(path, name_at(second), 1000 + second, sha)["pruned"]

    assert pruned == [name_at(1)]
    assert emu.list_names(FOLDER) == sorted(["notes.txt", "other_pbx1_20200101T000000Z.sar", name_at(2), name_at(3)])


def test_listing_follows_cursors(emu, tmp_path):
    emu.page_size = 2
    for second in range(5):
        emu.put_file(FOLDER + "/" + name_at(second), b"x" * second)
    target = make_target(emu, tmp_path)
    target.connect()
    try:
        listed = {e.name: e.size for e in target.listdir()}
    finally:
        target.close()
    assert listed == {name_at(s): s for s in range(5)}
    assert len(calls(emu, "files/list_folder/continue")) == 2


def test_read_back_streams_the_archive(emu, tmp_path):
    path, sha = make_archive(tmp_path, 10 * MiB + 11)[:2]
    make_target(emu, tmp_path).deliver(path, NAME, 10 * MiB + 11, sha)
    fresh = make_target(emu, tmp_path, verify="full")  # no local source known: verify downloads
    fresh.connect()
    try:
        with fresh.open_read(NAME) as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == sha
        fresh.verify(NAME, 10 * MiB + 11, sha)
        with pytest.raises(TargetError) as info:
            fresh.verify(NAME, 10 * MiB + 11, "0" * 64)
    finally:
        fresh.close()
    assert info.value.code == errors.VERIFY_FAILED
    assert calls(emu, "files/download")


def test_changed_content_of_same_size_fails_full_verify(emu, tmp_path):
    path, sha = make_archive(tmp_path, 5 * MiB)[:2]
    target = make_target(emu, tmp_path, verify="full")
    target.connect()
    try:
        target.ensure_dir()
        target.put(path, NAME, 5 * MiB)
        target.verify(NAME, 5 * MiB, sha)  # as uploaded: fine
        emu.put_file(FOLDER + "/" + NAME, os.urandom(5 * MiB))  # same size, other bytes
        with pytest.raises(TargetError) as info:
            target.verify(NAME, 5 * MiB, sha)
        target.options["verify"] = "size"
        target.verify(NAME, 5 * MiB, sha)  # a size check cannot see it
    finally:
        target.close()
    assert info.value.code == errors.VERIFY_FAILED
    assert "content_hash" in str(info.value)


def test_check_mode_probe_leaves_nothing(emu, tmp_path):
    emu.put_file("/Backups/keep.txt", b"existing")
    target = make_target(emu, tmp_path)
    target.check()
    assert emu.list_names("/Backups") == ["keep.txt"]  # no PBX folder created, probe gone
    uploads = calls(emu, "files/upload")
    assert len(uploads) == 1 and calls(emu, "files/delete_v2")


def test_a_file_in_the_way_of_the_folder(emu, tmp_path):
    emu.put_file(BASE + "/" + ROOT_DIR, b"a file, not a folder")
    path, sha = make_archive(tmp_path, 100)[:2]
    with pytest.raises(TargetError) as info:
        make_target(emu, tmp_path).deliver(path, NAME, 100, sha)
    assert info.value.code == errors.FAILED
    assert "in the way" in str(info.value)


def test_existing_folder_is_fine_and_root_path_works(emu, tmp_path):
    emu.put_file("/" + ROOT_DIR + "/" + JOB + "/old.txt", b"x")
    path, sha = make_archive(tmp_path, 100)[:2]
    target = make_target(emu, tmp_path, path="/")
    assert target.location() == "dropbox:/"
    target.deliver(path, NAME, 100, sha)
    assert emu.list_names("/" + ROOT_DIR + "/" + JOB) == sorted(["old.txt", NAME])


# -- credentials --------------------------------------------------------------------------

def test_pkce_refresh_token_without_secret(emu, tmp_path):
    path, sha = make_archive(tmp_path, 100)[:2]
    make_target(emu, tmp_path, auth="pkce").deliver(path, NAME, 100, sha)
    assert sar_names(emu) == [NAME]
    assert calls(emu, "oauth2/token")[0].status == 200


def test_expired_access_token_is_refreshed_mid_run(emu, tmp_path):
    path, sha = make_archive(tmp_path, 20 * MiB)[:2]
    target = make_target(emu, tmp_path, auth="refresh")
    target.connect()
    try:
        target.ensure_dir()
        emu.expire_access_tokens()  # the SDK's 401 expired_access_token -> refresh -> retry
        target.put(path, NAME, 20 * MiB)
        target.verify(NAME, 20 * MiB, sha)
    finally:
        target.close()
    assert len([c for c in calls(emu, "oauth2/token") if c.status == 200]) == 2
    assert any(c.status == 401 for c in emu.calls)


@pytest.mark.parametrize("case", ["bad_access_token", "bad_refresh_token", "wrong_app_secret", "wrong_app_key",
                                  "secret_missing"])
def test_refused_credentials_are_auth_failed_without_secrets(emu, tmp_path, case):
    rec = Recorder(scale=0.0)
    if case == "bad_access_token":
        target = make_target(emu, tmp_path, rec=rec, access_token="sl.not-a-valid-token-" + "x" * 20)
    elif case == "bad_refresh_token":
        target = make_target(emu, tmp_path, auth="refresh", rec=rec, refresh_token="revoked-refresh-" + "y" * 20)
    elif case == "wrong_app_secret":
        target = make_target(emu, tmp_path, auth="refresh", rec=rec, app_secret="wrong-secret-" + "z" * 20)
    elif case == "wrong_app_key":
        target = make_target(emu, tmp_path, auth="refresh", rec=rec, app_key="wrongkey")
    else:  # a non-PKCE refresh token needs the app secret
        target = make_target(emu, tmp_path, auth="refresh", rec=rec, app_secret=None)
    path, sha = make_archive(tmp_path, 100)[:2]
    with pytest.raises(TargetError) as info:
        target.deliver(path, NAME, 100, sha)
    assert info.value.code == errors.AUTH_FAILED
    text = str(info.value) + repr(info.value.args) + "\n".join(rec.lines)
    assert_no_secret(text, emu)
    for key in ("access_token", "refresh_token", "app_secret"):
        if target.options.get(key):
            assert target.options[key] not in text
    assert not emu.list_names(BASE) and emu.node(BASE) is None  # nothing written
    assert not rec.sleeps  # refused credentials are not retried


def test_refresh_token_without_app_key_is_auth_failed(tmp_path):
    options = {"type": "dropbox", "refresh_token": "r-secret-" + "q" * 30, "path": "/", "keep": 7, "verify": "size"}
    target = dropbox_target.DropboxTarget(options, TargetContext(job=JOB, host=HOST, config_dir=str(tmp_path)))
    with pytest.raises(TargetError) as info:
        target.connect()
    assert info.value.code == errors.AUTH_FAILED and "app_key" in str(info.value)
    assert options["refresh_token"] not in str(info.value)


# -- unreachable, rate limits, faults ----------------------------------------------------------

def test_unreachable_api_is_connect_failed(tmp_path, monkeypatch):
    down = dropbox_emulator.DropboxEmulator(str(tmp_path)).start()
    env, token = down.env(), down.access_token
    env["SAR_BACKUP_DROPBOX_CA"] = str(tmp_path / "ca.pem")
    with open(down.ca_path, "rb") as src, open(env["SAR_BACKUP_DROPBOX_CA"], "wb") as dst:
        dst.write(src.read())
    down.stop()  # nothing listens on those ports any more
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    rec = Recorder(scale=0.0)
    target = dropbox_target.DropboxTarget(validate_target({"type": "dropbox", "access_token": token}, 0),
                                          TargetContext(job=JOB, host=HOST, config_dir=str(tmp_path), log=rec.log))
    target.RETRIES = 2
    target._sleep = rec.sleep  # pylint: disable=protected-access
    with pytest.raises(TargetError) as info:
        target.check()
    assert info.value.code == errors.CONNECT_FAILED
    assert len(rec.sleeps) == 2  # retried, finitely
    assert token not in str(info.value)


def test_untrusted_certificate_is_connect_failed(emu, tmp_path, monkeypatch):
    monkeypatch.setenv("SAR_BACKUP_DROPBOX_CA", "")  # system CAs do not know the emulator
    rec = Recorder(scale=0.0)
    with pytest.raises(TargetError) as info:
        make_target(emu, tmp_path, rec=rec).check()
    assert info.value.code == errors.CONNECT_FAILED
    assert "TLS" in str(info.value)
    assert not rec.sleeps


@pytest.mark.parametrize("json_body", [True, False], ids=["json-429", "text-429"])
def test_429_waits_retry_after_then_succeeds(emu, tmp_path, json_body):
    path, sha, chash = make_archive(tmp_path, 20 * MiB)
    rec = Recorder(scale=1.0)  # really wait: the emulator keeps answering 429 until Retry-After has passed
    target = make_target(emu, tmp_path, rec=rec, verify="full")
    emu.rate_limit_next(retry_after=1, route=APPEND, json_body=json_body)

    target.deliver(path, NAME, 20 * MiB, sha)

    assert emu.node(FOLDER + "/" + NAME).content_hash == chash
    limited = [c for c in emu.calls if c.status == 429]
    assert len(limited) == 1  # the client did not come back before Retry-After
    after = [c for c in emu.calls if c.time > limited[0].time]
    assert after and after[0].route == APPEND and after[0].status == 200
    assert after[0].time - limited[0].time >= 1.0
    assert 1.0 in rec.sleeps


def test_429_beyond_the_budget_fails_without_waiting_forever(emu, tmp_path):
    rec = Recorder(scale=0.0)
    target = make_target(emu, tmp_path, rec=rec)
    target.RATE_LIMIT_BUDGET = 30
    emu.rate_limit_next(retry_after=3600, route="check/user")
    path, sha = make_archive(tmp_path, 100)[:2]
    with pytest.raises(TargetError) as info:
        target.deliver(path, NAME, 100, sha)
    assert info.value.code == errors.FAILED and info.value.transient
    assert "rate-limit" in str(info.value)
    assert rec.sleeps == []


def test_transient_503s_are_retried(emu, tmp_path):
    path, sha = make_archive(tmp_path, 20 * MiB)[:2]
    rec = Recorder(scale=0.0)
    emu.fail_next(2, status=503)  # the first two requests, whatever they are
    make_target(emu, tmp_path, rec=rec, verify="full").deliver(path, NAME, 20 * MiB, sha)
    assert sar_names(emu) == [NAME]
    assert len([c for c in emu.calls if c.status == 503]) == 2
    assert len(rec.sleeps) == 2 and rec.sleeps[1] > rec.sleeps[0]  # backoff doubles


def test_connection_dropped_while_sending_an_append(emu, tmp_path):
    path, sha, chash = make_archive(tmp_path, 30 * MiB + 123)
    emu.drop_during_append(after_bytes=MiB)  # the server resets after 1 MiB of the chunk
    make_target(emu, tmp_path, verify="full").deliver(path, NAME, 30 * MiB + 123, sha)
    assert emu.node(FOLDER + "/" + NAME).content_hash == chash
    assert [c.status for c in calls(emu, APPEND)].count(0) == 1


def test_lost_append_answer_resumes_from_correct_offset(emu, tmp_path):
    path, sha, chash = make_archive(tmp_path, 30 * MiB + 123)
    rec = Recorder(scale=0.0)
    emu.drop_after_append(count=1)  # applied, answer lost: the retry gets incorrect_offset
    make_target(emu, tmp_path, rec=rec, verify="full").deliver(path, NAME, 30 * MiB + 123, sha)

    node = emu.node(FOLDER + "/" + NAME)
    assert node.size == 30 * MiB + 123 and node.content_hash == chash
    statuses = [c.status for c in calls(emu, APPEND)]
    assert 0 in statuses and 409 in statuses  # dropped, then incorrect_offset
    assert any("resuming" in line for line in rec.lines)
    # the chunk whose answer was lost is sent once more (refused with 409), nothing else
    sent = sum(c.length for c in emu.calls if c.route.startswith("files/upload"))
    assert sent == 30 * MiB + 123 + dropbox_target.CHUNK


def test_lost_finish_answer_is_recognised_as_committed(emu, tmp_path):
    path, sha, chash = make_archive(tmp_path, 20 * MiB + 1)
    emu.drop_after_append(count=1, route=FINISH)
    make_target(emu, tmp_path, verify="full").deliver(path, NAME, 20 * MiB + 1, sha)
    assert emu.node(FOLDER + "/" + NAME).content_hash == chash
    assert [c.status for c in calls(emu, FINISH)] == [0, 409]  # committed, then lookup_failed/not_found


@pytest.mark.parametrize("route", ["files/upload", "files/upload_session/start", APPEND, FINISH])
def test_data_damaged_in_transit_is_refused_and_sent_again(emu, tmp_path, route):
    size = 100 * 1024 if route == "files/upload" else 20 * MiB + 5
    path, sha, chash = make_archive(tmp_path, size)
    emu.corrupt_next(route)
    make_target(emu, tmp_path, verify="full").deliver(path, NAME, size, sha)
    assert emu.node(FOLDER + "/" + NAME).content_hash == chash
    assert [c.status for c in calls(emu, route)][:2] == [409, 200]  # content_hash_mismatch, then the resend


def test_persistent_failure_mid_session_commits_nothing(emu, tmp_path):
    path, sha = make_archive(tmp_path, 30 * MiB)[:2]
    rec = Recorder(scale=0.0)
    target = make_target(emu, tmp_path, rec=rec)
    target.RETRIES = 3
    emu.fail_next(None, status=503, route=APPEND)  # every append from now on
    with pytest.raises(TargetError) as info:
        target.deliver(path, NAME, 30 * MiB, sha)
    assert info.value.code == errors.CONNECT_FAILED
    assert len(calls(emu, APPEND)) == 4 and len(rec.sleeps) == 3
    assert sar_names(emu) == [] and emu.node(FOLDER + "/" + NAME) is None
    assert not calls(emu, FINISH)
    assert len(emu.sessions) == 1  # the data stayed in the uncommitted session


def test_insufficient_space_is_disk_full(emu, tmp_path):
    emu.quota = 10 * MiB
    path, sha = make_archive(tmp_path, 20 * MiB)[:2]
    with pytest.raises(TargetError) as info:
        make_target(emu, tmp_path).deliver(path, NAME, 20 * MiB, sha)
    assert info.value.code == errors.DISK_FULL
    assert "insufficient_space" in str(info.value)
    assert sar_names(emu) == []


# -- hosts: test mode only --------------------------------------------------------------

def test_production_mode_ignores_host_variables(tmp_path, monkeypatch):
    monkeypatch.delenv("SAR_BACKUP_DROPBOX_TEST_MODE", raising=False)
    monkeypatch.setenv("DROPBOX_API_HOST", "127.0.0.1:9")
    monkeypatch.setenv("DROPBOX_API_CONTENT_HOST", "127.0.0.1:9")
    monkeypatch.setenv("DROPBOX_API_NOTIFY_HOST", "127.0.0.1:9")
    target = dropbox_target.DropboxTarget(validate_target({"type": "dropbox", "access_token": "t" * 40}, 0),
                                          TargetContext(job=JOB, host=HOST, config_dir=str(tmp_path)))
    client = target.build_client()  # no network
    assert client._host_map == {"api": "api.dropboxapi.com", "content": "content.dropboxapi.com",  # pylint: disable=protected-access
                                "notify": "notify.dropboxapi.com"}
    assert client._session.trust_env  # pylint: disable=protected-access
    monkeypatch.setenv("SAR_BACKUP_DROPBOX_TEST_MODE", "1")
    assert target.build_client()._host_map["api"] == "127.0.0.1:9"  # pylint: disable=protected-access
    monkeypatch.setenv("SAR_BACKUP_DROPBOX_TEST_MODE", "yes")  # only exactly "1" switches
    assert target.build_client()._host_map["api"] == "api.dropboxapi.com"  # pylint: disable=protected-access


PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import dropbox.session
from ansible_collections.sar.backup.plugins.module_utils.job import validate_target
from ansible_collections.sar.backup.plugins.module_utils.targets import dropbox as t
from ansible_collections.sar.backup.plugins.module_utils.targets.base import TargetContext
target = t.DropboxTarget(validate_target({"type": "dropbox", "refresh_token": "r" * 40, "app_key": "k"}, 0),
                         TargetContext(job="j", host="h", config_dir="/"))
client = target.build_client()
urls = []
class Stop(Exception):
    pass
def post(url, **kwargs):
    urls.append(url)
    raise Stop()
client._session.post = post
import datetime
try:
    client.check_and_refresh_access_token()
except Stop:
    pass
client._oauth2_access_token = "a" * 40  # as if refreshed: the next call goes to the content host
client._oauth2_access_token_expiration = datetime.datetime(9999, 1, 1)
try:
    client.files_upload(b"x", "/x")
except Stop:
    pass
print(json.dumps({"sdk_api_host": dropbox.session.API_HOST, "hosts": client._host_map, "urls": urls}))
"""


def test_production_mode_with_variables_set_before_the_sdk_import(tmp_path):
    """The SDK reads DROPBOX_API_HOST at import time; the target must still talk
    to the real hosts (token refresh included) when test mode is off."""
    env = dict(os.environ)
    env.pop("SAR_BACKUP_DROPBOX_TEST_MODE", None)
    env.update({"DROPBOX_API_HOST": "evil.example:8443", "DROPBOX_API_CONTENT_HOST": "evil.example:8443",
                "DROPBOX_API_NOTIFY_HOST": "evil.example:8443"})
    proc = subprocess.run([sys.executable, "-c", PROBE, collections_path()], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["sdk_api_host"] == "evil.example:8443"  # the SDK itself would have used it
    assert seen["hosts"]["api"] == "api.dropboxapi.com"
    assert seen["urls"] == ["https://api.dropboxapi.com/oauth2/token", "https://content.dropboxapi.com/2/files/upload"]
    assert not any("evil" in url for url in seen["urls"])


# -- the emulator answers like Dropbox --------------------------------------------------------

def test_emulator_checks_per_request_content_hash_and_offsets(emu, tmp_path):
    client = make_target(emu, tmp_path).build_client()
    with pytest.raises(dbx_exc.ApiError) as info:
        client.files_upload_session_start(b"a" * 100, content_hash="0" * 64)
    assert info.value.error.is_content_hash_mismatch()
    session = client.files_upload_session_start(b"a" * 100).session_id
    cursor = dbx_files.UploadSessionCursor(session_id=session, offset=50)
    with pytest.raises(dbx_exc.ApiError) as info:
        client.files_upload_session_append_v2(b"b" * 10, cursor)
    assert info.value.error.is_incorrect_offset()
    assert info.value.error.get_incorrect_offset().correct_offset == 100
    commit = dbx_files.CommitInfo(path="/x/y.bin")
    assert emu.node("/x/y.bin") is None
    meta = client.files_upload_session_finish(b"c" * 5, dbx_files.UploadSessionCursor(session, 100), commit)
    assert meta.size == 105 and meta.content_hash == dropbox_emulator.content_hash_of(b"a" * 100 + b"c" * 5)
    with pytest.raises(dbx_exc.ApiError) as info:
        client.files_upload_session_finish(b"", dbx_files.UploadSessionCursor(session, 105), commit)
    assert info.value.error.get_lookup_failed().is_not_found()
    with pytest.raises(dbx_exc.ApiError) as info:
        client.files_create_folder_v2("/X")
    assert info.value.error.get_path().get_conflict().is_folder()
    with pytest.raises(dbx_exc.BadInputError):
        client.files_list_folder("/")  # the root is ""
    assert [e.name for e in client.files_list_folder("").entries] == ["x"]
