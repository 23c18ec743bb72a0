# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""`dropbox`: a folder in a Dropbox app's space, with the official `dropbox` SDK.

What this adds to the common delivery of base.Target:
- credentials: a refresh token + app key (+ app secret; PKCE refresh tokens
  have none), exchanged for short-lived access tokens by the SDK, or a
  (legacy, long-lived) access token. `connect` signs in and checks the token
  with `check/user`, so bad credentials fail before any data is sent;
- uploads: archives up to SINGLE_MAX go in one `files/upload`; larger ones in
  an upload session (`start` / `append_v2` / `finish`) of CHUNK-sized requests
  (a multiple of Dropbox's 4 MiB block; one chunk in memory at a time),
  committed straight to the final `.sar` path: Dropbox shows nothing under
  that path until `finish` succeeds, which is the atomic commit SPEC section 4
  asks for (no `.partial` name needed). Mode `overwrite`, so a retried run of
  the same second replaces its own archive instead of failing;
- every request carries the SDK's per-request `content_hash`, so data damaged
  in transit is refused by Dropbox (and sent again);
- resilience, always finite: `incorrect_offset` (a request that reached
  Dropbox but whose answer was lost) resumes from Dropbox's `correct_offset`;
  a `finish` whose answer was lost is recognised by the committed file's
  content hash; 429 waits what Retry-After says, within RATE_LIMIT_BUDGET
  seconds in total; 5xx, connection errors and timeouts are retried RETRIES
  times with doubling backoff;
- `verify: full` compares Dropbox's `content_hash` of the committed file with
  the same hash computed over the local archive (whose SHA-256 is checked in
  the same pass): no download needed;
- hosts: always api/content/notify.dropboxapi.com. The SDK reads
  DROPBOX_API_HOST & co. from the environment at import time; they are
  honoured only when SAR_BACKUP_DROPBOX_TEST_MODE=1 (tests with the local
  emulator), read when the client is built, with the CA bundle from
  SAR_BACKUP_DROPBOX_CA and a session that ignores REQUESTS_CA_BUNDLE/proxies
  of the environment. In production the host map of each client instance
  (and the token-refresh host) is forced to the real hosts.

Result codes (SPEC section 7):
- `authFailed`: token refused (401: invalid/expired/revoked token, missing
  scope), refresh token or app key/secret refused by oauth2/token, and also
  `no_write_permission`/`access_restricted` on the folder (the same remedy:
  fix the app's access);
- `connectFailed`: Dropbox unreachable, TLS failure, timeouts, connection
  lost and 5xx answers after the retries;
- `diskFull`: `insufficient_space` (user, team or member folder quota);
- `verifyFailed`: size or content_hash mismatch after the upload.
Messages never contain a token, secret or app secret.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import posixpath
import ssl
import time
import uuid

from .. import errors
from ..errors import MissingLibrary, TargetError
from ..fsutil import sha256_file
from .base import ROOT_DIR, RemoteFile, Target

try:
    # Absolute import: this module is `...targets.dropbox`, the SDK is the
    # top-level package `dropbox` (Python 3 imports are absolute).
    import dropbox as dropbox_sdk
    from dropbox import exceptions as dbx_exc
    from dropbox import files as dbx_files
    import requests
    if not hasattr(dropbox_sdk, "Dropbox"):  # pragma: no cover (something else named dropbox)
        raise ImportError("dropbox")
except ImportError:  # pragma: no cover
    dropbox_sdk = dbx_exc = dbx_files = requests = None

TEST_MODE_VAR = "SAR_BACKUP_DROPBOX_TEST_MODE"
TEST_CA_VAR = "SAR_BACKUP_DROPBOX_CA"
PRODUCTION_HOSTS = {
    "api": "api.dropboxapi.com",
    "content": "content.dropboxapi.com",
    "notify": "notify.dropboxapi.com",
}
HOST_VARS = {"api": "DROPBOX_API_HOST", "content": "DROPBOX_API_CONTENT_HOST", "notify": "DROPBOX_API_NOTIFY_HOST"}
BLOCK = 4 * 1024 * 1024  # Dropbox's content-hash block
CHUNK = 2 * BLOCK  # bytes per upload-session request
SINGLE_MAX = CHUNK  # up to this size: one files/upload
OAUTH_ERRORS = ("invalid_grant", "invalid_client", "invalid_request", "unauthorized_client", "invalid_scope")
SPACE_ERRORS = ("insufficient_space", "team_folder_insufficient_space", "member_folder_insufficient_space")
PERMISSION_ERRORS = ("no_write_permission", "access_restricted", "team_folder")
TRANSIENT_WRITE_ERRORS = ("too_many_write_operations", "content_hash_mismatch")


def content_hasher():
    """Dropbox's content hash (SHA-256 over the SHA-256 of each 4 MiB block)."""
    return _ContentHash()


class _ContentHash:
    def __init__(self):
        self.overall = hashlib.sha256()
        self.block = hashlib.sha256()
        self.filled = 0

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        while len(view):
            take = min(BLOCK - self.filled, len(view))
            self.block.update(view[:take])
            self.filled += take
            view = view[take:]
            if self.filled == BLOCK:
                self.overall.update(self.block.digest())
                self.block = hashlib.sha256()
                self.filled = 0

    def hexdigest(self) -> str:
        overall = self.overall.copy()
        if self.filled:
            overall.update(self.block.digest())
        return overall.hexdigest()


def _hash_of(data: bytes) -> str:
    """The per-request content_hash, passed explicitly: the dropbox SDK 12.2+ would add it by itself,
    older ones (12.1 is the newest for Python < 3.11) would not."""
    hasher = content_hasher()
    hasher.update(data)
    return hasher.hexdigest()


def _tags(error) -> list:
    """The tag path of an SDK error union, e.g. ['path', 'conflict', 'folder']."""
    tags = []
    node = error
    for _depth in range(8):
        if node is None:
            break
        tag = getattr(node, "_tag", None)
        if tag is None:
            node = getattr(node, "reason", None)  # UploadWriteFailed: a struct around the WriteError
            continue
        tags.append(tag)
        node = getattr(node, "_value", None)
    return tags


def _correct_offset(error):
    """correct_offset of an incorrect_offset error (append or finish), else None."""
    node = error
    for _depth in range(4):
        if node is None:
            return None
        offset = getattr(node, "correct_offset", None)
        if isinstance(offset, int):
            return offset
        node = getattr(node, "_value", None)
    return None


def production_hosts() -> dict:
    return dict(PRODUCTION_HOSTS)


def test_mode() -> bool:
    return os.environ.get(TEST_MODE_VAR) == "1"


if dropbox_sdk is not None:
    class _Client(dropbox_sdk.Dropbox):
        """The SDK client whose token refresh goes to this instance's API host
        (the SDK's default is the module-level host read at import time)."""

        def refresh_access_token(self, host=None, scope=None):
            return super().refresh_access_token(host=host or self._host_map["api"], scope=scope)
else:  # pragma: no cover
    _Client = None


class _Download(io.RawIOBase):
    """The body of a files/download answer, streamed; errors become TargetError."""

    def __init__(self, target: "DropboxTarget", response, name: str):
        super().__init__()
        self.target = target
        self.response = response
        self.name_ = name
        self.iterator = response.iter_content(1024 * 1024)
        self.buffer = b""
        self.done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self.buffer and not self.done:
            try:
                self.buffer = next(self.iterator)
            except StopIteration:
                self.done = True
            except (requests.exceptions.RequestException, OSError) as exc:
                raise TargetError("%s: connection lost while downloading %s (%s)"
                                  % (self.target.location(), self.name_, self.target.scrub(type(exc).__name__)),
                                  errors.CONNECT_FAILED, transient=True) from None
        count = min(len(buf), len(self.buffer))
        buf[:count] = self.buffer[:count]
        self.buffer = self.buffer[count:]
        return count

    def close(self) -> None:
        try:
            self.response.close()
        finally:
            super().close()


class DropboxTarget(Target):
    TYPE = "dropbox"

    TIMEOUT = (30, 120)  # seconds: connect, then between two packets
    RETRIES = 5  # per request, for 5xx / connection errors / timeouts
    BACKOFF = 2.0  # seconds, doubled each retry
    RATE_LIMIT_BUDGET = 600.0  # seconds of Retry-After waits per request at most
    RATE_LIMIT_DEFAULT = 5.0  # when a 429 gives no Retry-After
    MAX_RESUMES = 20  # incorrect_offset / lost-session restarts per upload

    def __init__(self, options: dict, ctx):
        super().__init__(options, ctx)
        raw = options.get("path") or "/"
        self.base = "/" + "/".join(p for p in raw.split("/") if p)  # "/" or "/a/b"
        self.client = None
        self._sources = {}  # archive name -> local path it was uploaded from (verify: full)
        self._sleep = time.sleep

    # -- naming ------------------------------------------------------------------
    def location(self) -> str:
        return "dropbox:%s" % (self.options.get("path") or "/")

    def folder(self) -> str:
        return posixpath.join(self.base, ROOT_DIR, self.ctx.job)

    def remote(self, name: str) -> str:
        return posixpath.join(self.folder(), name)

    def scrub(self, text: str) -> str:
        """Text without any secret of this target (for messages and logs)."""
        text = str(text)
        for key in ("refresh_token", "access_token", "app_secret"):
            secret = self.options.get(key)
            if secret:
                text = text.replace(str(secret), "***")
        if self.client is not None:
            token = getattr(self.client, "_oauth2_access_token", None)
            if token:
                text = text.replace(token, "***")
        return text

    # -- client ------------------------------------------------------------------
    def hosts(self) -> dict:
        """The API hosts: the real ones, unless test mode allows the SDK's variables."""
        hosts = production_hosts()
        if test_mode():
            for key, var in HOST_VARS.items():
                if os.environ.get(var):
                    hosts[key] = os.environ[var]
        return hosts

    def build_client(self):
        """The SDK client (no network)."""
        if dropbox_sdk is None:
            raise MissingLibrary("dropbox", "dropbox target")
        if test_mode():
            ca_file = os.environ.get(TEST_CA_VAR) or None
            if ca_file and not os.path.isfile(ca_file):
                raise TargetError("%s: the CA bundle in %s (%s) does not exist" % (self.location(), TEST_CA_VAR, ca_file),
                                  errors.CONNECT_FAILED)
            session = dropbox_sdk.create_session(ca_certs=ca_file)
            # REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE of the environment would override ca_certs.
            session.trust_env = False
        else:
            session = dropbox_sdk.create_session()
        common = {
            "session": session,
            "timeout": self.TIMEOUT,
            "user_agent": "sar-backup",
            # Retries are ours: finite, logged, and for connection errors too.
            "max_retries_on_error": 0,
            "max_retries_on_rate_limit": 0,
        }
        opts = self.options
        if opts.get("refresh_token"):
            client = _Client(oauth2_refresh_token=opts["refresh_token"], app_key=opts.get("app_key"),
                             app_secret=opts.get("app_secret") or None, **common)
        else:
            client = _Client(oauth2_access_token=opts.get("access_token"), **common)
        client._host_map = self.hosts()  # pylint: disable=protected-access
        return client

    def connect(self) -> None:
        if dropbox_sdk is None:
            raise MissingLibrary("dropbox", "dropbox target")
        if not (self.options.get("refresh_token") or self.options.get("access_token")):
            raise TargetError("%s: no refresh_token or access_token given" % self.location(), errors.AUTH_FAILED)
        self.close()
        try:
            self.client = self.build_client()
        except dropbox_sdk.dropbox_client.BadInputException as exc:  # e.g. refresh token without app key
            raise TargetError("%s: %s" % (self.location(), self.scrub(exc)), errors.AUTH_FAILED) from None
        self.call("signing in", self.client.check_and_refresh_access_token)
        self.call("checking the access token", self.client.check_user, "sar-backup")
        self.log("signed in (%s)" % ("refresh token" if self.options.get("refresh_token") else "access token"))

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # pylint: disable=broad-except
                pass

    # -- requests with retries ------------------------------------------------------------
    def call(self, what: str, func, *args, **kwargs):
        """One SDK call with finite retries; SDK and HTTP errors become TargetError,
        route errors (ApiError) are left to the caller."""
        attempt = 0
        waited = 0.0
        while True:
            try:
                return func(*args, **kwargs)
            except dbx_exc.ApiError:
                raise
            except dbx_exc.AuthError as exc:
                raise TargetError("%s: Dropbox refused the credentials while %s (%s)"
                                  % (self.location(), what, self._auth_reason(exc)), errors.AUTH_FAILED) from None
            except dbx_exc.RateLimitError as exc:
                wait = float(exc.backoff) if exc.backoff is not None else self.RATE_LIMIT_DEFAULT
                if waited + wait > self.RATE_LIMIT_BUDGET:
                    raise TargetError("%s: Dropbox keeps rate-limiting the app while %s (waited %.0fs; retry later)"
                                      % (self.location(), what, waited), errors.FAILED, transient=True) from None
                self.log("rate-limited while %s: waiting %.0fs as Dropbox asks" % (what, wait))
                waited += wait
                self._sleep(wait)
            except dbx_exc.InternalServerError as exc:
                attempt = self._backoff(attempt, what, "HTTP %s from Dropbox" % exc.status_code)
            except dbx_exc.BadInputError as exc:
                oauth = self._oauth_error(exc.message)
                if oauth:
                    raise TargetError("%s: Dropbox refused the app credentials while %s (%s)"
                                      % (self.location(), what, self.scrub(oauth)), errors.AUTH_FAILED) from None
                raise TargetError("%s: Dropbox refused the request while %s: %s"
                                  % (self.location(), what, self.scrub(str(exc.message)[:300])), errors.FAILED) from None
            except dbx_exc.HttpError as exc:  # anything else (5xx is InternalServerError above)
                raise TargetError("%s: unexpected HTTP %s from Dropbox while %s"
                                  % (self.location(), exc.status_code, what), errors.FAILED) from None
            except requests.exceptions.SSLError as exc:
                if not isinstance(self._innermost(exc), ssl.SSLCertVerificationError):
                    # A TLS stream cut mid-request (EOF, reset) is a lost connection, not a trust problem.
                    attempt = self._backoff(attempt, what, self._short(exc), exc)
                    continue
                raise TargetError("%s: TLS connection to Dropbox failed while %s (certificate not trusted): %s"
                                  % (self.location(), what, self.scrub(self._short(exc))), errors.CONNECT_FAILED) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                attempt = self._backoff(attempt, what, self._short(exc), exc)

    def _backoff(self, attempt: int, what: str, reason: str, exc=None) -> int:
        attempt += 1
        if attempt > self.RETRIES:
            kind = "timed out" if isinstance(exc, requests.exceptions.Timeout) else "unreachable or failing"
            raise TargetError("%s: Dropbox %s while %s, %d attempts (%s)"
                              % (self.location(), kind, what, attempt, self.scrub(reason)),
                              errors.CONNECT_FAILED, transient=True) from None
        delay = self.BACKOFF * (2 ** (attempt - 1))
        self.log("%s failed (%s), retry %d/%d in %.1fs" % (what, self.scrub(reason), attempt, self.RETRIES, delay))
        self._sleep(delay)
        return attempt

    @staticmethod
    def _innermost(exc) -> BaseException:
        """The innermost cause of a requests/urllib3 error."""
        reason = exc
        for _depth in range(8):
            inner = reason.args[0] if getattr(reason, "args", None) else None
            if isinstance(inner, BaseException):
                reason = inner
                continue
            inner = getattr(reason, "reason", None)
            if isinstance(inner, BaseException):
                reason = inner
                continue
            inner = reason.__cause__ or reason.__context__
            if isinstance(inner, BaseException) and not isinstance(reason, ssl.SSLError):
                reason = inner
                continue
            break
        return reason

    def _short(self, exc) -> str:
        """The innermost reason of a requests error, without the URL noise."""
        reason = self._innermost(exc)
        text = str(reason)
        return "%s: %s" % (type(reason).__name__, text[:200]) if text else type(reason).__name__

    @staticmethod
    def _auth_reason(exc) -> str:
        error = getattr(exc, "error", None)
        tag = getattr(error, "_tag", None)
        if tag == "invalid_access_token":
            return "invalid or revoked token (for a refresh token: invalid_grant)"
        if tag == "expired_access_token":
            return "expired access token; use a refresh token"
        if tag == "missing_scope":
            return "the app lacks a permission scope (needs files.content.write, files.content.read, account_info.read)"
        return tag or "HTTP 401"

    @staticmethod
    def _oauth_error(body) -> str:
        try:
            data = json.loads(body)
        except (TypeError, ValueError):
            return ""
        if isinstance(data, dict) and data.get("error") in OAUTH_ERRORS:
            return "%s: %s" % (data["error"], str(data.get("error_description", ""))[:120])
        return ""

    def _route_error(self, exc, what: str) -> TargetError:
        """A TargetError for a route error (409) that the caller does not handle."""
        tags = _tags(exc.error)
        summary = "/".join(tags) or "unknown error"
        if any(t in SPACE_ERRORS for t in tags):
            return TargetError("%s: the Dropbox account has not enough free space (%s while %s)"
                               % (self.location(), summary, what), errors.DISK_FULL)
        if any(t in PERMISSION_ERRORS for t in tags):
            return TargetError("%s: the app may not write there (%s while %s)" % (self.location(), summary, what),
                               errors.AUTH_FAILED)
        transient = any(t in TRANSIENT_WRITE_ERRORS for t in tags)
        return TargetError("%s: Dropbox error %s while %s" % (self.location(), summary, what), errors.FAILED,
                           transient=transient)

    # -- folders and listing ------------------------------------------------------------
    def ensure_dir(self) -> None:
        folder = self.folder()
        try:
            self.call("creating %s" % folder, self.client.files_create_folder_v2, folder)
        except dbx_exc.ApiError as exc:
            tags = _tags(exc.error)
            if tags[:3] == ["path", "conflict", "folder"]:
                return  # already there
            if "conflict" in tags:
                raise TargetError("%s: cannot create folder %s: a file is in the way (%s)"
                                  % (self.location(), folder, "/".join(tags)), errors.FAILED) from None
            raise self._route_error(exc, "creating %s" % folder) from None

    def listdir(self) -> list:
        folder = self.folder()
        for _attempt in range(3):  # a `reset` cursor restarts the listing
            try:
                result = self.call("listing %s" % folder, self.client.files_list_folder, folder)
            except dbx_exc.ApiError as exc:
                if _tags(exc.error)[:2] == ["path", "not_found"]:
                    return []
                raise self._route_error(exc, "listing %s" % folder) from None
            entries = list(result.entries)
            try:
                while result.has_more:
                    result = self.call("listing %s" % folder, self.client.files_list_folder_continue, result.cursor)
                    entries.extend(result.entries)
            except dbx_exc.ApiError as exc:
                if _tags(exc.error)[:1] == ["reset"]:
                    continue
                raise self._route_error(exc, "listing %s" % folder) from None
            return [RemoteFile(e.name, int(e.size), _epoch(e.server_modified))
                    for e in entries if isinstance(e, dbx_files.FileMetadata)]
        raise TargetError("%s: listing %s keeps being reset by Dropbox" % (self.location(), folder), errors.FAILED)

    def metadata(self, name: str):
        """FileMetadata of an archive, or None."""
        path = self.remote(name)
        try:
            meta = self.call("reading metadata of %s" % name, self.client.files_get_metadata, path)
        except dbx_exc.ApiError as exc:
            if _tags(exc.error)[:2] == ["path", "not_found"]:
                return None
            raise self._route_error(exc, "reading metadata of %s" % name) from None
        return meta if isinstance(meta, dbx_files.FileMetadata) else None

    def size_of(self, name: str):
        meta = self.metadata(name)
        return None if meta is None else int(meta.size)

    def remove(self, name: str) -> None:
        try:
            self.call("deleting %s" % name, self.client.files_delete_v2, self.remote(name))
        except dbx_exc.ApiError as exc:
            if _tags(exc.error)[:2] == ["path_lookup", "not_found"]:
                return  # already gone
            raise self._route_error(exc, "deleting %s" % name) from None

    def open_read(self, name: str):
        try:
            _meta, response = self.call("downloading %s" % name, self.client.files_download, self.remote(name))
        except dbx_exc.ApiError as exc:
            if _tags(exc.error)[:2] == ["path", "not_found"]:
                raise TargetError("%s: %s not found" % (self.location(), name), errors.FAILED) from None
            raise self._route_error(exc, "downloading %s" % name) from None
        return io.BufferedReader(_Download(self, response, name), buffer_size=1024 * 1024)

    def probe_write(self) -> None:
        # Check mode creates nothing: an upload would create missing parent
        # folders, so the probe goes to the nearest folder that exists.
        where = self.folder()
        while where != "/":
            try:
                meta = self.call("looking up %s" % where, self.client.files_get_metadata, where)
                if isinstance(meta, dbx_files.FolderMetadata):
                    break
                raise TargetError("%s: %s is a file, not a folder" % (self.location(), where), errors.FAILED)
            except dbx_exc.ApiError as exc:
                if _tags(exc.error)[:2] != ["path", "not_found"]:
                    raise self._route_error(exc, "looking up %s" % where) from None
            where = posixpath.dirname(where)
        probe = posixpath.join(where, ".sar-backup-probe-%s" % uuid.uuid4().hex)
        try:
            self.call("writing a probe file", self.client.files_upload, b"sar-backup write probe\n", probe,
                      mode=dbx_files.WriteMode.add, autorename=False, mute=True)
        except dbx_exc.ApiError as exc:
            raise self._route_error(exc, "writing a probe file in %s" % where) from None
        try:
            self.call("deleting the probe file", self.client.files_delete_v2, probe)
        except (dbx_exc.ApiError, TargetError) as exc:
            self.log("could not delete probe file %s: %s" % (probe, self.scrub(exc)))

    # -- upload --------------------------------------------------------------------------
    def put(self, src_path: str, name: str, size: int) -> None:
        dest = self.remote(name)
        actual = os.path.getsize(src_path)
        if actual != size:
            raise TargetError("%s: %s has %d bytes, expected %d" % (self.location(), src_path, actual, size),
                              errors.FAILED)
        self._sources[name] = src_path
        if size <= SINGLE_MAX:
            self._upload_single(src_path, dest, name)
        else:
            self._upload_session(src_path, dest, name, size)
        self.log("uploaded %s (%d bytes)" % (dest, size))

    def _commit_info(self, dest: str):
        return dbx_files.CommitInfo(path=dest, mode=dbx_files.WriteMode.overwrite, autorename=False, mute=True)

    def _upload_single(self, src_path: str, dest: str, name: str):
        with open(src_path, "rb") as handle:
            data = handle.read()
        for attempt in range(1, self.RETRIES + 2):
            try:
                return self.call("uploading %s" % name, self.client.files_upload, data, dest,
                                 mode=dbx_files.WriteMode.overwrite, autorename=False, mute=True,
                                 content_hash=_hash_of(data))
            except dbx_exc.ApiError as exc:
                error = self._route_error(exc, "uploading %s" % name)
                if not error.transient or attempt > self.RETRIES:
                    raise error from None
                self.log("uploading %s: %s, sending it again" % (name, error))
        raise AssertionError("unreachable")

    def _upload_session(self, src_path: str, dest: str, name: str, size: int):
        """Session upload, committed to `dest` by finish (nothing visible before)."""
        session = None
        offset = 0
        resumes = 0
        finish_sent = False  # a finish may have committed even if its answer was lost
        what = "uploading %s" % name

        def resume(reason: str) -> None:
            nonlocal resumes
            resumes += 1
            if resumes > self.MAX_RESUMES:
                raise TargetError("%s: upload of %s gave up after %d resumes (%s)"
                                  % (self.location(), name, resumes - 1, reason), errors.FAILED, transient=True)
            self.log("%s: %s" % (what, reason))

        with open(src_path, "rb") as handle:
            while True:
                handle.seek(offset)
                data = handle.read(min(CHUNK, size - offset))
                last = offset + len(data) >= size
                try:
                    if session is None:
                        result = self.call(what, self.client.files_upload_session_start, data, content_hash=_hash_of(data))
                        session = result.session_id
                    elif last:
                        finish_sent = True
                        cursor = dbx_files.UploadSessionCursor(session_id=session, offset=offset)
                        return self.call(what, self.client.files_upload_session_finish, data, cursor,
                                         self._commit_info(dest), content_hash=_hash_of(data))
                    else:
                        cursor = dbx_files.UploadSessionCursor(session_id=session, offset=offset)
                        self.call(what, self.client.files_upload_session_append_v2, data, cursor,
                                  content_hash=_hash_of(data))
                    offset += len(data)
                except dbx_exc.ApiError as exc:
                    tags = _tags(exc.error)
                    correct = _correct_offset(exc.error)
                    if "incorrect_offset" in tags and correct is not None and 0 <= correct <= size:
                        # Dropbox got a request whose answer we lost: go on from where it is.
                        resume("Dropbox has %d bytes, not %d: resuming there" % (correct, offset))
                        offset = correct
                        continue
                    if "not_found" in tags and session is not None:
                        if finish_sent and self._committed(src_path, name, size):
                            return None
                        resume("upload session lost, starting again")
                        session, offset, finish_sent = None, 0, False
                        continue
                    error = self._route_error(exc, what)
                    if error.transient:
                        resume("%s, sending the chunk again" % "/".join(tags))
                        continue
                    raise error from None

    def _committed(self, src_path: str, name: str, size: int) -> bool:
        """After a finish whose answer was lost: is our archive there, complete?"""
        meta = self.metadata(name)
        return meta is not None and int(meta.size) == size and meta.content_hash == self._local_hash(src_path)[0]

    @staticmethod
    def _local_hash(src_path: str) -> tuple:
        """(Dropbox content hash, SHA-256) of a local file, in one pass."""
        chash = content_hasher()
        sha = sha256_file(src_path, BLOCK, sinks=(chash.update,))[0]
        return chash.hexdigest(), sha.hexdigest()

    # -- verification ----------------------------------------------------------------------
    def verify_full(self, name: str, size: int, sha256: str) -> None:
        src = self._sources.get(name)
        if not src or not os.path.exists(src):
            super().verify_full(name, size, sha256)  # no local copy: read it back
            return
        local_hash, local_sha = self._local_hash(src)
        if local_sha != sha256:
            raise TargetError("%s: the local archive %s changed during the upload (sha256 %s, expected %s)"
                              % (self.location(), src, local_sha, sha256), errors.VERIFY_FAILED)
        meta = self.metadata(name)
        if meta is None:
            raise TargetError("%s: %s is missing after upload" % (self.location(), name), errors.VERIFY_FAILED)
        if meta.content_hash != local_hash:
            raise TargetError("%s: %s has Dropbox content_hash %s, expected %s"
                              % (self.location(), name, meta.content_hash, local_hash), errors.VERIFY_FAILED)


def _epoch(value) -> float:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)  # the SDK gives naive UTC
        return value.timestamp()
    return 0.0


TARGET = DropboxTarget
