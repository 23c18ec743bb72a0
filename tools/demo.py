# SPDX-License-Identifier: GPL-3.0-or-later
"""`make demo`: a real backup of a sample appliance, then its restore check.

1. builds a sample STARFACE-like appliance in a scratch directory: a throwaway
   PostgreSQL cluster with a small schema and data, config, voicemail and
   announcement trees (tests/harness/appliance.py);
2. runs playbooks/demo.yml on localhost: settings, a daily job with a local
   target, a run now with the download to the "controller";
3. prints the archive's name, size, SHA-256 and member list, verifies it, and
   restores it into a scratch database and directory to compare with the sources;
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

from ansible_collections.sar.backup.plugins.module_utils import archive, sources  # noqa: E402


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


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

        say("== restore check: the archive restored into a scratch database and directory")
        out = os.path.join(scratch, "restore")
        os.makedirs(out)
        archive.extract(result["fetched_path"], out)
        ok = True
        for src in info["manifest"]["sources"]:
            if src["kind"] == "postgresql":
                db = "demo_restore_%s" % src["category"]
                cluster.create_database(db, owner=profile["database"]["user"])
                prof = json.loads(json.dumps(profile))
                prof["database"]["name"] = db
                sources.restore_dump(os.path.join(out, src["member"]), prof)
                tables = {"core": sample.CORE_TABLES, "cdr_voicemail": sample.CDR_TABLES}[src["category"]]
                same = all(sample.table_rows(cluster, t, db=db) == sample.table_rows(cluster, t) for t in tables)
                rows = sum(len(sample.table_rows(cluster, t, db=db)) for t in tables)
                verdict = "identical" if same else "DIFFER"
                say("   %-14s database: %d tables, %d rows %s" % (src["category"], len(tables), rows, verdict))
            else:
                same = sample.tree_snapshot(src["origin"]) == sample.tree_snapshot(os.path.join(out, src["member"]))
                verdict = "identical" if same else "DIFFER"
                say("   %-14s files:    %s (%d files) %s" % (src["category"], src["origin"], src.get("files") or 0, verdict))
            ok = ok and same
        say("== %s" % ("demo OK: verified archive, restore identical to the sources" if ok else "demo FAILED"))
        return 0 if ok else 1
    finally:
        cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
