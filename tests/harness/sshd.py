# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""A throwaway OpenSSH server for tests and benchmarks of the `sftp` target.

Each `SshServer` lives in its own temporary directory (host keys, sshd_config,
authorized keys, pid file, log, the test user's home), listens on 127.0.0.1 on
a port picked free at start time, and logs in one test user created for this
instance only (`useradd` + `chpasswd`, a unique name, removed by `stop()`).
Several pytest processes can run servers side by side: nothing is shared but
the OpenSSH binaries, /run/sshd (the privilege separation directory) and
/etc/passwd.

    with SshServer() as sshd:
        sshd.user, sshd.password, sshd.port, sshd.home
        sshd.add_authorized_key(public_key_line)
        sshd.host_key_line("ssh-ed25519")        # what to pin
        sshd.kill_sessions()                      # cut every live connection
        sshd.regenerate_host_keys()               # new identity, same port
        sshd.stop()

Needs root (useradd, sshd privilege separation) and the Debian package
`openssh-server`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from .proc import free_port, locked_passwd_run as _locked_passwd_run, run as _run

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
KEY_TYPES = ("ed25519", "ecdsa", "rsa")


def sshd_version() -> tuple:
    proc = subprocess.run([SSHD, "-V"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", proc.stdout)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def fingerprint(public_line: str) -> str:
    """'SHA256:<base64 without padding>' of an OpenSSH public key line."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def generate_key(path: str, key_type: str = "ed25519", passphrase: str = "", bits: int = 0) -> str:
    """An OpenSSH key pair at path / path.pub; returns the public key line."""
    argv = ["ssh-keygen", "-q", "-t", key_type, "-N", passphrase, "-C", "sar-test", "-f", path]
    if bits:
        argv[4:4] = ["-b", str(bits)]
    for leftover in (path, path + ".pub"):
        if os.path.exists(leftover):
            os.unlink(leftover)
    _run(argv, "ssh-keygen")
    with open(path + ".pub", encoding="ascii") as handle:
        return handle.read().strip()


class SshServer:
    """One private OpenSSH server and its test user; see the module docstring."""

    def __init__(self, base_dir: str | None = None, host_key_types=KEY_TYPES, log_level: str = "VERBOSE"):
        self.base_dir = base_dir
        self.host_key_types = tuple(host_key_types)
        self.log_level = log_level
        self.tmp = None
        self.port = None
        self.user = "sart" + secrets.token_hex(5)
        # Characters a shell or a config parser could trip over, on purpose.
        self.password = "pw 'x\"%s$:" % secrets.token_urlsafe(10)
        self.home = None
        self.proc = None
        self.user_created = False
        self.host_keys = {}  # type -> public line

    # -- paths ------------------------------------------------------------------
    @property
    def config_path(self) -> str:
        return os.path.join(self.tmp, "sshd_config")

    @property
    def log_path(self) -> str:
        return os.path.join(self.tmp, "sshd.log")

    @property
    def keys_dir(self) -> str:
        return os.path.join(self.tmp, "authorized")

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    # -- life cycle ---------------------------------------------------------------
    def __enter__(self) -> "SshServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, attempts: int = 5) -> "SshServer":
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
            if self.port:  # a fixed port (restart) that is not free: do not wander
                break
        raise RuntimeError("sshd did not start:\n%s" % last[-3000:])

    def _prepare(self) -> None:
        # Under /tmp (not pytest's 0700 tree): the test user must traverse to
        # its home and its authorized keys.
        self.tmp = tempfile.mkdtemp(prefix="sar-sshd-", dir=self.base_dir)
        os.chmod(self.tmp, 0o755)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        os.mkdir(self.keys_dir, 0o755)
        self.home = os.path.join(self.tmp, "home")
        try:
            self._generate_host_keys()
            self._create_user()
            self._write_config()
        except BaseException:
            self.stop()
            raise

    def _generate_host_keys(self) -> None:
        self.host_keys = {}
        for key_type in self.host_key_types:
            path = os.path.join(self.tmp, "ssh_host_%s_key" % key_type)
            line = generate_key(path, key_type, bits=3072 if key_type == "rsa" else 0)
            self.host_keys[line.split()[0]] = " ".join(line.split()[:2])

    def _create_user(self) -> None:
        _locked_passwd_run(["useradd", "--no-create-home", "--home-dir", self.home, "--shell", "/bin/sh",
                            "--user-group", self.user], "useradd")
        self.user_created = True
        _locked_passwd_run(["chpasswd"], "chpasswd", input_text="%s:%s\n" % (self.user, self.password))
        os.mkdir(self.home, 0o755)
        shutil.chown(self.home, self.user, self.user)

    def _write_config(self) -> None:
        lines = ["HostKey %s" % os.path.join(self.tmp, "ssh_host_%s_key" % t) for t in self.host_key_types]
        lines += [
            "ListenAddress 127.0.0.1",
            "PidFile %s" % os.path.join(self.tmp, "sshd.pid"),
            "UsePAM no",
            "StrictModes no",
            "AuthorizedKeysFile %s/%%u" % self.keys_dir,
            "PasswordAuthentication yes",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin no",
            "AllowUsers %s" % self.user,
            "UseDNS no",
            "PrintMotd no",
            "MaxStartups 100:30:200",
            "MaxAuthTries 20",
            "LoginGraceTime 60",
            "LogLevel %s" % self.log_level,
            "Subsystem sftp internal-sftp",
        ]
        if sshd_version() >= (9, 8):
            # Many deliberate login failures from one address must not get it penalised.
            lines.append("PerSourcePenalties no")
        with open(self.config_path, "w", encoding="ascii") as handle:
            handle.write("\n".join(lines) + "\n")
        _run([SSHD, "-t", "-f", self.config_path, "-o", "Port=22"], "sshd -t")

    def _spawn(self, port: int) -> bool:
        log = open(self.log_path, "ab")  # pylint: disable=consider-using-with
        try:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", self.config_path, "-o", "Port=%d" % port],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.settimeout(5)
                    if sock.recv(64).startswith(b"SSH-"):
                        self.port = port
                        return True
            except OSError:
                time.sleep(0.05)
        self._terminate()
        return False

    def _terminate(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def stop_listener(self) -> None:
        """Stop accepting connections (live sessions survive; see kill_sessions)."""
        self._terminate()

    def restart(self) -> None:
        """Same port, same config (re-reads host keys)."""
        self._terminate()
        self.start(attempts=20)

    def stop(self) -> None:
        """Stop the server, cut every session, remove the user and the files."""
        self._terminate()
        self.kill_sessions()
        if self.user_created:
            try:
                _locked_passwd_run(["userdel", "--force", self.user], "userdel")
            except RuntimeError:
                pass
            self.user_created = False
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    # -- what tests do with it ------------------------------------------------------
    def session_pids(self) -> list:
        """Processes serving this user's connections ('sshd: <user>...' titles)."""
        found = []
        prefix = ("sshd: %s" % self.user).encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as handle:
                    cmdline = handle.read()
            except OSError:
                continue
            if cmdline.startswith(prefix):
                found.append(int(entry))
        return found

    def kill_sessions(self) -> int:
        """SIGKILL every process serving this user's connections; the listener
        stays up so a client can reconnect. Returns how many were killed."""
        killed = 0
        for pid in self.session_pids():
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        return killed

    def add_authorized_key(self, public_line: str) -> None:
        path = os.path.join(self.keys_dir, self.user)
        with open(path, "a", encoding="ascii") as handle:
            handle.write(public_line.strip() + "\n")
        os.chmod(path, 0o644)

    def host_key_line(self, key_type: str = "ssh-ed25519") -> str:
        """'type base64' of one of the server's host keys (to pin)."""
        return self.host_keys[key_type]

    def host_key_fingerprint(self, key_type: str = "ssh-ed25519") -> str:
        return fingerprint(self.host_keys[key_type])

    def regenerate_host_keys(self) -> None:
        """New host keys (a 'changed' server), then restart on the same port."""
        self._generate_host_keys()
        if self.proc is not None:
            self.restart()

    def make_dir(self, path: str, mode: int = 0o755, owner: bool = True) -> str:
        """A directory on the server side (absolute), owned by the test user unless told."""
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)
        if owner:
            shutil.chown(path, self.user, self.user)
        return path
