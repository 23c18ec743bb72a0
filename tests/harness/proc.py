# SPDX-License-Identifier: GPL-3.0-or-later
"""What every server harness needs: a free loopback port and commands run
with their output kept for the error message (useradd & co. retried while
another test run holds the /etc/passwd lock)."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller retries if it loses a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(argv: list, what: str, input_text: str | None = None) -> str:
    proc = subprocess.run(argv, input=input_text, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (what, proc.returncode, proc.stdout.strip()))
    return proc.stdout


def locked_passwd_run(argv: list, what: str, input_text: str | None = None) -> str:
    """useradd/userdel/chpasswd fail at once when another process holds the
    /etc/passwd lock (other test runs on this machine): retry a while."""
    last = None
    for _attempt in range(50):
        try:
            return run(argv, what, input_text)
        except RuntimeError as exc:
            last = exc
            if "lock" not in str(exc).lower():
                raise
            time.sleep(0.2)
    raise last
