# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""A throwaway PostgreSQL cluster for tests and the demo.

Each `PostgresCluster` lives in its own temporary directory (data directory and
unix socket directory), listens on 127.0.0.1 on a port picked free at start
time, and is gone after `stop()`. Several pytest processes can run clusters side
by side: nothing is shared but the PostgreSQL binaries.

Authentication:
- the superuser `postgres` may connect over the private socket without a
  password (`trust`): that is what `psql()` uses to set up fixtures;
- the test role (`sar_test`, a superuser too, so it can dump and restore
  anything) needs its password over the socket *and* over TCP (scram-sha-256),
  so a test that connects as that role proves the password really reached the
  server. The password contains `:` and `\\` on purpose (they must be escaped
  in a PostgreSQL password file).

`initdb` refuses to run as root: as root the server programs run through
`runuser -u postgres`; the client tools (psql, pg_dump) work as root with
`-h <socket dir>`.

    with PostgresCluster() as pg:
        pg.psql("create database demo")
        profile_db = pg.database_profile("demo")   # {host, port, user, password, name}
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time

from .proc import free_port

SERVER_USER = "postgres"
TEST_ROLE = "sar_test"


def pg_bin_dir() -> str:
    """$SAR_TEST_PG_BIN, else the newest /usr/lib/postgresql/<version>/bin holding initdb."""
    env = os.environ.get("SAR_TEST_PG_BIN")
    if env:
        return env
    found = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.path.exists(os.path.join(d, "initdb"))]
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): "
                           "install the Debian package `postgresql` (make deps)")
    return max(found, key=lambda d: _version_key(d.split("/")[-2]))


def _version_key(text: str):
    return tuple(int(p) if p.isdigit() else 0 for p in text.split("."))


class PostgresCluster:
    """One private PostgreSQL cluster; see the module docstring."""

    def __init__(self, bin_dir: str | None = None, base_dir: str | None = None):
        self.bin_dir = bin_dir or pg_bin_dir()
        self.base_dir = base_dir
        self.tmp = None
        self.data_dir = None
        self.socket_dir = None
        self.port = None
        self.password = "pw:%s\\x" % secrets.token_urlsafe(12)
        self.user = TEST_ROLE
        self.running = False
        self.as_root = os.geteuid() == 0

    # -- paths and commands -------------------------------------------------
    def tool(self, name: str) -> str:
        return os.path.join(self.bin_dir, name)

    def _server_cmd(self, argv: list) -> list:
        """Server programs refuse root: run them as `postgres` when we are root."""
        if self.as_root:
            return ["runuser", "-u", SERVER_USER, "--"] + argv
        return argv

    def _run_server_tool(self, argv: list, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(self._server_cmd(argv), cwd=self.tmp, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError("%s failed (%d):\n%s" % (" ".join(argv[:2]), proc.returncode, proc.stdout))
        return proc

    # -- life cycle -----------------------------------------------------------
    def start(self, attempts: int = 5) -> "PostgresCluster":
        if self.running:
            return self
        self.tmp = tempfile.mkdtemp(prefix="sar-pg-", dir=self.base_dir)
        self.data_dir = os.path.join(self.tmp, "data")
        self.socket_dir = os.path.join(self.tmp, "sock")
        os.mkdir(self.socket_dir, 0o755)
        if self.as_root:
            owner = pwd.getpwnam(SERVER_USER)
            for path in (self.tmp, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        try:
            self._initdb()
            last = ""
            for attempt in range(1, attempts + 1):
                self.port = free_port()
                proc = self._run_server_tool([
                    self.tool("pg_ctl"), "start", "-w", "-t", "60", "-D", self.data_dir,
                    "-l", os.path.join(self.tmp, "server.log"),
                    "-o", "-p %d -k %s -c listen_addresses=127.0.0.1" % (self.port, self.socket_dir),
                ], check=False)
                if proc.returncode == 0:
                    self.running = True
                    break
                last = "attempt %d, port %d:\n%s%s" % (attempt, self.port, proc.stdout, self.server_log())
                time.sleep(0.2)  # another process took the port between probe and bind: try another
            if not self.running:
                raise RuntimeError("PostgreSQL did not start:\n%s" % last[-3000:])
            self.psql("CREATE ROLE %s LOGIN SUPERUSER PASSWORD %s" % (TEST_ROLE, quote_literal(self.password)))
        except BaseException:
            self.stop()
            raise
        return self

    def _initdb(self) -> None:
        self._run_server_tool([
            self.tool("initdb"), "-D", self.data_dir, "-U", SERVER_USER, "-E", "UTF8", "--locale=C.UTF-8",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync",
        ])
        with open(os.path.join(self.data_dir, "pg_hba.conf"), "w", encoding="utf-8") as handle:
            handle.write(
                "# written by tests/harness/postgres.py\n"
                "local all %s trust\n"
                "local all all scram-sha-256\n"
                "host all all 127.0.0.1/32 scram-sha-256\n" % SERVER_USER)
        with open(os.path.join(self.data_dir, "postgresql.conf"), "a", encoding="utf-8") as handle:
            handle.write(
                "\n# tests/harness/postgres.py: fast and small\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "shared_buffers = 16MB\nmax_connections = 30\nmax_wal_senders = 0\nwal_level = minimal\n"
                "log_min_messages = warning\n")

    def stop(self) -> None:
        """Stop the server (immediate mode) and remove every file of the cluster."""
        if self.running and self.data_dir:
            self._run_server_tool([self.tool("pg_ctl"), "stop", "-D", self.data_dir, "-m", "immediate", "-w"],
                                  check=False)
            self.running = False
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> "PostgresCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def server_log(self) -> str:
        try:
            with open(os.path.join(self.tmp, "server.log"), encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except (OSError, TypeError):
            return ""

    # -- connection information -------------------------------------------
    def database_profile(self, name: str = "postgres", tcp: bool = False) -> dict:
        """The `profile.database` dict for the test role (password included)."""
        return {
            "host": "127.0.0.1" if tcp else self.socket_dir,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "name": name,
        }

    @property
    def dsn(self) -> dict:
        """Socket connection info for the test role: host (socket dir), port, user, password, name."""
        return self.database_profile()

    # -- helpers ------------------------------------------------------------
    def psql(self, sql: str, db: str = "postgres") -> str:
        """Run SQL as the superuser over the socket; stdout (unaligned, tuples only). Raises on error."""
        proc = subprocess.run(
            [self.tool("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", self.socket_dir,
             "-p", str(self.port), "-U", SERVER_USER, "-d", db, "-f", "-"],
            input=sql, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False,
            env=_clean_env())
        if proc.returncode != 0:
            raise RuntimeError("psql failed (%d) on %r:\n%s" % (proc.returncode, sql[:200], proc.stderr))
        return proc.stdout

    def create_database(self, name: str, owner: str | None = None) -> None:
        self.psql("CREATE DATABASE %s OWNER %s" % (quote_ident(name), quote_ident(owner or self.user)))

    def drop_database(self, name: str) -> None:
        self.psql("DROP DATABASE IF EXISTS %s WITH (FORCE)" % quote_ident(name))

    def databases(self) -> list:
        return self.psql("SELECT datname FROM pg_database ORDER BY 1").split()


def _clean_env() -> dict:
    """Our helpers must not pick up a developer's PG* settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def quote_literal(text: str) -> str:
    return "E'%s'" % text.replace("\\", "\\\\").replace("'", "''")


def quote_ident(name: str) -> str:
    return '"%s"' % name.replace('"', '""')
