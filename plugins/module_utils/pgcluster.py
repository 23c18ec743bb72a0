# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""A private, temporary PostgreSQL cluster for a restore drill (docs/restore.md "Restore drills").

Where the profile's database user may not create databases (no CREATEDB), a drill restores the
dumps into a cluster of its own instead of a scratch database on the profile's server:

- `initdb` of the *server's own* major version (`SHOW server_version_num`), found in
  profile.database.pg_bin_dir (if it holds them), /usr/lib/postgresql/<major>/bin (Debian) or
  /usr/pgsql-<major>/bin (RHEL); none there is a clear `sourceFailed` naming what is missing;
- in `<the drill's work folder>/pg/` (data directory `pg/data`), listening only on a unix socket
  in `pg/` (listen_addresses empty, socket mode 0700, local connections `trust`: only the owner of
  the cluster and root can reach the socket), fsync off (thrown away afterwards);
- run by the OS user `postgres` when sar-backup runs as root (initdb and the server refuse root;
  every PostgreSQL server package creates that account), else by the user running sar-backup;
- stopped (immediate) and removed when the drill ends, also on failure; a drill killed with its
  cluster running leaves `pg/data/postmaster.pid`: the next run, restore or drill (the holder of
  the maintenance lock, fsutil.clean_staging) stops that server before removing the folder.

The dumps are restored into a database created in it and owned by a login role of the profile
user's name (no superuser); every role of the live server (but the built-in pg_*) exists as a
NOLOGIN role, and the profile user is a member of the same roles as on the live server, so the
dump's grants and profile.database.restore_role work as on the appliance."""

from __future__ import annotations

import glob
import os
import pwd
import re
import signal
import subprocess
import time

from .errors import SOURCE_FAILED, SourceError

CLUSTER_OS_USER = "postgres"      # runs the private cluster when sar-backup runs as root
ADMIN_ROLE = "sar_drill_admin"    # the private cluster's bootstrap superuser (sets it up, nothing else)
SUBDIR = "pg"                      # <drill work folder>/pg: socket; pg/data: the data directory
PORT = 5432                        # only names the socket file: the socket directory is private
_SOCKET_MAX = 107                  # sun_path bytes Linux allows
_SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
# <drill work folder>/staging-was: staging's group and mode before the drill gave the cluster's group search
# permission, and that group, so that the next run, restore or drill puts them back when a killed drill could not.
STAGING_WAS = "staging-was"


def _conf_literal(text: str) -> str:
    return "'%s'" % text.replace("\\", "\\\\").replace("'", "''")


