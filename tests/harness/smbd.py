# SPDX-License-Identifier: GPL-3.0-or-later
"""A throwaway Samba server for tests and benchmarks of the `smb` target.

Each `SmbServer` lives in its own temporary directory (smb.conf, every
lock/state/cache/pid/private/ncalrpc dir, the tdbsam password database, the
log and the shares), listens on 127.0.0.1 (`interfaces = lo`, `bind
interfaces only`) on a port picked free at start time, and knows one test
user created for this instance only (`useradd` + `smbpasswd -a`, a unique
name, removed by `stop()`). Several pytest processes can run servers side by
side: nothing is shared but the Samba binaries and /etc/passwd.

Shares (folders under `<tmp>/shares/`, owned by the test user):
    share      plain
    secure     `smb encrypt = required`
    readonly   `read only = yes`
    small      a 4 MiB tmpfs (only with `small_share=True`), for "disk full"

    with SmbServer() as smbd:
        smbd.user, smbd.password, smbd.port, smbd.workgroup
        smbd.share_path("share")            # the folder behind a share, locally
        smbd.kill()                         # SIGKILL the server and every session process
        smbd.start()                        # again, same port and config
        smbd.stop()

`global_options` adds smb.conf [global] lines (e.g. {"server smb encrypt":
"off"} for a server that cannot encrypt). Needs root and the Debian packages
`samba` and `smbclient`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from .proc import free_port, locked_passwd_run as _locked_passwd_run, run as _run

SMBD = shutil.which("smbd") or "/usr/sbin/smbd"
SMBPASSWD = shutil.which("smbpasswd") or "/usr/bin/smbpasswd"
SMALL_SHARE_BYTES = 4 * 1024 * 1024


class SmbServer:
    """One private smbd and its test user; see the module docstring."""

    WORKGROUP = "SARTEST"

    def __init__(self, base_dir: str | None = None, global_options: dict | None = None, small_share: bool = False,
                 log_level: int = 1):
        self.base_dir = base_dir
        self.global_options = dict(global_options or {})
        self.small_share = small_share
        self.log_level = log_level
        self.tmp = None
        self.port = None
        self.user = "sars" + secrets.token_hex(5)
        # Characters a shell or a config parser could trip over, on purpose
        # (no '%': smbclient's -U user%pass would split there).
        self.password = "pw 'x\"%s$:" % secrets.token_urlsafe(10)
        self.workgroup = self.WORKGROUP
        self.proc = None
        self.user_created = False
        self.mounted = []

    # -- paths ------------------------------------------------------------------
    @property
    def config_path(self) -> str:
        return os.path.join(self.tmp, "smb.conf")

    @property
    def log_path(self) -> str:
        return os.path.join(self.tmp, "log", "smbd.log")

    def share_path(self, share: str) -> str:
        return os.path.join(self.tmp, "shares", share)

    def log(self) -> str:
        chunks = []
        for folder in (os.path.join(self.tmp or "", "log"),):
            if not os.path.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):
                try:
                    with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as handle:
                        chunks.append("== %s ==\n%s" % (name, handle.read()))
                except OSError:
                    pass
        return "\n".join(chunks)

    # -- life cycle ---------------------------------------------------------------
    def __enter__(self) -> "SmbServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, attempts: int = 5) -> "SmbServer":
        if self.proc is not None:
            return self
        if self.tmp is None:
            self._prepare()
        last = ""
        for _attempt in range(attempts):
            port = self.port or free_port()
            if self._spawn(port):
                return self
            last = self.log()
            if self.port:  # a restart on its old port that is taken: do not wander
                time.sleep(0.5)
        raise RuntimeError("smbd did not start:\n%s" % last[-3000:])

    def _prepare(self) -> None:
        # Under /tmp, world-traversable: smbd serves the shares as the test user.
        self.tmp = tempfile.mkdtemp(prefix="sar-smbd-", dir=self.base_dir)
        os.chmod(self.tmp, 0o755)
        try:
            for sub in ("lock", "state", "cache", "pid", "private", "ncalrpc", "log", "shares", "binddns"):
                os.mkdir(os.path.join(self.tmp, sub), 0o755)
            os.chmod(os.path.join(self.tmp, "private"), 0o700)
            _locked_passwd_run(["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                                "--user-group", self.user], "useradd")
            self.user_created = True
            shares = ["share", "secure", "readonly"] + (["small"] if self.small_share else [])
            for share in shares:
                path = self.share_path(share)
                os.mkdir(path, 0o755)
                if share == "small":
                    _run(["mount", "-t", "tmpfs", "-o", "size=%d,mode=0755" % SMALL_SHARE_BYTES, "sar-smb-small", path],
                         "mount tmpfs")
                    self.mounted.append(path)
                shutil.chown(path, self.user, self.user)
            self._write_config()
            _run([SMBPASSWD, "-c", self.config_path, "-s", "-a", self.user], "smbpasswd -a",
                 input_text="%s\n%s\n" % (self.password, self.password))
        except BaseException:
            self.stop()
            raise

    def _write_config(self, port: int = 445) -> None:
        t = self.tmp
        options = {
            "workgroup": self.workgroup,
            "netbios name": "SARTEST%s" % secrets.token_hex(2).upper(),
            "server role": "standalone server",
            "smb ports": str(port),
            "interfaces": "lo",
            "bind interfaces only": "yes",
            "disable netbios": "yes",
            "lock directory": os.path.join(t, "lock"),
            "state directory": os.path.join(t, "state"),
            "cache directory": os.path.join(t, "cache"),
            "pid directory": os.path.join(t, "pid"),
            "private dir": os.path.join(t, "private"),
            "ncalrpc dir": os.path.join(t, "ncalrpc"),
            "binddns dir": os.path.join(t, "binddns"),
            "passdb backend": "tdbsam:%s" % os.path.join(t, "private", "passdb.tdb"),
            "log file": os.path.join(t, "log", "smbd.log"),
            "log level": str(self.log_level),
            "max log size": "0",
            "map to guest": "never",
            "restrict anonymous": "2",
            "load printers": "no",
            "printing": "bsd",
            "printcap name": "/dev/null",
            "disable spoolss": "yes",
            "registry shares": "no",
            "usershare max shares": "0",
            "kernel oplocks": "no",
            "server min protocol": "SMB2_10",
        }
        options.update(self.global_options)
        lines = ["[global]"] + ["  %s = %s" % item for item in options.items()]
        shares = {
            "share": {},
            "secure": {"smb encrypt": "required"},
            "readonly": {"read only": "yes"},
        }
        if self.small_share:
            shares["small"] = {}
        for share, extra in shares.items():
            lines += ["", "[%s]" % share, "  path = %s" % self.share_path(share), "  read only = no",
                      "  valid users = %s" % self.user, "  create mask = 0600", "  directory mask = 0700"]
            lines += ["  %s = %s" % item for item in extra.items()]
        with open(self.config_path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")

    def _spawn(self, port: int) -> bool:
        self._write_config(port)
        log = open(os.path.join(self.tmp, "log", "stdout.log"), "ab")  # pylint: disable=consider-using-with
        try:
            self.proc = subprocess.Popen([SMBD, "--foreground", "--no-process-group", "-s", self.config_path],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         # smbd signals its whole process group when it exits: not ours.
                                         start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    self.port = port
                    return True
            except OSError:
                time.sleep(0.05)
        self.kill()
        return False

    def pids(self) -> list:
        """Every process of this instance: the listener and the per-connection
        children (forked, so they share its command line with our config path)."""
        found = []
        needle = self.config_path.encode() if self.tmp else None
        if needle is None:
            return found
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as handle:
                    cmdline = handle.read()
            except OSError:
                continue
            if needle in cmdline.split(b"\0") and b"smbd" in cmdline:
                found.append(int(entry))
        return found

    def kill(self) -> int:
        """SIGKILL the listener and every session process (a crash or power
        loss, as the client sees it). Returns how many were killed."""
        killed = 0
        for _attempt in range(3):  # a child forked while we were looking
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
            self.proc = None
        return killed

    def restart(self) -> None:
        self.kill()
        self.start(attempts=20)

    def stop(self) -> None:
        """Stop the server and its sessions, remove the user and every file."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        for path in self.mounted:
            subprocess.run(["umount", "-l", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        self.mounted = []
        if self.user_created:
            try:
                _locked_passwd_run(["userdel", "--force", self.user], "userdel")
            except RuntimeError:
                pass
            self.user_created = False
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
