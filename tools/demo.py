# SPDX-License-Identifier: GPL-3.0-or-later
"""`make demo`: a real backup of a sample appliance, then its restore check.

1. builds a sample STARFACE-like appliance in a scratch directory: a throwaway
   PostgreSQL cluster with a small schema and data, config, voicemail and
   announcement trees (tests/harness/appliance.py);
2. runs playbooks/demo.yml on localhost: settings, a daily job with a local
   target, a run now with the download to the "controller";
3. prints the archive's name, size, SHA-256 and member list and verifies it;
   then changes the appliance (rows added, files changed and deleted) and
   restores the archive onto it with sar.backup.sar_backup_restore, comparing
   every table and tree with their state at backup time;
4. stops what it started.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, ".build"))

from harness import appliance as sample  # noqa: E402
from harness.postgres import PostgresCluster  # noqa: E402

from ansible_collections.sar.backup.plugins.module_utils import archive  # noqa: E402


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def appliance_state(cluster, profile) -> dict:
    """What a restore must bring back: every table's rows and every tree's files."""
    state = {"database %s, table %s" % (profile["database"]["name"], table): rows
             for table, rows in sample.database_snapshot(cluster).items()}
    for category in profile["categories"].values():
        for path in category["paths"]:
            state["files %s" % path] = sample.tree_snapshot(path)
    return state


def main() -> int:
    scratch = tempfile.mkdtemp(prefix="sar-backup-demo-")
    os.chmod(scratch, 0o755)
    cluster = PostgresCluster()
    try:
        say("== building a sample appliance in %s" % scratch)
        cluster.start()
        app_root = os.path.join(scratch, "appliance")
        profile = sample.build_appliance(app_root, cluster)
        say("   database %s on %s:%s, trees under %s" % (profile["database"]["name"], profile["database"]["host"],
                                                         profile["database"]["port"], app_root))

        say("== ansible-playbook playbooks/demo.yml")
        extra = {"demo_root": scratch, "demo_config_dir": os.path.join(scratch, "etc"), "demo_profile": profile}
        varfile = os.path.join(scratch, "demo-vars.json")
        with open(varfile, "w") as handle:
            json.dump(extra, handle)
        os.chmod(varfile, 0o600)
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build"),
                   ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_LOCALHOST_WARNING="false",
                   ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
        proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,",
                               os.path.join(ROOT, "playbooks", "demo.yml"), "-e", "@" + varfile],
                              env=env, cwd=scratch, check=False)
        if proc.returncode != 0:
            say("demo playbook failed (exit %d)" % proc.returncode)
            return 1
        with open(os.path.join(scratch, "run-result.json")) as handle:
            result = json.load(handle)
        arch = result["archive"]
        say("== the archive")
        say("   name    %s" % arch["name"])
        say("   size    %d bytes" % arch["size"])
        say("   sha256  %s" % arch["sha256"])
        say("   on host %s" % arch["path"])
        say("   fetched %s" % result["fetched_path"])
        info = archive.verify(result["fetched_path"])
        say("== members (verified: every SHA-256 recomputed)")
        for member in info["members"]:
            say("   %-9s %12s  %s" % (member["type"], member.get("size", ""), member["name"]))

        say("== restore check: change the appliance, then restore the downloaded archive onto it")
        before = appliance_state(cluster, profile)
        sample.add_rows(cluster, "users", 3)
        sample.add_rows(cluster, "cdr", 10)
        changed_paths = sample.change_files(app_root)
        say("   added 3 users and 10 CDR rows; changed %d files (a new voicemail, edited and new config, "
            "a deleted announcement)" % len(changed_paths))
        ok = appliance_state(cluster, profile) != before
        proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-i", "localhost,",
                               "-c", "local", "-m", "sar.backup.sar_backup_restore",
                               "-a", "config_dir=%s path=%s" % (os.path.join(scratch, "etc"), result["fetched_path"])],
                              env=env, cwd=scratch, check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            say(proc.stdout + proc.stderr)
            say("restore failed (exit %d)" % proc.returncode)
            return 1
        say("   ansible localhost -m sar.backup.sar_backup_restore -a 'path=%s': changed"
            % os.path.basename(result["fetched_path"]))
        after = appliance_state(cluster, profile)
        for key in sorted(before):
            same = after[key] == before[key]
            say("   %-60s %s" % (key, "as archived" if same else "DIFFERS"))
            ok = ok and same
        say("== restore drill: the job's newest archive restored into a scratch database and folder, then checked")
        proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-i", "localhost,",
                               "-c", "local", "-m", "sar.backup.sar_backup_restore",
                               "-a", "config_dir=%s job=demo drill=true" % os.path.join(scratch, "etc")],
                              env=env, cwd=scratch, check=False, capture_output=True, text=True)
        drilled = proc.returncode == 0
        drill = {}
        try:
            with open(os.path.join(scratch, "status", "demo.json"), encoding="utf-8") as handle:
                drill = json.load(handle).get("last_drill") or {}
        except (OSError, ValueError):
            drilled = False
        for table in drill.get("tables") or []:
            say("   table %-28s %6s rows restored, %6s recorded  %s" % (
                table["table"], table["rows"], table["recorded"] if table["recorded"] is not None else "-",
                "ok" if table["ok"] else "FAILED"))
        for tree in drill.get("trees") or []:
            say("   tree  %-28s %6d files, %9d bytes, SHA-256 as archived  %s" % (
                tree["member"], tree["files"], tree["bytes"], "ok" if tree["ok"] else "FAILED"))
        say("   drill %s in %ss (%s)" % (drill.get("code", "not run"), drill.get("seconds"), drill.get("error") or "no problem"))
        if not drilled:
            say(proc.stdout + proc.stderr)
        ok = ok and drilled
        say("== %s" % ("demo OK: verified archive, restored appliance identical to the backup, restore drill passed"
                       if ok else "demo FAILED"))
        return 0 if ok else 1
    finally:
        cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
