# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Fleet rollout over real SSH (issue 4, "Fleet"): five simulated appliances
(tests/harness/fleet.py: one sshd each in a private mount + UTS namespace, own
host name, own /etc/sar-backup, /opt/sar-backup, /var/lib/sar-backup, /run/lock,
/usr/local/bin, /etc/systemd/system) plus one inventory host whose port has
nothing listening.

1. playbooks/site.yml converges on the five (failed=0) while the dead host is
   reported unreachable and does not stop the others. The runtime comes from
   the role's offline wheelhouse (`sar_backup_wheelhouse: controller`: pip
   download once on the controller per Python version and platform, copied to
   each appliance, `pip install --no-index`); the first appliance runs its
   runtime on the floor Python (3.9, tests/harness/fleet.py floor_python())
   when this machine has one, so its wheelhouse is a different one;
2. a second site.yml run changes nothing (changed=0 on all five), and
   `--tags units` alone rewrites a timer removed by hand and changes nothing
   elsewhere;
3. playbooks/run.yml runs the job everywhere with fetch_to: each appliance has
   its own status file (code successful) and its own archive (its host name in
   the name, its own announcement file inside), fetched to
   <fetch_to>/<inventory_hostname>/ with the SHA-256 the appliance reported;
4. playbooks/restore.yml on two chosen appliances brings their announcements
   back from their own newest archive, and leaves the others alone.

The appliances share one PostgreSQL cluster (the `core` dump) and the sample
appliance's configuration trees; each has its own announcements directory
inside its private /var/lib/sar-backup.

Run: cd /work/main && .venv/bin/python -m pytest -q -p no:cacheprovider tests/integration/test_fleet.py
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time

import pytest

from harness import appliance as sample
from harness.fleet import Fleet, fleet_profile, floor_python, wheelhouse_cache
from harness.playbook import BIN, ROOT, ansible_env
from harness.postgres import PostgresCluster

APPLIANCES = 5
JOB = "nightly"
ANNOUNCEMENTS = "/var/lib/sar-backup/fleet-announcements"
SITE = os.path.join(ROOT, "playbooks", "site.yml")
RUN = os.path.join(ROOT, "playbooks", "run.yml")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the fleet needs root (mount namespaces, sshd)"),
    pytest.mark.skipif(not all(shutil.which(t) or os.path.exists("/usr/sbin/" + t) for t in ("sshd", "unshare", "nsenter")),
                       reason="needs openssh-server and util-linux (unshare, nsenter)"),
]


def job_definition() -> dict:
    return {
        "name": JOB,
        "interval": "daily",
        "start": "2025-01-06 02:30",
        "data": ["core", "announcements"],
        "targets": [{"type": "local"}],
    }


class FleetEnv:
    """What the tests share: the fleet, the workdir, and each step's outcome."""

    def __init__(self, fleet: Fleet, work: str, files: dict, floor: dict | None):
        self.fleet = fleet
        self.work = work
        self.files = files  # inventory name -> {announcement file name: bytes}
        self.floor = floor  # the floor Python the first appliance's runtime uses, or None
        self.steps: dict = {}

    def playbook(self, step: str, path: str, extravars: dict | None = None, env: dict | None = None):
        """Run a playbook once per module (a later test reuses the outcome)."""
        if step not in self.steps:
            if not os.path.exists(path):
                pytest.fail("%s does not exist (the role/playbooks of issue 4 are not in this tree yet)" % path)
            started = time.monotonic()
            run, report = self.fleet.playbook(path, self.work, extravars=extravars, forks=APPLIANCES, env=env)
            self.steps[step] = (run, report, time.monotonic() - started)
            print("\n[fleet] %s: %s in %.1f s" % (step, os.path.basename(path), self.steps[step][2]))
        return self.steps[step]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("fleet"))
    os.chmod(work, 0o755)
    # The floor Python, if this machine has one, shown inside every appliance (it may live under /root,
    # which each appliance has privately); the first appliance's runtime is built with it.
    floor = floor_python()
    with PostgresCluster() as cluster, Fleet(APPLIANCES, dead=1, carry=(floor["prefix"],) if floor else ()) as fleet:
        # shared by all appliances: the database and the configuration trees (outside their tmpfs)
        base_profile = sample.build_appliance(os.path.join(work, "shared"), cluster)
        files = fleet.prepare_announcements(ANNOUNCEMENTS)
        fleet.write_inventory({
            "sar_backup_profile": fleet_profile(base_profile, ANNOUNCEMENTS),
            "sar_backup_jobs": [job_definition()],
            # the controller downloads the wheels (once, cached between test runs), the appliances
            # install them with --no-index
            "sar_backup_wheelhouse": "controller",
            "sar_backup_wheelhouse_cache": wheelhouse_cache(),
            "sar_backup_splay": "5m",
        }, host_vars={fleet.hosts[0]: {"sar_backup_python": floor["python"]}} if floor else None)
        yield FleetEnv(fleet, work, files, floor)


