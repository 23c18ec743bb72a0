# SPDX-License-Identifier: GPL-3.0-or-later
"""A local HTTPS emulator of the Dropbox API v2 endpoints the official Python
SDK (`dropbox`) calls for the `dropbox` target, for tests on loopback.

    with DropboxEmulator(tmp_dir) as emu:
        emu.env()            # SAR_BACKUP_DROPBOX_TEST_MODE, DROPBOX_API_HOST, ... , SAR_BACKUP_DROPBOX_CA
        emu.access_token     # a long-lived access token the emulator accepts
        emu.refresh_token, emu.app_key, emu.app_secret   # a refresh-token app
        emu.pkce_refresh_token                           # a PKCE refresh token (no secret)
        emu.read_file("/a/b.sar") -> bytes or None, emu.list_names("/a") -> [names]

Two HTTPS servers (stdlib http.server + ssl, one thread each plus one per
connection, HTTP/1.1 keep-alive) on 127.0.0.1, free ports: the "api" host
(oauth2/token and the RPC routes) and the "content" host (upload and download
routes). A route called on the wrong host is refused with 400, like Dropbox
does, so a client that mixes up its host map is caught. The certificate is
self-signed (openssl, subjectAltName DNS:localhost,IP:127.0.0.1) in the
emulator's own temporary folder; `ca_path` is the CA a client must trust.

Behaviour emulated, from Dropbox's HTTP API documentation
(https://www.dropbox.com/developers/documentation/http/documentation):

- Wire formats: RPC routes take a JSON body (Content-Type application/json)
  and answer JSON; upload routes take the argument in the `Dropbox-API-Arg`
  header (JSON, or the `arg` URL parameter) and the data as
  application/octet-stream; download routes answer the result in the
  `Dropbox-API-Result` header and the bytes in the body. Every answer carries
  `X-Dropbox-Request-Id`.
- Errors: 400 plain text for bad input (malformed JSON, missing/unknown
  fields' types, wrong Content-Type, no Authorization header, root given as
  "/" to list_folder, get_metadata on the root, unknown route); 401 JSON
  `{"error_summary": "invalid_access_token/..", "error": {".tag":
  "invalid_access_token"}}` for an unknown bearer token and
  `expired_access_token` for an expired one; 409 JSON route errors
  `{"error_summary": "<tag>/<tag>/..", "error": {...}}` in the documented
  union shapes (e.g. `path/not_found`, `path/conflict/folder`,
  `lookup_failed/incorrect_offset` with `correct_offset`); 429 with a
  `Retry-After` header and a JSON body `{"error": {"reason": {".tag":
  "too_many_requests"}, "retry_after": N}}` (or plain text, as the rate-limit
  guide allows); 5xx on injected faults.
- OAuth2: POST /oauth2/token with grant_type=refresh_token, client_id and
  (for non-PKCE tokens) client_secret in the form or HTTP Basic auth ->
  `{"access_token", "token_type": "bearer", "expires_in"}` (short-lived token,
  default 4 h); an unknown/revoked refresh token -> 400 `invalid_grant`;
  wrong app key/secret -> 400 `invalid_client`; a non-PKCE token without
  secret -> 400 `invalid_request`.
- check/user (echo), files/upload (single request, at most 150 MiB ->
  `payload_too_large`), files/upload_session/start, append_v2, finish
  (sequential sessions: the cursor offset must equal the bytes received so
  far, else `incorrect_offset` with `correct_offset`; `closed` sessions refuse
  appends; a finished session is gone (`not_found`); nothing is visible under
  the commit path until finish succeeds), the per-request `content_hash`
  argument (Dropbox content hash of that request's bytes only) checked ->
  `content_hash_mismatch`, commit modes add/overwrite/update with autorename,
  conflicts (`conflict/file`, `conflict/folder`, `conflict/file_ancestor`),
  missing parent folders created on commit, `insufficient_space` when a
  commit would exceed the quota; files/create_folder_v2 (parents created,
  `conflict/folder` when it exists), files/list_folder (+ /continue, paged by
  `limit` or the emulator's page size, cursors), files/delete_v2 (recursive
  for folders, `path_lookup/not_found`), files/get_metadata, files/download.
- Paths are case-insensitive and case-preserving (`path_lower`,
  `path_display`); FileMetadata carries id, rev, size, client/server_modified
  and `content_hash` (SHA-256 over the SHA-256 of each 4 MiB block, computed
  here independently of the SDK).

Not emulated: concurrent upload sessions (refused with 400), batch routes,
longpoll, sharing, revisions history, team spaces/path roots, the 7-day
session expiry, identical-content no-op for mode add.

Fault injection (thread-safe, may be changed while running):
- `fail_next(count, status=503, route=None)`: the next `count` requests (to
  `route`, e.g. "files/upload_session/append_v2", or any) answer `status`;
  count=None means every such request from now on.
- `rate_limit_next(retry_after=1, count=1, route=None, json_body=True)`: the
  next request answers 429 with Retry-After; until that time has passed every
  further request answers 429 as well (with the remaining seconds), like a real
  rate limiter; `count` such windows.
- `drop_during_append(after_bytes, count=1)`: an append_v2 reads
  `after_bytes` of its body, then the connection is reset (nothing appended).
- `drop_after_append(count=1, route=append_v2)`: the request is applied, then
  the connection is closed without an answer (a retried append gets
  `incorrect_offset`; a retried finish `lookup_failed/not_found`).
- `corrupt_next(route=append_v2, count=1)`: one bit of that request's body is
  flipped on arrival (its per-request content_hash then fails).
- `quota`: bytes of storage (None: unlimited); commits beyond it fail with
  `insufficient_space`.
- `expire_access_tokens()`: every access token issued so far expires.
- `page_size`: list_folder entries per page.
`calls` records a Call(host, route, status, time, length) per request.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

BLOCK = 4 * 1024 * 1024
MAX_REQUEST = 150 * 1024 * 1024  # 150 MiB per request (upload, start, append, finish)
MAX_SESSION = 350 * 1000 ** 3  # "the max file size limit (i.e. 350GB)"
TOKEN_LIFETIME = 4 * 3600

API_ROUTES = {
    "check/user", "files/create_folder_v2", "files/list_folder", "files/list_folder/continue",
    "files/delete_v2", "files/get_metadata",
}
CONTENT_ROUTES = {
    "files/upload", "files/upload_session/start", "files/upload_session/append_v2",
    "files/upload_session/finish", "files/download",
}


def content_hash_of(data: bytes) -> str:
    hasher = ContentHasher()
    hasher.update(data)
    return hasher.hexdigest()


class ContentHasher:
    """Dropbox's content_hash: SHA-256 of the concatenated SHA-256 digests of
    each 4 MiB block (own implementation, so the SDK's is not checked against
    itself)."""

    def __init__(self):
        self.overall = hashlib.sha256()
        self.block = hashlib.sha256()
        self.in_block = 0

    def update(self, data) -> None:
        view = memoryview(data)
        while len(view):
            take = min(BLOCK - self.in_block, len(view))
            self.block.update(view[:take])
            self.in_block += take
            view = view[take:]
            if self.in_block == BLOCK:
                self.overall.update(self.block.digest())
                self.block = hashlib.sha256()
                self.in_block = 0

    def hexdigest(self) -> str:
        overall = self.overall.copy()
        if self.in_block:
            overall.update(self.block.digest())
        return overall.hexdigest()


def make_cert(directory: str) -> tuple:
    cert = os.path.join(directory, "dropbox-cert.pem")
    key = os.path.join(directory, "dropbox-key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", key, "-out", cert, "-subj", "/CN=sar-backup test Dropbox API",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return cert, key


def _now_iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class ApiFailure(Exception):
    """An answer other than 200 (raised by route handlers)."""

    def __init__(self, status: int, body, content_type: str = "application/json", headers: dict | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}


def route_error(error: dict) -> ApiFailure:
    """409 with the documented {error_summary, error} body."""
    tags = []
    node = error
    while isinstance(node, dict) and ".tag" in node:
        tag = node[".tag"]
        tags.append(tag)
        node = node.get(tag) if isinstance(node.get(tag), dict) else (
            node.get("reason") if isinstance(node.get("reason"), dict) else None)
    return ApiFailure(409, {"error_summary": "/".join(tags) + "/..", "error": error})


def bad_input(text: str) -> ApiFailure:
    return ApiFailure(400, text, content_type="text/plain; charset=utf-8")


@dataclass
class Node:
    kind: str  # "file" | "folder"
    path_display: str
    id: str
    blob: str = ""  # file: path of the bytes on disk
    size: int = 0
    content_hash: str = ""
    rev: str = ""
    client_modified: float = 0.0
    server_modified: float = 0.0

    @property
    def name(self) -> str:
        return self.path_display.rsplit("/", 1)[-1]

    def metadata(self, tag: bool = True) -> dict:
        meta = {"name": self.name, "id": self.id, "path_lower": self.path_display.lower(),
                "path_display": self.path_display}
        if self.kind == "file":
            meta.update({
                "client_modified": _now_iso(self.client_modified), "server_modified": _now_iso(self.server_modified),
                "rev": self.rev, "size": self.size, "is_downloadable": True, "content_hash": self.content_hash,
            })
        if tag:
            meta = dict({".tag": self.kind}, **meta)
        return meta


@dataclass
class Session:
    id: str
    blob: str
    offset: int = 0
    closed: bool = False
    hasher: ContentHasher = field(default_factory=ContentHasher)


@dataclass
class Fault:
    kind: str  # "status" | "ratelimit" | "drop_during" | "drop_after" | "corrupt"
    count: int | None  # None: forever
    route: str | None = None
    status: int = 503
    retry_after: int = 1
    json_body: bool = True
    after_bytes: int = 0


@dataclass
class Call:
    host: str  # "api" | "content"
    route: str
    status: int  # 0: connection dropped without an answer
    time: float
    length: int  # request body bytes (Content-Length)


class _DropConnection(Exception):
    """Close the connection without an answer."""


class DropboxEmulator:
    def __init__(self, tmp_dir: str | None = None):
        self.root = tempfile.mkdtemp(prefix="sar-dropbox-emu-", dir=tmp_dir)
        self.blobs = os.path.join(self.root, "blobs")
        os.makedirs(self.blobs)
        self.lock = threading.RLock()
        self.app_key = "sarappkey" + secrets.token_hex(4)
        self.app_secret = "sarappsecret" + secrets.token_hex(8)
        self.refresh_token = "sarrefresh-" + secrets.token_urlsafe(24)
        self.pkce_refresh_token = "sarpkcerefresh-" + secrets.token_urlsafe(24)
        self.access_token = "sl.saraccess-" + secrets.token_urlsafe(32)  # long-lived
        # refresh token -> needs secret?
        self.refresh_tokens = {self.refresh_token: True, self.pkce_refresh_token: False}
        self.tokens = {self.access_token: None}  # access token -> expiry epoch (None: never)
        self.token_lifetime = TOKEN_LIFETIME
        self.nodes = {"": Node("folder", "", "id:root")}  # path_lower -> Node ("" is the root)
        self.sessions = {}
        self.cursors = {}
        self.page_size = 2000
        self.quota = None
        self.faults = []
        self.blocked_until = 0.0
        self.blocked_json = True
        self.calls = []
        self.connections = set()
        self.servers = {}
        self.threads = []
        self.cert = self.key = None
        self._ids = 0

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> "DropboxEmulator":
        self.cert, self.key = make_cert(self.root)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        for kind in ("api", "content"):
            server = _Server(("127.0.0.1", 0), _Handler, self, kind, context)
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                      name="dropbox-emulator-%s" % kind, daemon=True)
            thread.start()
            self.servers[kind] = server
            self.threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self.servers.values():
            server.shutdown()
            server.server_close()
        with self.lock:
            conns = list(self.connections)
        for conn in conns:  # keep-alive connections of clients: reset them
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self.threads:
            thread.join(timeout=5)
        self.servers = {}
        self.threads = []
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def ca_path(self) -> str:
        return self.cert

    def host(self, kind: str = "api") -> str:
        return "127.0.0.1:%d" % self.servers[kind].server_address[1]

    def env(self) -> dict:
        """What a test sets so the target talks to this emulator."""
        return {
            "SAR_BACKUP_DROPBOX_TEST_MODE": "1",
            "DROPBOX_API_HOST": self.host("api"),
            "DROPBOX_API_CONTENT_HOST": self.host("content"),
            "DROPBOX_API_NOTIFY_HOST": self.host("api"),
            "SAR_BACKUP_DROPBOX_CA": self.ca_path,
        }

    # -- knobs ---------------------------------------------------------------
    def fail_next(self, count: int | None, status: int = 503, route: str | None = None) -> None:
        with self.lock:
            self.faults.append(Fault("status", count, route, status=status))

    def rate_limit_next(self, retry_after: int = 1, count: int = 1, route: str | None = None, json_body: bool = True) -> None:
        with self.lock:
            self.faults.append(Fault("ratelimit", count, route, retry_after=retry_after, json_body=json_body))

    def drop_during_append(self, after_bytes: int, count: int = 1) -> None:
        with self.lock:
            self.faults.append(Fault("drop_during", count, "files/upload_session/append_v2", after_bytes=after_bytes))

    def drop_after_append(self, count: int = 1, route: str = "files/upload_session/append_v2") -> None:
        """The request (append_v2, or `route`: finish, upload, start) is applied,
        then the connection is closed without an answer."""
        with self.lock:
            self.faults.append(Fault("drop_after", count, route))

    def corrupt_next(self, route: str = "files/upload_session/append_v2", count: int = 1) -> None:
        """The body of the next `route` request arrives with one bit flipped (damage in
        transit): its content_hash no longer matches -> 409 content_hash_mismatch."""
        with self.lock:
            self.faults.append(Fault("corrupt", count, route))

    def clear_faults(self) -> None:
        with self.lock:
            self.faults = []
            self.blocked_until = 0.0

    def reset(self) -> None:
        """Empty storage, sessions, cursors, faults, quota, call log and issued
        short-lived tokens (between tests)."""
        with self.lock:
            for node in self.nodes.values():
                if node.blob:
                    try:
                        os.unlink(node.blob)
                    except OSError:
                        pass
            for session in self.sessions.values():
                try:
                    os.unlink(session.blob)
                except OSError:
                    pass
            self.nodes = {"": Node("folder", "", "id:root")}
            self.sessions = {}
            self.cursors = {}
            self.faults = []
            self.blocked_until = 0.0
            self.quota = None
            self.page_size = 2000
            self.calls = []
            self.tokens = {self.access_token: None}

    def expire_access_tokens(self) -> None:
        with self.lock:
            for token in self.tokens:
                self.tokens[token] = time.time() - 1

    # -- inspection ------------------------------------------------------------
    def node(self, path: str):
        with self.lock:
            return self.nodes.get(path.rstrip("/").lower() if path != "/" else "")

    def read_file(self, path: str):
        node = self.node(path)
        if node is None or node.kind != "file":
            return None
        with open(node.blob, "rb") as handle:
            return handle.read()

    def list_names(self, folder: str) -> list:
        prefix = folder.rstrip("/").lower() + "/"
        with self.lock:
            return sorted(n.name for key, n in self.nodes.items()
                          if key.startswith(prefix) and "/" not in key[len(prefix):])

    def put_file(self, path: str, data: bytes) -> dict:
        """Store a file directly (test setup)."""
        with self.lock:
            blob = os.path.join(self.blobs, self._new_id("b"))
            with open(blob, "wb") as handle:
                handle.write(data)
            return self._commit(path, blob, len(data), content_hash_of(data), {".tag": "overwrite"}, False, None)

    def used_bytes(self) -> int:
        with self.lock:
            return sum(n.size for n in self.nodes.values() if n.kind == "file")

    def routes_called(self) -> list:
        with self.lock:
            return [c.route for c in self.calls]

    # -- internals ---------------------------------------------------------------
    def _new_id(self, prefix: str) -> str:
        self._ids += 1
        return "%s%06d%s" % (prefix, self._ids, secrets.token_hex(6))

    def take_fault(self, route: str):
        """The fault this request gets (or None); consumes it."""
        with self.lock:
            now = time.time()
            if now < self.blocked_until:
                return Fault("ratelimit", 1, retry_after=max(1, int(self.blocked_until - now + 0.999)),
                             json_body=self.blocked_json)
            for fault in list(self.faults):
                if fault.route is not None and fault.route != route:
                    continue
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count <= 0:
                        self.faults.remove(fault)
                if fault.kind == "ratelimit":
                    self.blocked_until = now + fault.retry_after
                    self.blocked_json = fault.json_body
                return fault
        return None

    def check_token(self, header: str | None) -> None:
        if not header:
            raise bad_input('Error in call to API function: Must provide HTTP header "Authorization" '
                            'or URL parameter "authorization".')
        if not header.startswith("Bearer "):
            raise bad_input('Error in call to API function: Invalid authorization value in HTTP header '
                            '"Authorization": %r. Expecting "Bearer <oauth2-access-token>".' % header.split(" ")[0])
        token = header[len("Bearer "):].strip()
        with self.lock:
            known = token in self.tokens
            expiry = self.tokens.get(token)
        if not known:
            raise ApiFailure(401, {"error_summary": "invalid_access_token/..",
                                   "error": {".tag": "invalid_access_token"}})
        if expiry is not None and expiry <= time.time():
            raise ApiFailure(401, {"error_summary": "expired_access_token/..",
                                   "error": {".tag": "expired_access_token"}})

    # OAuth2 -----------------------------------------------------------------------
    def oauth_token(self, form: dict, basic: tuple | None) -> dict:
        def oauth_error(error: str, description: str) -> ApiFailure:
            return ApiFailure(400, {"error": error, "error_description": description})

        grant = form.get("grant_type")
        if grant != "refresh_token":
            raise oauth_error("unsupported_grant_type", "only refresh_token is emulated")
        client_id = form.get("client_id") or (basic[0] if basic else None)
        client_secret = form.get("client_secret") or (basic[1] if basic else None)
        token = form.get("refresh_token")
        if client_id != self.app_key:
            raise oauth_error("invalid_client", "Invalid client_id or client_secret")
        with self.lock:
            needs_secret = self.refresh_tokens.get(token)
        if needs_secret is None:
            raise oauth_error("invalid_grant", "refresh token is invalid or revoked")
        if client_secret is not None and client_secret != self.app_secret:
            raise oauth_error("invalid_client", "Invalid client_id or client_secret")
        if needs_secret and client_secret is None:
            raise oauth_error("invalid_request", "No auth function available for given request")
        access = "sl.sarshort-" + secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[access] = time.time() + self.token_lifetime
        return {"access_token": access, "token_type": "bearer", "expires_in": self.token_lifetime}

    # paths -------------------------------------------------------------------------
    @staticmethod
    def check_path(path, field_name: str = "path", allow_root: bool = False) -> str:
        if not isinstance(path, str):
            raise bad_input("Error in call to API function: request body: %s: expected string" % field_name)
        if path == "" and allow_root:
            return ""
        if not path.startswith("/") and not path.startswith("id:"):
            raise bad_input("Error in call to API function: request body: %s: '%s' did not match pattern "
                            "'(/(.|[\\r\\n])*)|(ns:[0-9]+(/.*)?)'" % (field_name, path))
        return path

    def malformed(self, path: str) -> bool:
        return path == "/" or path.endswith("/") or "//" in path or any(p in (".", "..") for p in path.split("/")[1:])

    def resolve(self, path: str) -> str:
        """path_lower of a path or id:..."""
        if path.startswith("id:"):
            with self.lock:
                for key, node in self.nodes.items():
                    if node.id == path:
                        return key
            return "\0missing"
        return path.lower()

    def ancestors_ok(self, path: str):
        """None, or the WriteError conflict tag when an ancestor is a file."""
        parts = path.split("/")[1:-1]
        key = ""
        for part in parts:
            key += "/" + part.lower()
            node = self.nodes.get(key)
            if node is not None and node.kind == "file":
                return "file_ancestor"
        return None

    def make_parents(self, path: str) -> None:
        parts = path.split("/")[1:-1]
        key = display = ""
        for part in parts:
            key += "/" + part.lower()
            display += "/" + part
            node = self.nodes.get(key)
            if node is None:
                self.nodes[key] = Node("folder", display, "id:" + self._new_id("f"))
            display = self.nodes[key].path_display

    def _display_for(self, path: str) -> str:
        """Case-preserving: existing parents keep their spelling."""
        parent, _sep, name = path.rpartition("/")
        node = self.nodes.get(parent.lower())
        return (node.path_display if node is not None else parent) + "/" + name

    def _commit(self, path: str, blob: str, size: int, chash: str, mode, autorename: bool, client_modified):
        """Place a finished upload at `path` (lock held). Returns file metadata or raises 409."""
        def write_error(tag, sub=None):
            err = {".tag": tag}
            if sub is not None:
                err[tag] = {".tag": sub}
            return err

        if self.malformed(path):
            return write_error("malformed_path")
        conflict = self.ancestors_ok(path)
        if conflict:
            return write_error("conflict", conflict)
        mode_tag = mode.get(".tag") if isinstance(mode, dict) else mode
        key = path.lower()
        existing = self.nodes.get(key)
        if existing is not None and existing.kind == "folder":
            if not autorename:
                return write_error("conflict", "folder")
            path, key, existing = self._autorename(path)
        elif existing is not None and mode_tag == "add":
            if not autorename:
                return write_error("conflict", "file")
            path, key, existing = self._autorename(path)
        elif existing is not None and mode_tag == "update" and existing.rev != mode.get("update"):
            if not autorename:
                return write_error("conflict", "file")
            path, key, existing = self._autorename(path)
        elif existing is None and mode_tag == "update":
            return write_error("conflict", "file")
        freed = existing.size if existing is not None else 0
        if self.quota is not None and self.used_bytes() - freed + size > self.quota:
            return write_error("insufficient_space")
        self.make_parents(path)
        now = time.time()
        node = Node("file", self._display_for(path), existing.id if existing else "id:" + self._new_id("i"),
                    blob=blob, size=size, content_hash=chash, rev="%015x" % (self._ids * 7919 + 1000000),
                    client_modified=client_modified or now, server_modified=now)
        self._ids += 1
        if existing is not None and existing.blob and existing.blob != blob:
            try:
                os.unlink(existing.blob)
            except OSError:
                pass
        self.nodes[key] = node
        return node.metadata()

    def _autorename(self, path: str):
        stem, dot, ext = path.rpartition(".")
        if not dot or "/" in ext:
            stem, ext = path, ""
        for i in range(1, 1000):
            candidate = "%s (%d)%s" % (stem, i, "." + ext if ext else "")
            if candidate.lower() not in self.nodes:
                return candidate, candidate.lower(), None
        raise ApiFailure(500, "autorename exhausted", content_type="text/plain")

    # routes -------------------------------------------------------------------------
    def rpc(self, route: str, arg: dict):
        if route == "check/user":
            return {"result": str(arg.get("query", ""))}
        if route == "files/create_folder_v2":
            return self.create_folder(arg)
        if route == "files/list_folder":
            return self.list_folder(arg)
        if route == "files/list_folder/continue":
            return self.list_continue(arg)
        if route == "files/delete_v2":
            return self.delete(arg)
        if route == "files/get_metadata":
            return self.get_metadata(arg)
        raise bad_input("Unknown API function: %r" % route)

    def create_folder(self, arg):
        path = self.check_path(arg.get("path"))
        with self.lock:
            if self.malformed(path):
                raise route_error({".tag": "path", "path": {".tag": "malformed_path"}})
            conflict = self.ancestors_ok(path)
            if conflict:
                raise route_error({".tag": "path", "path": {".tag": "conflict", "conflict": {".tag": conflict}}})
            existing = self.nodes.get(path.lower())
            if existing is not None:
                raise route_error({".tag": "path", "path": {".tag": "conflict", "conflict": {".tag": existing.kind}}})
            self.make_parents(path)
            node = Node("folder", self._display_for(path), "id:" + self._new_id("f"))
            self.nodes[path.lower()] = node
            return {"metadata": node.metadata(tag=False)}

    def _lookup(self, path: str, error_tag: str = "path", want: str | None = None) -> Node:
        if self.malformed(path):
            raise route_error({".tag": error_tag, error_tag: {".tag": "malformed_path"}})
        node = self.nodes.get(self.resolve(path))
        if node is None:
            raise route_error({".tag": error_tag, error_tag: {".tag": "not_found"}})
        if want == "folder" and node.kind != "folder":
            raise route_error({".tag": error_tag, error_tag: {".tag": "not_folder"}})
        if want == "file" and node.kind != "file":
            raise route_error({".tag": error_tag, error_tag: {".tag": "not_file"}})
        return node

    def list_folder(self, arg):
        path = arg.get("path")
        if path == "/":
            raise bad_input('Error in call to API function "files/list_folder": request body: path: '
                            'Specify the root folder as an empty string rather than as "/".')
        path = self.check_path(path, allow_root=True)
        limit = arg.get("limit") or self.page_size
        if not isinstance(limit, int) or not 1 <= limit <= 2000:
            raise bad_input("Error in call to API function: request body: limit: must be between 1 and 2000")
        with self.lock:
            if path == "":
                key = ""
            else:
                key = self.resolve(self._lookup(path, want="folder").path_display)
            prefix = key + "/"
            recursive = bool(arg.get("recursive"))
            entries = sorted((n for k, n in self.nodes.items()
                              if k.startswith(prefix) and (recursive or "/" not in k[len(prefix):])),
                             key=lambda n: n.path_display.lower())
            return self._page([n.metadata() for n in entries], min(limit, self.page_size))

    def _page(self, entries: list, limit: int) -> dict:
        page, rest = entries[:limit], entries[limit:]
        cursor = "AAC" + secrets.token_urlsafe(24)
        self.cursors[cursor] = (rest, limit)
        return {"entries": page, "cursor": cursor, "has_more": bool(rest)}

    def list_continue(self, arg):
        cursor = arg.get("cursor")
        if not isinstance(cursor, str) or not cursor:
            raise bad_input("Error in call to API function: request body: cursor: expected string")
        with self.lock:
            if cursor not in self.cursors:
                raise route_error({".tag": "reset"})
            rest, limit = self.cursors.pop(cursor)
            return self._page(rest, limit)

    def delete(self, arg):
        path = self.check_path(arg.get("path"))
        with self.lock:
            node = self._lookup(path, "path_lookup")
            key = self.resolve(path)
            for k in [k for k in self.nodes if k == key or k.startswith(key + "/")]:
                gone = self.nodes.pop(k)
                if gone.blob:
                    try:
                        os.unlink(gone.blob)
                    except OSError:
                        pass
            return {"metadata": node.metadata()}

    def get_metadata(self, arg):
        path = arg.get("path")
        if path in ("", "/"):
            raise bad_input('Error in call to API function "files/get_metadata": request body: path: '
                            'The root folder is unsupported.')
        path = self.check_path(path)
        with self.lock:
            return self._lookup(path).metadata()

    # content routes ------------------------------------------------------------------
    @staticmethod
    def check_content_hash(arg: dict, data: bytes):
        expected = arg.get("content_hash")
        if expected is None:
            return
        if not isinstance(expected, str) or len(expected) != 64:
            raise bad_input("Error in call to API function: request body: content_hash: "
                            "'%s' must be exactly 64 characters" % expected)
        if content_hash_of(data) != expected:
            raise route_error({".tag": "content_hash_mismatch"})

    def upload(self, arg: dict, data: bytes):
        path = self.check_path(arg.get("path"))
        self.check_content_hash(arg, data)
        blob = os.path.join(self.blobs, self._new_id("b"))
        with open(blob, "wb") as handle:
            handle.write(data)
        with self.lock:
            result = self._commit(path, blob, len(data), content_hash_of(data), arg.get("mode", "add"),
                                  bool(arg.get("autorename")), None)
        if ".tag" in result and result[".tag"] != "file":
            os.unlink(blob)
            raise route_error({".tag": "path", "reason": result, "upload_session_id": ""})
        result.pop(".tag", None)
        return result

    def session_start(self, arg: dict, data: bytes):
        session_type = arg.get("session_type")
        tag = session_type.get(".tag") if isinstance(session_type, dict) else session_type
        if tag not in (None, "sequential"):
            raise bad_input("Error in call to API function: concurrent upload sessions are not emulated")
        self.check_content_hash(arg, data)
        with self.lock:
            sid = "pid_upload_session:" + self._new_id("s")
            blob = os.path.join(self.blobs, sid.split(":")[1])
            session = Session(sid, blob, closed=bool(arg.get("close")))
            with open(blob, "wb") as handle:
                handle.write(data)
            session.hasher.update(data)
            session.offset = len(data)
            self.sessions[sid] = session
        return {"session_id": sid}

    def _session_for(self, cursor, data_len: int, lookup_wrap: str | None):
        """The session of a cursor, checked (lock held)."""
        def fail(err):
            raise route_error({".tag": lookup_wrap, lookup_wrap: err} if lookup_wrap else err)

        if not isinstance(cursor, dict) or not isinstance(cursor.get("session_id"), str) \
                or not isinstance(cursor.get("offset"), int):
            raise bad_input("Error in call to API function: request body: cursor: missing required field")
        session = self.sessions.get(cursor["session_id"])
        if session is None:
            fail({".tag": "not_found"})
        if cursor["offset"] != session.offset:
            fail({".tag": "incorrect_offset", "correct_offset": session.offset})
        if session.closed and (data_len or lookup_wrap is None):
            fail({".tag": "closed"})
        if session.offset + data_len > MAX_SESSION:
            fail({".tag": "too_large"})
        return session

    def session_append(self, arg: dict, data: bytes):
        with self.lock:
            session = self._session_for(arg.get("cursor"), len(data), None)
        self.check_content_hash(arg, data)
        with self.lock:
            session = self._session_for(arg.get("cursor"), len(data), None)
            with open(session.blob, "ab") as handle:
                handle.write(data)
            session.hasher.update(data)
            session.offset += len(data)
            if arg.get("close"):
                session.closed = True
        return None

    def session_finish(self, arg: dict, data: bytes):
        commit = arg.get("commit")
        if not isinstance(commit, dict):
            raise bad_input("Error in call to API function: request body: commit: missing required field")
        path = self.check_path(commit.get("path"), "commit.path")
        with self.lock:
            self._session_for(arg.get("cursor"), len(data), "lookup_failed")
        self.check_content_hash(arg, data)
        with self.lock:
            session = self._session_for(arg.get("cursor"), len(data), "lookup_failed")
            with open(session.blob, "ab") as handle:
                handle.write(data)
            session.hasher.update(data)
            size = session.offset + len(data)
            result = self._commit(path, session.blob, size, session.hasher.hexdigest(), commit.get("mode", "add"),
                                  bool(commit.get("autorename")), None)
            if result.get(".tag") != "file":
                # the data stays in the session; undo this request's bytes so a retry can resend them
                with open(session.blob, "r+b") as handle:
                    handle.truncate(session.offset)
                session.hasher = _rehash(session.blob)
                raise route_error({".tag": "path", "path": result})
            del self.sessions[session.id]
        result.pop(".tag", None)
        return result

    def download(self, arg: dict):
        path = self.check_path(arg.get("path"))
        with self.lock:
            node = self._lookup(path, want="file")
            return node, node.metadata(tag=False)


def _rehash(blob: str) -> ContentHasher:
    hasher = ContentHasher()
    with open(blob, "rb") as handle:
        while True:
            chunk = handle.read(BLOCK)
            if not chunk:
                break
            hasher.update(chunk)
    return hasher


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, emulator: DropboxEmulator, kind: str, context: ssl.SSLContext):
        self.emulator = emulator
        self.kind = kind
        self.context = context
        super().__init__(address, handler)

    def finish_request(self, request, client_address):
        # TLS handshake in the connection's own thread, not in the accept loop.
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with self.emulator.lock:
            self.emulator.connections.add(tls)
        try:
            self.RequestHandlerClass(tls, client_address, self)
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            with self.emulator.lock:
                self.emulator.connections.discard(tls)
            try:
                tls.close()
            except OSError:
                pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sar-dropbox-emulator"

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass  # quiet

    @property
    def emu(self) -> DropboxEmulator:
        return self.server.emulator

    def do_GET(self):
        self._route = urllib.parse.urlsplit(self.path).path.lstrip("/")
        self._recorded = False
        self._drain()
        self._send(405, "Method not allowed", "text/plain; charset=utf-8")

    def do_POST(self):
        parsed = urllib.parse.urlsplit(self.path)
        route_path = parsed.path
        route = route_path[3:] if route_path.startswith("/2/") else route_path.lstrip("/")
        self._body_read = False  # one handler serves every request of a keep-alive connection
        self._route = route
        self._recorded = False
        try:
            self._dispatch(route, parsed)
        except _DropConnection:
            self._record(0)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        finally:
            self._record(500)  # only if nothing was recorded (an exception in the emulator)

    def _record(self, status: int) -> None:
        """Log the call before its answer leaves, so a client never sees an answer whose call is not logged yet."""
        if self._recorded:
            return
        self._recorded = True
        with self.emu.lock:
            self.emu.calls.append(Call(self.server.kind, self._route, status, time.time(), self._length()))

    # -- plumbing ----------------------------------------------------------------
    def _length(self) -> int:
        try:
            return int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return 0

    def _drain(self, limit: int | None = None) -> None:
        remaining = self._length() if limit is None else limit
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)

    def _body(self) -> bytes:
        length = self._length()
        parts = []
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                raise _DropConnection()
            parts.append(chunk)
            remaining -= len(chunk)
        return b"".join(parts)

    def _send(self, status: int, body, content_type: str = "application/json", headers: dict | None = None) -> int:
        if isinstance(body, (dict, list)) or body is None and content_type == "application/json":
            payload = json.dumps(body).encode()
        elif isinstance(body, str):
            payload = body.encode()
        else:
            payload = body
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Dropbox-Request-Id", secrets.token_hex(16))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()
        return status

    def _fail(self, failure: ApiFailure) -> int:
        return self._send(failure.status, failure.body, failure.content_type, failure.headers)

    def _dispatch(self, route: str, parsed) -> int:
        emu = self.emu
        kind = self.server.kind
        # Faults come first: a real overloaded or rate-limited server does not read the request.
        fault = emu.take_fault(route)
        if fault is not None and fault.kind == "status":
            self._drain()
            return self._send(fault.status, "Service Unavailable (injected)", "text/plain; charset=utf-8")
        if fault is not None and fault.kind == "ratelimit":
            self._drain()
            headers = {"Retry-After": str(fault.retry_after)}
            if fault.json_body:
                return self._send(429, {"error_summary": "too_many_requests/..",
                                        "error": {"reason": {".tag": "too_many_requests"},
                                                  "retry_after": fault.retry_after}}, headers=headers)
            return self._send(429, "Too Many Requests", "text/plain; charset=utf-8", headers)
        try:
            if route == "oauth2/token":
                if kind != "api":
                    raise bad_input("oauth2/token is served by the API host")
                return self._oauth()
            if route in API_ROUTES:
                if kind != "api":
                    raise bad_input('Error in call to API function "%s": this function is served by api.dropboxapi.com'
                                    % route)
                return self._rpc(route)
            if route in CONTENT_ROUTES:
                if kind != "content":
                    raise bad_input('Error in call to API function "%s": this function is served by '
                                    'content.dropboxapi.com' % route)
                return self._content(route, parsed, fault)
            raise bad_input("Unknown API function: %r" % route)
        except ApiFailure as failure:
            if not getattr(self, "_body_read", False):
                self._drain()
            return self._fail(failure)

    def _oauth(self) -> int:
        body = self._body()
        self._body_read = True
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}
        basic = None
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Basic "):
            try:
                user, _sep, password = base64.b64decode(auth[6:]).decode().partition(":")
                basic = (user, password)
            except ValueError:
                basic = None
        try:
            return self._send(200, self.emu.oauth_token(form, basic))
        except ApiFailure as failure:
            return self._fail(failure)

    def _rpc(self, route: str) -> int:
        body = self._body()
        self._body_read = True
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        self.emu.check_token(self.headers.get("Authorization"))
        if ctype != "application/json":
            raise bad_input('Error in call to API function "%s": Bad HTTP "Content-Type" header: "%s". '
                            'Expecting one of "application/json", "application/json; charset=utf-8", '
                            '"text/plain; charset=dropbox-cors-hack".' % (route, ctype))
        try:
            arg = json.loads(body.decode("utf-8")) if body else None
        except ValueError:
            raise bad_input('Error in call to API function "%s": request body: could not decode input as JSON' % route) from None
        if not isinstance(arg, dict):
            raise bad_input('Error in call to API function "%s": request body: expected an object' % route)
        return self._send(200, self.emu.rpc(route, arg))

    def _content(self, route: str, parsed, fault) -> int:
        emu = self.emu
        emu.check_token(self.headers.get("Authorization"))
        raw_arg = self.headers.get("Dropbox-API-Arg")
        if raw_arg is None:
            raw_arg = urllib.parse.parse_qs(parsed.query).get("arg", [None])[0]
        if raw_arg is None:
            raise bad_input('Error in call to API function "%s": Must provide HTTP header "Dropbox-API-Arg" '
                            'or URL parameter "arg".' % route)
        try:
            arg = json.loads(raw_arg)
        except ValueError:
            raise bad_input('Error in call to API function "%s": HTTP header "Dropbox-API-Arg": '
                            'could not decode input as JSON' % route) from None
        if not isinstance(arg, dict):
            raise bad_input('Error in call to API function "%s": HTTP header "Dropbox-API-Arg": expected an object' % route)
        if route == "files/download":
            self._drain()
            self._body_read = True
            node, meta = emu.download(arg)
            return self._send_file(node, meta)
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype != "application/octet-stream":
            raise bad_input('Error in call to API function "%s": Bad HTTP "Content-Type" header: "%s". '
                            'Expecting one of "application/octet-stream", "text/plain; charset=dropbox-cors-hack".'
                            % (route, ctype))
        if self._length() > MAX_REQUEST:
            self._drain()
            self._body_read = True
            raise route_error({".tag": "payload_too_large"})
        if fault is not None and fault.kind == "drop_during":
            self._drain(min(fault.after_bytes, self._length()))
            raise _DropConnection()
        data = self._body()
        self._body_read = True
        if fault is not None and fault.kind == "corrupt" and data:
            damaged = bytearray(data)
            damaged[len(damaged) // 2] ^= 0x01
            data = bytes(damaged)
        if route == "files/upload":
            result = emu.upload(arg, data)
        elif route == "files/upload_session/start":
            result = emu.session_start(arg, data)
        elif route == "files/upload_session/append_v2":
            result = emu.session_append(arg, data)
        else:
            result = emu.session_finish(arg, data)
        if fault is not None and fault.kind == "drop_after":
            raise _DropConnection()  # applied, but the answer is lost
        return self._send(200, result)

    def _send_file(self, node: Node, meta: dict) -> int:
        self._record(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(node.size))
        self.send_header("Dropbox-API-Result", json.dumps(meta))
        self.send_header("X-Dropbox-Request-Id", secrets.token_hex(16))
        self.end_headers()
        with open(node.blob, "rb") as handle:
            shutil.copyfileobj(handle, self.wfile, 1 << 20)
        self.wfile.flush()
        return 200
