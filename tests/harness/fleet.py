# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""A simulated fleet of appliances for rollout tests and benchmarks.

Each appliance is one OpenSSH `sshd -D -e -f <own config>` on 127.0.0.1 and a
port picked free at start time, launched under
`unshare --mount --uts --propagation private` through a small wrapper that
first sets the appliance's own host name and mounts a private tmpfs over the
paths the role and the runtime write (`/etc/sar-backup`, `/opt/sar-backup`,
`/var/lib/sar-backup`, `/run/lock`, `/usr/local/bin`, `/etc/systemd/system`,
`/root`), then execs sshd. Every SSH session is a child of that sshd, so it
sees the appliance's host name and files: five appliances are five separate
hosts to Ansible, reached over real SSH (root by key) on five ports. The
network and the rest of the filesystem are shared (a PostgreSQL cluster on
127.0.0.1 or its socket dir in /tmp serves every appliance).

    with Fleet(5, dead=1) as fleet:
        fleet.hosts                  # reachable inventory names: pbx01-<run>, ...
        fleet.dead_hosts             # inventory names whose port has nothing listening
        fleet.write_inventory({"sar_backup_profile": ...})   # -> fleet.inventory_path
        fleet.run(fleet.hosts[0], ["cat", "/etc/sar-backup/settings.json"])   # inside its namespaces
        fleet.read_file(fleet.hosts[0], "/var/lib/sar-backup/status/x.json")
        fleet.ssh(fleet.hosts[0], "hostname")                 # over its sshd
    # stop(): every process in each appliance's mount namespace is killed; the
    # tmpfs mounts go away with the namespace.

The host name of an appliance equals its inventory name (`pbx01-<run id>`), so
names are unique per test run and the archive names (`<job>_<host>_<time>.sar`)
can be compared with the inventory. The only change outside the harness's tmp
dir: the empty mount-point directories are created on the host when missing
(`mkdir -p`; they are left in place, empty, since another fleet may use them).

Needs root (mount, unshare, sshd privilege separation), util-linux
(`unshare`, `nsenter`) and the Debian package `openssh-server`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import yaml

from .proc import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH = shutil.which("ssh") or "/usr/bin/ssh"
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What each appliance gets privately (a tmpfs each): the role's and the runtime's paths.
PRIVATE_PATHS = (
    "/etc/sar-backup",
    "/opt/sar-backup",
    "/var/lib/sar-backup",
    "/run/lock",
    "/usr/local/bin",
    "/etc/systemd/system",
    "/root",
)

# sh wrapper run by unshare: own host name, own tmpfs mounts, then exec sshd.
#   appliance.sh NAME PRIVATE_PATH... -- CARRIED_PATH... -- COMMAND...
# A carried path is a directory of the host shown read-only inside the appliance even where it lies
# under a private path (e.g. an interpreter under /root): bound aside before the tmpfs mounts, bound
# back on top after them.
WRAPPER = """#!/bin/sh
# written by tests/harness/fleet.py: runs inside a fresh mount + UTS namespace
set -e
name="$1"; shift
hostname "$name"
private=""
while [ "$1" != "--" ]; do private="$private $1"; shift; done
shift
carried=""
while [ "$1" != "--" ]; do carried="$carried $1"; shift; done
shift
if [ -n "$carried" ]; then
    aside=$(mktemp -d /tmp/sar-fleet-carry.XXXXXX)
    i=0
    for path in $carried; do
        i=$((i + 1)); mkdir "$aside/$i"; mount --bind "$path" "$aside/$i"
    done
fi
for path in $private; do
    mount -t tmpfs -o mode=0755,size=2g "sar-$name" "$path"
done
if [ -n "$carried" ]; then
    i=0
    for path in $carried; do
        i=$((i + 1)); mkdir -p "$path"; mount --bind "$aside/$i" "$path"
        mount -o remount,bind,ro "$path"; umount "$aside/$i"; rmdir "$aside/$i"
    done
    rmdir "$aside"
fi
exec "$@"
"""

SSHD_CONFIG = """# written by tests/harness/fleet.py for appliance {name}
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/ssh_host_ed25519_key
PidFile none
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile {authorized}/%u
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
MaxStartups 100:30:200
MaxSessions 100
LogLevel ERROR
Subsystem sftp internal-sftp
"""