def describe(run, report) -> str:
    """Enough of a failed run to see why, for assertion messages."""
    failed = [t for t in report.get("tasks", []) if t["status"] in ("failed", "unreachable")]
    return "rc=%s\nstats=%s\nfailed tasks=%s\n--- stdout tail ---\n%s\n--- stderr tail ---\n%s" % (
        run.rc, json.dumps(report.get("stats"), indent=1), json.dumps(failed, indent=1, default=str)[-6000:],
        run.stdout[-6000:], run.stderr[-3000:])


def first_rollout(env):
    return env.playbook("site-1", SITE)


def second_rollout(env):
    first_rollout(env)
    return env.playbook("site-2", SITE)


def job_run(env):
    second_rollout(env)
    return env.playbook("run", RUN, {"job": JOB, "fetch_to": os.path.join(env.work, "fetched")})


def test_rollout_converges_and_dead_host_does_not_stop_the_others(env):
    run, report, _seconds = first_rollout(env)
    fleet = env.fleet
    stats = report["stats"]
    assert set(stats) == set(fleet.hosts + fleet.dead_hosts), describe(run, report)
    for host in fleet.hosts:
        assert stats[host]["failures"] == 0 and stats[host]["unreachable"] == 0, describe(run, report)
        assert stats[host]["ok"] > 0 and stats[host]["changed"] > 0, describe(run, report)
    (dead,) = fleet.dead_hosts
    # (tasks delegated to the controller may still count as ok for it)
    assert stats[dead]["unreachable"] >= 1 and stats[dead]["changed"] == 0, describe(run, report)
    assert run.rc == 4, "ansible-playbook exits 4 when a host is unreachable\n" + describe(run, report)
    # the others went through the whole play: every reachable host reached the same last task
    last = {h: [t["task"] for t in report["tasks"] if t["host"] == h][-1:] for h in fleet.hosts}
    assert len({tuple(v) for v in last.values()}) == 1 and last[fleet.hosts[0]], last

    for host in fleet.hosts:
        # each appliance got the runtime and the job in its own private tree
        job_file = "/etc/sar-backup/jobs/%s.json" % JOB
        assert json.loads(fleet.read_file(host, job_file))["name"] == JOB
        mode = fleet.run(host, ["stat", "-c", "%a", job_file]).stdout.decode().strip()
        assert mode == "600"
        timer = fleet.read_file(host, "/etc/systemd/system/sar-backup-%s.timer" % JOB).decode()
        assert "OnCalendar=" in timer and "Persistent=true" in timer
        assert fleet.run(host, ["test", "-f", "/etc/systemd/system/sar-backup@.service"], check=False).returncode == 0
        listed = fleet.run(host, ["/usr/local/bin/sar-backup", "list"], check=False)
        assert listed.returncode == 0 and JOB in listed.stdout.decode(), listed


def task_name(entry: dict) -> str:
    """A report entry's task name without the role prefix ("sar.backup.sar_backup : ")."""
    return entry["task"].split(" : ", 1)[-1]


