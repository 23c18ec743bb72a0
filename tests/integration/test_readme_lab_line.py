# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""The README's lab-box lines (issue 8), verbatim, on a fresh box:

    ansible-playbook -i localhost, -c local sar.backup.site -e sar_backup_hosts=localhost
    sar-backup --help

The box is a simulated appliance (tests/harness/fleet.py: private mount and UTS namespaces with an
empty /etc/sar-backup, /opt/sar-backup, /usr/local/bin, /etc/systemd/system, /var/lib/sar-backup,
/root), so the role installs for real with every default (the runtime from PyPI into
/opt/sar-backup, the command in /usr/local/bin) and nothing of this machine is touched. Ansible
picks the interpreter itself (no ansible_python_interpreter). A second run changes nothing.
The collection is found the way an installed one is (ANSIBLE_COLLECTIONS_PATH)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys

import pytest

from harness.fleet import Fleet
from harness.playbook import BIN, ROOT, ansible_env

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount namespaces)"),
    pytest.mark.skipif(not all(shutil.which(t) or os.path.exists("/usr/sbin/" + t) for t in ("sshd", "unshare", "nsenter")),
                       reason="needs openssh-server and util-linux (unshare, nsenter)"),
]


def readme_lab_lines() -> list:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    block = re.search(r"```sh\n(ansible-playbook -i localhost, -c local sar\.backup\.site[^\n]*)\n(sar-backup --help)\n```",
                      text)
    assert block, "the README's lab-box block moved or changed"
    return [block.group(1), block.group(2)]


def test_readme_lab_lines_install_the_command_on_a_fresh_box():
    install, help_line = readme_lab_lines()
    assert install == "ansible-playbook -i localhost, -c local sar.backup.site -e sar_backup_hosts=localhost"
    env = ansible_env()
    env.pop("ANSIBLE_PYTHON_INTERPRETER", None)  # Ansible picks the box's Python itself
    env["PATH"] = BIN + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env["HOME"] = "/root"
    exports = " ".join("%s=%s" % (k, shlex.quote(v)) for k, v in sorted(env.items())
                       if k.startswith("ANSIBLE_") or k in ("PATH", "HOME", "LANG", "LC_ALL"))
    # This machine's Python (the venv's base, possibly under /root) stays visible inside the box.
    carry = (os.path.realpath(sys.base_prefix),) if os.path.realpath(sys.base_prefix).startswith("/root/") else ()
    with Fleet(1, carry=carry) as fleet:
        (host,) = fleet.hosts
        assert fleet.run(host, ["test", "-e", "/usr/local/bin/sar-backup"], check=False).returncode != 0
        outcomes = []
        for _attempt in range(2):
            proc = fleet.run(host, "cd /root && env %s %s" % (exports, install), check=False, timeout=1500)
            out = proc.stdout.decode(errors="replace")
            assert proc.returncode == 0, (out[-5000:], proc.stderr.decode(errors="replace")[-3000:])
            outcomes.append(re.search(r"localhost\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0", out))
            assert outcomes[-1], out[-3000:]
        assert int(outcomes[0].group(1)) > 0 and int(outcomes[1].group(1)) == 0, [o.group(0) for o in outcomes]
        proc = fleet.run(host, "env PATH=/usr/local/bin:/usr/bin:/bin %s" % help_line, check=False)
        out = proc.stdout.decode(errors="replace")
        assert proc.returncode == 0 and "usage: sar-backup" in out, (out, proc.stderr.decode(errors="replace"))
        for sub in ("run", "verify", "restore", "drill", "status"):
            assert sub in out
        assert fleet.run(host, ["test", "-d", "/opt/sar-backup"], check=False).returncode == 0
        assert fleet.run(host, ["test", "-f", "/etc/sar-backup/runtime.json"], check=False).returncode == 0