# A notification callback (ansible-core ships no JSON stdout callback; ansible.posix
# is not installed): per-host recap stats and each task's per-host result, written
# as JSON to $SAR_FLEET_REPORT when the playbook ends. The normal output stays.
CALLBACK = r'''
from __future__ import annotations
import json
import os
from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: sar_fleet_report
type: notification
short_description: recap stats and per-host task results as JSON (tests/harness/fleet.py)
description: [Writes $SAR_FLEET_REPORT at the end of the playbook.]
"""

KEEP = ("changed", "failed", "skipped", "unreachable", "msg", "code", "archive", "targets", "fetched_path", "rc",
        "categories", "restored")


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "sar_fleet_report"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tasks = []

    def _record(self, status, result):
        res = result._result
        entry = {"task": result._task.get_name(), "host": result._host.get_name(), "status": status}
        entry.update({k: res[k] for k in KEEP if k in res})
        if "results" in res:
            entry["changed_items"] = sum(1 for r in res["results"] if isinstance(r, dict) and r.get("changed"))
        try:
            json.dumps(entry)
        except (TypeError, ValueError):
            entry = {k: (v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)) for k, v in entry.items()}
        self.tasks.append(entry)

    def v2_runner_on_ok(self, result, **kwargs):
        self._record("ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False, **kwargs):
        self._record("ignored" if ignore_errors else "failed", result)

    def v2_runner_on_unreachable(self, result, **kwargs):
        self._record("unreachable", result)

    def v2_runner_on_skipped(self, result, **kwargs):
        self._record("skipped", result)

    def v2_playbook_on_stats(self, stats):
        hosts = sorted(stats.processed.keys())
        out = {"stats": {h: stats.summarize(h) for h in hosts}, "tasks": self.tasks}
        path = os.environ.get("SAR_FLEET_REPORT")
        if path:
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(out, handle, indent=1, default=repr)
'''


def _mnt_ns(pid: int) -> str | None:
    try:
        return os.readlink("/proc/%d/ns/mnt" % pid)
    except OSError:
        return None


def wheelhouse(requirements: str | None = None, base_dir: str | None = None, extra: tuple = ("setuptools", "wheel")) -> str:
    """A directory of wheels for requirements/runtime.txt (plus `extra`), built
    once with this venv's pip and cached in the tmp dir under a name derived
    from the requirements, the extras and the Python version; reused when present.
    The role installs from it with `--no-index --find-links DIR`."""
    requirements = requirements or os.path.join(ROOT, "requirements", "runtime.txt")
    with open(requirements, "rb") as handle:
        digest = hashlib.sha256(handle.read() + repr((extra, sys.version_info[:2])).encode()).hexdigest()[:16]
    base_dir = base_dir or tempfile.gettempdir()
    target = os.path.join(base_dir, "sar-backup-wheelhouse-%d-%s" % (os.getuid(), digest))
    if os.path.isfile(os.path.join(target, ".complete")):
        return target
    build = tempfile.mkdtemp(prefix="sar-backup-wheelhouse-build-", dir=base_dir)
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
                               "-r", requirements, *extra, "-w", build],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError("pip wheel failed (%d):\n%s" % (proc.returncode, proc.stdout[-3000:]))
        with open(os.path.join(build, ".complete"), "w", encoding="utf-8") as handle:
            handle.write(requirements + "\n")
        try:
            os.rename(build, target)
        except OSError:  # another process finished first: use theirs
            if not os.path.isfile(os.path.join(target, ".complete")):
                raise
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return target


def python_floor() -> str:
    """The runtime's oldest supported Python, as the role states it (roles/sar_backup/vars/main.yml)."""
    with open(os.path.join(ROOT, "roles", "sar_backup", "vars", "main.yml"), encoding="utf-8") as handle:
        return str(yaml.safe_load(handle)["_sar_backup_python_floor"])