def runtime_python_of(env, host) -> str:
    """X.Y.Z of the runtime virtualenv's Python on an appliance."""
    return env.fleet.run(host, ["/opt/sar-backup/venv/bin/python", "-c",
                                "import sys; print('%d.%d.%d' % sys.version_info[:3])"]).stdout.decode().strip()


def test_runtime_installed_offline_from_the_controllers_wheelhouse(env):
    """sar_backup_wheelhouse: controller - each appliance's venv holds exactly the wheels the controller
    downloaded for its Python (the floor Python on the first appliance when there is one), installed
    from <install_dir>/wheels with --no-index."""
    run, report, _seconds = first_rollout(env)
    fleet = env.fleet
    for host in fleet.hosts:
        assert report["stats"][host]["failures"] == 0, describe(run, report)
    downloads = [t for t in report["tasks"] if task_name(t).startswith("Download the wheelhouses")]
    assert len(downloads) == 1, downloads  # run_once: one task result for the whole play
    tags = {}
    for host in fleet.hosts:
        version = runtime_python_of(env, host)
        wheels = fleet.run(host, ["ls", "/opt/sar-backup/wheels"]).stdout.decode().split()
        assert wheels and all(w.endswith(".whl") for w in wheels), wheels
        cp = "cp%s%s" % tuple(version.split(".")[:2])
        assert any("-%s-" % cp in w for w in wheels), (host, version, wheels)  # built for this Python
        listed = json.loads(fleet.run(host, ["/opt/sar-backup/venv/bin/python", "-m", "pip", "list", "--isolated",
                                             "--format=json", "--disable-pip-version-check"]).stdout)
        have = {w.split("-")[0].lower().replace("_", "-") + " " + w.split("-")[1] for w in wheels}
        for dist in listed:
            if dist["name"].lower() in ("pip", "setuptools"):
                continue
            assert "%s %s" % (dist["name"].lower().replace("_", "-"), dist["version"]) in have, (host, dist, wheels)
        tags[host] = cp
    if env.floor:
        first = fleet.hosts[0]
        assert runtime_python_of(env, first) == env.floor["version"]
        assert tags[first] == "cp" + "".join(env.floor["version"].split(".")[:2])
        assert len(set(tags.values())) == 2, tags  # two Pythons, two wheelhouses
        # the floor appliance's engine imports every target library
        probe = ("import sys; sys.path.insert(0, '/opt/sar-backup/lib'); "
                 "from sar_backup.targets import dropbox, smb, sftp, usb; "
                 "assert all(m is not None for m in (dropbox.dropbox_sdk, smb.smbclient, sftp.paramiko, usb.pyudev))")
        fleet.run(first, ["/opt/sar-backup/venv/bin/python", "-I", "-c", probe])
    else:
        print("\n[fleet] no Python %s on this machine: every appliance uses the system Python" % "3.9")


def test_second_rollout_changes_nothing(env):
    run, report, _seconds = second_rollout(env)
    stats = report["stats"]
    for host in env.fleet.hosts:
        assert stats[host]["failures"] == 0 and stats[host]["unreachable"] == 0, describe(run, report)
        assert stats[host]["ok"] > 0, describe(run, report)
        changed = [t["task"] for t in report["tasks"] if t["host"] == host and t.get("changed")]
        assert stats[host]["changed"] == 0, "%s changed on re-run: %s" % (host, changed)
    (dead,) = env.fleet.dead_hosts
    assert stats[dead]["unreachable"] >= 1