def server_major(version_num) -> str:
    """server_version_num (e.g. 150010, 90624) -> the major version as packages name it ("15", "9.6")."""
    num = int(str(version_num).strip())
    return str(num // 10000) if num >= 100000 else "%d.%d" % (num // 10000, num // 100 % 100)


def binary_dirs(major: str, profile: dict | None = None) -> list:
    """Where the server programs of `major` may be, in the order tried."""
    out = []
    db = (profile or {}).get("database") or {}
    if db.get("pg_bin_dir"):
        out.append(str(db["pg_bin_dir"]))
    out += ["/usr/lib/postgresql/%s/bin" % major, "/usr/pgsql-%s/bin" % major]
    return out


def find_server_binaries(major: str, profile: dict | None = None) -> str:
    """The directory holding initdb, pg_ctl and postgres of PostgreSQL `major`, checked with
    `postgres --version`; SourceError naming what is missing otherwise."""
    tried = []
    for directory in binary_dirs(major, profile):
        missing = [p for p in _SERVER_PROGRAMS if not os.access(os.path.join(directory, p), os.X_OK)]
        if missing:
            tried.append("%s (no %s)" % (directory, ", ".join(missing)))
            continue
        try:
            out = subprocess.run([os.path.join(directory, "postgres"), "--version"], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, timeout=30,
                                 check=False).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            tried.append("%s (postgres --version: %s)" % (directory, exc))
            continue
        found = re.search(r"\(PostgreSQL\) (\d+(?:\.\d+)*)", out)
        version = found.group(1) if found else ""
        if version != major and not version.startswith(major + "."):
            tried.append("%s (holds PostgreSQL %s)" % (directory, version or "?"))
            continue
        return directory
    others = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb") + glob.glob("/usr/pgsql-*/bin/initdb"))
    raise SourceError(
        "the profile's database user may not create databases (no CREATEDB), so the drill needs a private "
        "PostgreSQL %s cluster, but the PostgreSQL %s server programs (%s) were not found: tried %s%s. Install "
        "the server package of version %s (Debian: postgresql-%s), set profile.database.pg_bin_dir to where they are, or "
        "grant the profile's user CREATEDB" % (
            major, major, ", ".join(_SERVER_PROGRAMS), "; ".join(tried),
            (" (other versions present: %s)" % ", ".join(os.path.dirname(p) for p in others)) if others else "",
            major, major), SOURCE_FAILED)


def _searchable(path: str, uid: int, gids: set) -> bool:
    st = os.stat(path)
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid in gids:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


class PrivateCluster:
    """One private cluster in `workdir/pg` (see the module docstring). start(), then profile(), stop()."""

    def __init__(self, workdir: str, bin_dir: str, log=None):
        self.workdir = workdir
        self.bin_dir = bin_dir
        self.dir = os.path.join(workdir, SUBDIR)
        self.data_dir = os.path.join(self.dir, "data")
        self.log_func = log
        self.started = False
        self.staging_was = None
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                account = pwd.getpwnam(CLUSTER_OS_USER)
            except KeyError:
                raise SourceError("the drill's private PostgreSQL cluster runs as the OS user %r when sar-backup runs "
                                  "as root (initdb refuses root), and there is no such user: install the PostgreSQL "
                                  "server package or create that system user" % CLUSTER_OS_USER, SOURCE_FAILED)
            self.uid, self.gid = account.pw_uid, account.pw_gid
            self.user_name = CLUSTER_OS_USER
        else:
            self.uid, self.gid = os.geteuid(), os.getegid()
            self.user_name = pwd.getpwuid(self.uid).pw_name

    def log(self, msg: str) -> None:
        if self.log_func:
            self.log_func(msg)

    @property
    def socket_path(self) -> str:
        return os.path.join(self.dir, ".s.PGSQL.%d" % PORT)

    # -- programs -----------------------------------------------------------------------------
    def _env(self) -> dict:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "TZ")}
        keep.update({"LC_ALL": "C", "LANG": "C", "HOME": self.dir, "PGTZ": "UTC"})
        return keep

    def _server_tool(self, argv: list, what: str, timeout: float = 300) -> str:
        kwargs = {}
        if self.as_root:
            kwargs = {"user": self.uid, "group": self.gid, "extra_groups": []}
        try:
            proc = subprocess.run(argv, cwd=self.dir, env=self._env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, errors="replace", timeout=timeout, check=False,
                                  **kwargs)
        except subprocess.TimeoutExpired:
            raise SourceError("%s of the drill's private cluster did not finish within %d seconds" % (what, timeout))
        except OSError as exc:
            raise SourceError("cannot run %s for the drill's private cluster: %s" % (argv[0], exc))
        if proc.returncode != 0:
            lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
            raise SourceError("%s of the drill's private cluster failed (exit %d): %s%s"
                              % (what, proc.returncode, " / ".join(lines[-5:]) or "no output", self._server_log()))
        return proc.stdout

    def _server_log(self) -> str:
        try:
            with open(os.path.join(self.dir, "server.log"), encoding="utf-8", errors="replace") as handle:
                lines = [ln.strip() for ln in handle.read().splitlines() if ln.strip()]
        except OSError:
            return ""
        return (" - server log: " + " / ".join(lines[-5:])) if lines else ""

    # -- life cycle -------------------------------------------------------------------------------
    def _make_reachable(self) -> None:
        """The cluster's user must reach pg/ through the drill's work folder and staging: when we are root,
        the work folder gets that user's group (0710) and staging group search permission for that group
        if it has none; a directory above staging it cannot search is an error naming it."""
        if len(self.socket_path.encode("utf-8")) > _SOCKET_MAX:
            raise SourceError("the drill's private cluster socket %s would be longer than the %d bytes a unix socket "
                              "path may have: choose a shorter staging_dir" % (self.socket_path, _SOCKET_MAX))
        os.mkdir(self.dir, 0o700)
        if not self.as_root:
            return
        os.chown(self.dir, self.uid, self.gid)
        os.chown(self.workdir, 0, self.gid)
        os.chmod(self.workdir, 0o710)
        gids = {self.gid} | set(os.getgrouplist(self.user_name, self.gid))
        staging = os.path.dirname(os.path.abspath(self.workdir))
        if not _searchable(staging, self.uid, gids):
            st = os.stat(staging)
            if st.st_uid != 0:
                raise SourceError("the drill's private cluster runs as %r, which cannot search staging_dir %s"
                                  % (self.user_name, staging))
            self.log("giving group %d search permission on %s (the drill's private cluster runs as %s)"
                     % (self.gid, staging, self.user_name))
            if st.st_gid != self.gid and st.st_mode & 0o070:
                raise SourceError("the drill's private cluster runs as %r, which cannot search staging_dir %s, whose "
                                  "group already has rights: give %s search permission (x) on it"
                                  % (self.user_name, staging, self.user_name))
            # Written first (root's, in the root-owned work folder): a drill killed after the change leaves it.
            fd = os.open(os.path.join(self.workdir, STAGING_WAS), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write("%d %o %d\n" % (st.st_gid, st.st_mode & 0o7777, self.gid))
            os.chown(staging, 0, self.gid)
            os.chmod(staging, (st.st_mode & 0o7777) | 0o010)
            self.staging_was = (staging, st.st_gid, st.st_mode & 0o7777)  # put back by stop()
        parent = os.path.dirname(staging)
        while True:
            if not _searchable(parent, self.uid, gids):
                raise SourceError("the drill's private cluster runs as the OS user %r, which cannot search %s (a "
                                  "directory above staging_dir): give it search permission (x) or choose a "
                                  "staging_dir it can reach" % (self.user_name, parent))
            if parent == os.path.dirname(parent):
                break
            parent = os.path.dirname(parent)

    def start(self) -> "PrivateCluster":
        self._make_reachable()
        self.log("starting a private PostgreSQL cluster (%s) in %s as %s" % (self.bin_dir, self.dir, self.user_name))
        self._server_tool([os.path.join(self.bin_dir, "initdb"), "-D", self.data_dir, "-U", ADMIN_ROLE, "-E", "UTF8",
                           "--locale=C", "--auth-local=trust", "--auth-host=reject", "--no-sync"], "initdb")
        settings = {
            "listen_addresses": "''", "port": str(PORT), "unix_socket_directories": _conf_literal(self.dir),
            "unix_socket_permissions": "0700", "fsync": "off", "synchronous_commit": "off",
            "full_page_writes": "off", "wal_level": "minimal", "max_wal_senders": "0", "max_wal_size": "'4GB'",
            "autovacuum": "off", "jit": "off", "max_connections": "20", "dynamic_shared_memory_type": "mmap",
            "logging_collector": "off", "log_min_messages": "warning", "shared_preload_libraries": "''",
        }
        with open(os.path.join(self.data_dir, "postgresql.conf"), "a", encoding="utf-8") as handle:
            handle.write("\n# sar-backup drill: a private, throwaway cluster on a unix socket only\n")
            handle.writelines("%s = %s\n" % item for item in settings.items())
        with open(os.path.join(self.data_dir, "pg_hba.conf"), "w", encoding="utf-8") as handle:
            handle.write("# sar-backup drill: only the unix socket in a directory only its owner and root can reach\n"
                         "local all all trust\n")
        self.started = True  # from here on stop() has something to stop
        self._server_tool([os.path.join(self.bin_dir, "pg_ctl"), "start", "-w", "-t", "120", "-s", "-D", self.data_dir,
                           "-l", os.path.join(self.dir, "server.log")], "pg_ctl start")
        return self

    def stop(self) -> None:
        """Stop the server (immediate: the data is thrown away) and give staging back its group and mode; the
        caller removes the folder."""
        if self.started:
            self.started = False
            try:
                self._server_tool([os.path.join(self.bin_dir, "pg_ctl"), "stop", "-w", "-t", "60", "-s", "-m",
                                   "immediate", "-D", self.data_dir], "pg_ctl stop")
            except SourceError as exc:
                self.log("%s; stopping it by its process id" % exc)
            stop_leftover(self.workdir)
        if self.staging_was:
            path, gid, mode = self.staging_was
            self.staging_was = None
            try:
                os.chown(path, 0, gid)
                os.chmod(path, mode)
            except OSError as exc:
                self.log("could not give %s back its group and mode: %s" % (path, exc))

    # -- connection -------------------------------------------------------------------------------
    def admin_profile(self, profile: dict) -> dict:
        return self.profile(profile, "postgres", ADMIN_ROLE)

    def profile(self, profile: dict, name: str, user: str | None = None) -> dict:
        """The profile, its database replaced by `name` in the private cluster (no password: trust)."""
        live = profile.get("database") or {}
        db = {k: v for k, v in live.items() if k not in ("host", "port", "password", "name", "user")}
        db.update({"host": self.dir, "port": PORT, "user": user or live.get("user") or self.user_name, "name": name})
        return dict(profile, database=db)


def _postmaster_pid(data_dir: str) -> int | None:
    try:
        with open(os.path.join(data_dir, "postmaster.pid"), encoding="utf-8", errors="replace") as handle:
            first = handle.readline().strip()
        return int(first) if first.isdigit() else None
    except (OSError, ValueError):
        return None


def _is_postmaster_of(pid: int, data_dir: str) -> bool:
    """The process `pid` is a PostgreSQL server started on `data_dir` (not a recycled pid)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return False
    return bool(argv) and os.path.basename(argv[0]) in (b"postgres", b"postmaster") and \
        os.fsencode(data_dir) in argv


def give_back_staging(workdir: str) -> str:
    """Put back staging's group and mode that the drill which left `workdir` (killed) changed: only while
    staging still has that drill's group, so a change made since stays. Returns what was done ('' if nothing)."""
    try:
        with open(os.path.join(workdir, STAGING_WAS), encoding="ascii") as handle:
            text = handle.read(64)
    except OSError:
        return ""
    match = re.fullmatch(r"(\d{1,10}) ([0-7]{1,4}) (\d{1,10})\n", text)
    if not match:
        return ""
    gid, mode, cluster_gid = int(match.group(1)), int(match.group(2), 8), int(match.group(3))
    staging = os.path.dirname(os.path.abspath(workdir))
    try:
        st = os.stat(staging)
        if st.st_uid != 0 or st.st_gid != cluster_gid or (st.st_gid, st.st_mode & 0o7777) == (gid, mode):
            return ""
        os.chown(staging, 0, gid)
        os.chmod(staging, mode)
    except OSError as exc:
        return "could not give %s back its group and mode: %s" % (staging, exc)
    return "gave %s back its group %d and mode %04o (an interrupted drill had changed them)" % (staging, gid, mode)


def stop_leftover(workdir: str, timeout: float = 30) -> bool:
    """Stop the private cluster a drill left in `workdir/pg/data` (a killed drill), if its server still runs:
    SIGQUIT (immediate shutdown), then SIGKILL. True if one was running."""
    data_dir = os.path.join(workdir, SUBDIR, "data")
    pid = _postmaster_pid(data_dir)
    if pid is None or not _is_postmaster_of(pid, data_dir):
        return False
    for sig, wait in ((signal.SIGQUIT, timeout), (signal.SIGKILL, 10)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        except PermissionError:
            # No CAP_KILL (the run service): the server notices its data directory is gone and stops
            # itself within a minute (postmaster re-checks its lock file).
            return False
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _is_postmaster_of(pid, data_dir):
                return True
            time.sleep(0.05)
    return True


__all__ = ["PrivateCluster", "find_server_binaries", "give_back_staging", "server_major", "stop_leftover",
           "CLUSTER_OS_USER"]