def floor_python(version: str | None = None) -> dict | None:
    """A Python of the floor version (python_floor()) on this machine that can make a venv, or None:
    $SAR_BACKUP_FLOOR_PYTHON, pythonX.Y on PATH, ~/.pyenv/versions/X.Y.*, /usr/bin, /usr/local/bin.
    Returns {"python": its real path, "prefix": sys.prefix, "version": "X.Y.Z"}."""
    version = version or python_floor()
    name = "python" + version
    candidates = [os.environ.get("SAR_BACKUP_FLOOR_PYTHON"), shutil.which(name)]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/%s.*/bin/%s" % (version, name))), reverse=True)
    candidates += ["/usr/bin/" + name, "/usr/local/bin/" + name]
    probe = "import ensurepip, json, sys, venv; print(json.dumps([sys.executable, sys.prefix, '%d.%d.%d' % sys.version_info[:3]]))"
    for candidate in candidates:
        if not candidate:
            continue
        try:
            proc = subprocess.run([candidate, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
            executable, prefix, full = json.loads(proc.stdout)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            continue
        if proc.returncode == 0 and full.rsplit(".", 1)[0] == version:
            return {"python": os.path.realpath(executable), "prefix": os.path.realpath(prefix), "version": full}
    return None


def wheelhouse_cache(base_dir: str | None = None) -> str:
    """The controller-side cache the role's `sar_backup_wheelhouse: controller` downloads into, kept
    between test runs (one folder per Python version, platform and requirements file)."""
    return os.path.join(base_dir or tempfile.gettempdir(), "sar-backup-wheelhouse-cache-%d" % os.getuid())


@dataclass
class Appliance:
    """One simulated appliance: its inventory/host name, sshd port and process."""

    index: int
    name: str
    port: int
    dead: bool = False
    pid: int | None = None
    mnt_ns: str | None = None
    dir: str = ""
    log: str = ""
    proc: subprocess.Popen | None = field(default=None, repr=False)


class Fleet:
    """`count` appliances (+ `dead` inventory hosts with nothing listening); see the module docstring."""

    def __init__(self, count: int, dead: int = 0, base_dir: str | None = None, private_paths=PRIVATE_PATHS,
                 prefix: str = "pbx", run_id: str | None = None, carry=()):
        self.count = count
        self.dead = dead
        self.base_dir = base_dir
        self.private_paths = tuple(private_paths)
        # host directories every appliance sees read-only, even under a private path (e.g. a Python in /root)
        self.carry = tuple(carry)
        for path in self.private_paths + self.carry:
            if not os.path.isabs(path) or any(c.isspace() for c in path):
                raise ValueError("fleet paths must be absolute, without blanks: %r" % path)
        self.prefix = prefix
        self.run_id = run_id or secrets.token_hex(3)
        self.tmp = None
        self.key = None
        self.appliances: list = []
        self.inventory_path = None
        self.host_ns = _mnt_ns(os.getpid())

    # -- names ------------------------------------------------------------------
    @property
    def hosts(self) -> list:
        """Inventory names of the reachable appliances."""
        return [a.name for a in self.appliances if not a.dead]

    @property
    def dead_hosts(self) -> list:
        return [a.name for a in self.appliances if a.dead]

    def appliance(self, name) -> Appliance:
        """By inventory name, index, or the Appliance itself."""
        if isinstance(name, Appliance):
            return name
        if isinstance(name, int):
            return self.appliances[name]
        for app in self.appliances:
            if app.name == name:
                return app
        raise KeyError(name)

    # -- life cycle -------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> "Fleet":
        if os.geteuid() != 0:
            raise RuntimeError("the fleet harness needs root (mount namespaces, sshd)")
        self.tmp = tempfile.mkdtemp(prefix="sar-fleet-", dir=self.base_dir)
        os.chmod(self.tmp, 0o755)
        try:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
            for path in self.private_paths:
                os.makedirs(path, exist_ok=True)  # the mount points (empty; the host's stay untouched)
            self.key = os.path.join(self.tmp, "id_ed25519")
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sar-fleet", "-f", self.key], check=True)
            authorized = os.path.join(self.tmp, "authorized_keys")
            os.mkdir(authorized)
            shutil.copy(self.key + ".pub", os.path.join(authorized, "root"))
            wrapper = os.path.join(self.tmp, "appliance.sh")
            with open(wrapper, "w", encoding="utf-8") as handle:
                handle.write(WRAPPER)
            os.chmod(wrapper, 0o755)
            width = max(2, len(str(self.count + self.dead)))
            for index in range(self.count + self.dead):
                name = "%s%0*d-%s" % (self.prefix, width, index + 1, self.run_id)
                app = Appliance(index=index, name=name, port=0, dead=index >= self.count,
                                dir=os.path.join(self.tmp, name))
                os.mkdir(app.dir)
                self.appliances.append(app)
                if app.dead:
                    app.port = free_port()  # nothing will listen there
                    continue
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name,
                                "-f", os.path.join(app.dir, "ssh_host_ed25519_key")], check=True)
                self._launch(app, wrapper, authorized)
            deadline = time.monotonic() + timeout
            for app in self.appliances:
                if not app.dead:
                    self._wait_listening(app, wrapper, authorized, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, app: Appliance, wrapper: str, authorized: str) -> None:
        app.port = free_port()
        config = os.path.join(app.dir, "sshd_config")
        with open(config, "w", encoding="utf-8") as handle:
            handle.write(SSHD_CONFIG.format(name=app.name, port=app.port, dir=app.dir, authorized=authorized))
        app.log = os.path.join(app.dir, "sshd.log")
        argv = [UNSHARE, "--mount", "--uts", "--propagation", "private", wrapper, app.name,
                *self.private_paths, "--", *self.carry, "--", SSHD, "-D", "-e", "-f", config]
        with open(app.log, "ab") as log:
            # unshare and the wrapper exec: the pid we get is sshd's
            app.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        app.pid = app.proc.pid

    def _wait_listening(self, app: Appliance, wrapper: str, authorized: str, deadline: float, attempts: int = 5) -> None:
        for _attempt in range(attempts):
            while time.monotonic() < deadline:
                if app.proc.poll() is not None:
                    break
                try:
                    with socket.create_connection(("127.0.0.1", app.port), timeout=1):
                        app.mnt_ns = _mnt_ns(app.pid)
                        if app.mnt_ns is None or app.mnt_ns == self.host_ns:
                            raise RuntimeError("appliance %s: sshd is not in a private mount namespace" % app.name)
                        return
                except OSError:
                    time.sleep(0.05)
            if app.proc.poll() is None:
                break  # still running but never listened: give up below
            if "Address already in use" not in self.log_of(app):
                break
            self._launch(app, wrapper, authorized)  # lost the port race: another port
        raise RuntimeError("appliance %s did not start (port %d):\n%s" % (app.name, app.port, self.log_of(app)[-2000:]))

    def log_of(self, app) -> str:
        app = app if isinstance(app, Appliance) else self.appliance(app)
        try:
            with open(app.log, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except (OSError, TypeError):
            return ""

    def kill_appliance(self, name) -> None:
        """Kill every process in the appliance's mount namespace (sshd, its sessions,
        anything they started); the namespace and its tmpfs mounts go with them."""
        app = self.appliance(name)
        if app.proc is not None and app.proc.poll() is None:
            app.proc.send_signal(signal.SIGTERM)
        if app.mnt_ns and app.mnt_ns != self.host_ns:
            for _round in range(50):
                pids = self._pids_in(app.mnt_ns)
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL if _round else signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                time.sleep(0.1)
        if app.proc is not None:
            try:
                app.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                app.proc.kill()
                app.proc.wait(timeout=10)

    @staticmethod
    def _pids_in(mnt_ns: str) -> list:
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and _mnt_ns(int(entry)) == mnt_ns:
                pids.append(int(entry))
        return pids

    def stop(self) -> None:
        problems = []
        for app in self.appliances:
            if not app.dead and app.proc is not None:
                try:
                    self.kill_appliance(app)
                except Exception as exc:  # pylint: disable=broad-except  # keep tearing down the others
                    problems.append("%s: %s" % (app.name, exc))
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        if problems:
            raise RuntimeError("fleet teardown: " + "; ".join(problems))

    def __enter__(self) -> "Fleet":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- inventory ----------------------------------------------------------------
    def ssh_common_args(self) -> str:
        return ("-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o GlobalKnownHostsFile=/dev/null "
                "-o LogLevel=ERROR -o IdentitiesOnly=yes -o ConnectTimeout=10")

    def write_inventory(self, group_vars: dict | None = None, host_vars: dict | None = None,
                        path: str | None = None) -> str:
        """Inventory (YAML) with group `pbx` = every appliance, dead ones included.
        `host_vars`: inventory name -> extra variables for that host."""
        hosts = {}
        for app in self.appliances:
            entry = {"ansible_host": "127.0.0.1", "ansible_port": app.port}
            entry.update((host_vars or {}).get(app.name, {}))
            hosts[app.name] = entry
        group = {
            "ansible_user": "root",
            "ansible_connection": "ssh",
            "ansible_ssh_private_key_file": self.key,
            "ansible_ssh_common_args": self.ssh_common_args(),
            "ansible_python_interpreter": "/usr/bin/python3",
        }
        group.update(group_vars or {})
        inventory = {"all": {"children": {"pbx": {"hosts": hosts, "vars": group}}}}
        self.inventory_path = path or os.path.join(self.tmp, "inventory.yml")
        with open(self.inventory_path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(inventory, handle, sort_keys=False)
        return self.inventory_path

    # -- running playbooks -----------------------------------------------------------
    def playbook(self, playbook_path: str, workdir: str, extravars: dict | None = None, forks: int = 5,
                 env: dict | None = None, timeout: int = 900):
        """ansible-playbook against the fleet inventory (harness.playbook.run_playbook,
        normal text output) -> (PlaybookRun, report) where report is
        {"stats": {host: {ok, changed, unreachable, failures, ...}}, "tasks": [per-host results]}."""
        from .playbook import run_playbook  # pylint: disable=import-outside-toplevel
        plugins = os.path.join(self.tmp, "callback_plugins")
        if not os.path.isdir(plugins):
            os.mkdir(plugins)
            with open(os.path.join(plugins, "sar_fleet_report.py"), "w", encoding="utf-8") as handle:
                handle.write(CALLBACK)
        fd, report_path = tempfile.mkstemp(prefix="report-", suffix=".json", dir=self.tmp)
        os.close(fd)
        run_env = {
            "ANSIBLE_CALLBACK_PLUGINS": plugins,
            "ANSIBLE_CALLBACKS_ENABLED": "sar_fleet_report",
            "SAR_FLEET_REPORT": report_path,
            "ANSIBLE_FORKS": str(forks),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_SSH_RETRIES": "0",
            "ANSIBLE_PIPELINING": "True",  # root over SSH, no become: one round trip per task
        }
        run_env.update(env or {})
        run = run_playbook(None, workdir, extravars=extravars, inventory=self.inventory_path,
                           playbook_path=playbook_path, json_out=False, env=run_env, timeout=timeout)
        try:
            with open(report_path, encoding="utf-8") as handle:
                report = json.load(handle)
        except (OSError, ValueError):
            report = {"stats": {}, "tasks": []}
        finally:
            os.unlink(report_path)
        return run, report

    # -- inside an appliance ------------------------------------------------------
    def run(self, name, argv, check: bool = True, input_data: bytes | None = None, timeout: float = 120):
        """Run argv (a list, or a string for /bin/sh -c) inside the appliance's
        mount and UTS namespaces (nsenter into its sshd). Returns CompletedProcess (bytes)."""
        app = self.appliance(name)
        if app.dead or app.pid is None:
            raise RuntimeError("appliance %s is not running" % app.name)
        if isinstance(argv, str):
            argv = ["/bin/sh", "-c", argv]
        proc = subprocess.run([NSENTER, "-t", str(app.pid), "-m", "-u", "--"] + list(argv), input=input_data,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/", timeout=timeout, check=False)
        if check and proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace")[-2000:]
            raise RuntimeError("%s on %s failed (%d): %s" % (argv, app.name, proc.returncode, tail))
        return proc

    def read_file(self, name, path: str) -> bytes:
        return self.run(name, ["cat", "--", path]).stdout

    def write_file(self, name, path: str, data: bytes, mode: int = 0o644) -> None:
        self.run(name, ["/bin/sh", "-c", 'mkdir -p "$(dirname "$0")" && cat > "$0" && chmod %o "$0"' % mode, path],
                 input_data=data)

    def ssh(self, name, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a shell command on the appliance over its sshd (as Ansible would reach it)."""
        app = self.appliance(name)
        argv = [SSH, "-i", self.key, "-p", str(app.port), "-o", "BatchMode=yes"] + self.ssh_common_args().split() + [
            "root@127.0.0.1", command]
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=timeout, check=False)

    def hostname_of(self, name) -> str:
        return self.run(name, ["hostname"]).stdout.decode().strip()

    # -- test data ----------------------------------------------------------------
    def prepare_announcements(self, path: str = "/var/lib/sar-backup/fleet-announcements", size: int = 4096) -> dict:
        """In every reachable appliance, a directory `path` (inside its private
        tmpfs) holding `<hostname>.txt` (the host name) and `greeting.wav`
        (bytes derived from the host name), so each appliance's files differ.
        Returns inventory name -> {file name: content}."""
        out = {}
        for name in self.hosts:
            host = self.hostname_of(name)
            wav = hashlib.sha256(host.encode()).digest() * (size // 32)
            files = {"%s.txt" % host: (host + "\n").encode(), "greeting.wav": wav}
            for fname, data in files.items():
                self.write_file(name, os.path.join(path, fname), data)
            out[name] = files
        return out


def fleet_profile(base_profile: dict, announcements_path: str = "/var/lib/sar-backup/fleet-announcements") -> dict:
    """A copy of an appliance profile (tests/harness/appliance.py shape) whose
    announcements tree is the per-appliance directory of prepare_announcements()."""
    import copy
    profile = copy.deepcopy(base_profile)
    profile["categories"]["announcements"]["paths"] = [announcements_path]
    return profile