def test_units_tag_alone(env):
    """`site.yml --tags units` on a fleet where the role ran: only the units phase (and the variable
    checks) runs; a timer removed by hand comes back, nothing else changes, nothing fails."""
    second_rollout(env)
    fleet = env.fleet
    victim = fleet.hosts[1]
    timer = "/etc/systemd/system/sar-backup-%s.timer" % JOB
    before = fleet.read_file(victim, timer)
    fleet.run(victim, ["rm", "--", timer])
    run, report, _seconds = env.playbook("units", SITE, env={"ANSIBLE_RUN_TAGS": "units"})
    stats = report["stats"]
    for host in fleet.hosts:
        assert stats[host]["failures"] == 0 and stats[host]["unreachable"] == 0, describe(run, report)
        changed = [task_name(t) for t in report["tasks"] if t["host"] == host and t.get("changed")]
        if host == victim:
            assert changed == ["Timer of each scheduled job"], changed
        else:
            assert stats[host]["changed"] == 0, "%s changed: %s" % (host, changed)
    assert fleet.read_file(victim, timer) == before
    ran = {task_name(t) for t in report["tasks"]}
    for other_phase in ("Runtime virtualenv with the dependencies of requirements/runtime.txt", "Host settings",
                        "Backup jobs", "Monitoring socket units (sar_backup_monitoring_port)"):
        assert other_phase not in ran, sorted(ran)
    assert "Schedules of the declared jobs (the jobs phase did not run)" in ran, sorted(ran)


def test_run_job_everywhere_each_appliance_its_own_archive(env):
    from ansible_collections.sar.backup.plugins.module_utils import archive

    run, report, _seconds = job_run(env)
    fleet = env.fleet
    fetch_to = os.path.join(env.work, "fetched")
    stats = report["stats"]
    for host in fleet.hosts:
        assert stats[host]["failures"] == 0 and stats[host]["unreachable"] == 0, describe(run, report)
    (dead,) = fleet.dead_hosts
    assert stats[dead]["unreachable"] >= 1 and stats[dead]["changed"] == 0, describe(run, report)
    assert not os.path.exists(os.path.join(fetch_to, dead))

    pattern = archive.archive_pattern(JOB)
    names = set()
    for host in fleet.hosts:
        hostname = fleet.hostname_of(host)
        assert hostname == host  # the appliance's own UTS name

        status = json.loads(fleet.read_file(host, "/var/lib/sar-backup/status/%s.json" % JOB))
        assert status["code"] == "successful", status
        name = status["archive"]["name"]
        assert pattern.match(name) and name.startswith("%s_%s_" % (JOB, hostname)), name
        assert all(t["code"] == "successful" for t in status["targets"]), status["targets"]
        names.add(name)

        # the local target's copy lives in the appliance's private tmpfs, not on the host
        kept = "/var/lib/sar-backup/archives/starface-backup/%s/%s" % (JOB, name)
        assert fleet.run(host, ["test", "-f", kept], check=False).returncode == 0
        assert not os.path.exists(kept)

        # fetched to <fetch_to>/<inventory_hostname>/<archive name>, intact
        fetched_dir = os.path.join(fetch_to, host)
        assert os.listdir(fetched_dir) == [name]
        fetched = os.path.join(fetched_dir, name)
        with open(fetched, "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == status["archive"]["sha256"]
        results = [t for t in report["tasks"] if t["host"] == host and t.get("fetched_path")]
        assert results and os.path.realpath(results[-1]["fetched_path"]) == os.path.realpath(fetched), results

        # its content: this appliance's manifest and announcement files, nobody else's
        verified = archive.verify(fetched)
        assert verified["checksums_ok"]
        assert verified["manifest"]["host"] == hostname
        assert verified["manifest"]["job"] == JOB
        member_names = [m["name"] for m in verified["members"]]
        own = [m for m in member_names if os.path.basename(m) == "%s.txt" % hostname]
        assert len(own) == 1, member_names
        others = [m for m in member_names if re.match(r"pbx\d+-", os.path.basename(m)) and m not in own]
        assert not others, others
        wanted = {own[0]} | {m for m in member_names if os.path.basename(m) == "greeting.wav"}
        with archive.open_members(fetched) as members:
            contents = {info.name: handle.read() for info, handle in members if handle is not None and info.name in wanted}
        assert contents[own[0]] == env.files[host]["%s.txt" % hostname]
        assert [v for k, v in contents.items() if k != own[0]] == [env.files[host]["greeting.wav"]]
        # the announcements source is this appliance's directory; core came from the shared database
        sources = verified["manifest"]["sources"]
        assert [s["origin"] for s in sources if s["category"] == "announcements"] == [ANNOUNCEMENTS]
        assert any(s["category"] == "core" and s["kind"] == "postgresql" for s in sources), sources
    assert len(names) == APPLIANCES  # five different archives


def test_restore_on_chosen_appliances_only(env):
    """playbooks/restore.yml over SSH with the installed runtime: the announcements of two
    appliances are brought back from their own newest archive; the others are not touched."""
    job_run(env)
    fleet = env.fleet
    chosen, others = fleet.hosts[:2], fleet.hosts[2:]
    for host in fleet.hosts:
        fleet.run(host, ["rm", "--", os.path.join(ANNOUNCEMENTS, "greeting.wav")])
        fleet.write_file(host, os.path.join(ANNOUNCEMENTS, "later.wav"), b"after the backup")
    restore = os.path.join(ROOT, "playbooks", "restore.yml")
    run, report, _seconds = env.playbook("restore", restore, {
        "sar_backup_hosts": ",".join(chosen), "job": JOB, "data": ["announcements"]})
    for host in chosen:
        assert report["stats"][host]["failures"] == 0 and report["stats"][host]["unreachable"] == 0, describe(run, report)
        listing = fleet.run(host, ["ls", ANNOUNCEMENTS]).stdout.decode().split()
        assert sorted(listing) == sorted(env.files[host]), (host, listing)
        for fname, data in env.files[host].items():
            assert fleet.read_file(host, os.path.join(ANNOUNCEMENTS, fname)) == data
        results = [t for t in report["tasks"] if t["host"] == host and t.get("categories")]
        assert results and results[-1]["categories"] == ["announcements"], results
    for host in others:
        assert host not in report["stats"] or report["stats"][host]["changed"] == 0
        listing = fleet.run(host, ["ls", ANNOUNCEMENTS]).stdout.decode().split()
        assert "later.wav" in listing and "greeting.wav" not in listing


def test_readme_adhoc_line_on_the_rolled_out_fleet(env):
    """The README's ad-hoc line, verbatim (the inventory given the way a user's ansible.cfg would:
    ANSIBLE_INVENTORY), against appliances where the role ran: the module runs under the system
    Python the inventory names (/usr/bin/python3, which lacks the engine's libraries), hands the work
    to the runtime the role installed, and returns the run's result; the dead host is unreachable."""

    second_rollout(env)
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        line = re.search(r"Ad hoc: `(ansible pbx -m [^`]+)`", handle.read()).group(1)
    assert line == "ansible pbx -m sar.backup.sar_backup_run -a job=%s" % JOB
    argv = shlex.split(line)
    argv[0] = os.path.join(BIN, "ansible")
    proc = subprocess.run(argv, cwd=env.work, capture_output=True, text=True, timeout=900, check=False,
                          env=ansible_env({"ANSIBLE_INVENTORY": env.fleet.inventory_path}))
    results = {m.group(1): (m.group(2), m.group(3)) for m in
               re.finditer(r"^(\S+) \| ([A-Z]+)!? => (\{.*?^\})", proc.stdout, re.M | re.S)}
    fleet = env.fleet
    (dead,) = fleet.dead_hosts
    assert results.get(dead, ("",))[0] == "UNREACHABLE", proc.stdout[-3000:]
    assert proc.returncode == 4, (proc.returncode, proc.stdout[-3000:], proc.stderr[-2000:])  # 4: a host unreachable
    for host in fleet.hosts:
        state, text = results[host]
        res = json.loads(text)
        assert state == "CHANGED" and res["code"] == "successful", (host, text[-3000:])
        assert "Failed to import" not in text
        status = json.loads(fleet.read_file(host, "/var/lib/sar-backup/status/%s.json" % JOB))
        assert status["archive"]["name"] == res["archive"]["name"] and status["code"] == "successful"
        assert res["archive"]["name"].startswith("%s_%s_" % (JOB, fleet.hostname_of(host)))
