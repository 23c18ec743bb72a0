# SPDX-License-Identifier: GPL-3.0-or-later
"""pytest setup for tests with real servers: the engine of this working tree is
importable as ansible_collections.sar.backup (a symlink farm in tmp, nothing
copied) and tests/harness as `harness`."""

from __future__ import annotations

import os
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)

from harness.playbook import collections_path  # noqa: E402  pylint: disable=wrong-import-position

sys.path.insert(0, collections_path())

import contextlib  # noqa: E402
import copy  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402


# `make integration` hands whole files to two pytest-xdist workers in collection order (-n 2 --dist loadfile
# --no-loadscope-reorder). The few files that take minutes (a fleet rollout, the README's role install from
# PyPI, a floor-Python venv, many playbook runs) go first: handed out last, one of them would keep one worker
# busy alone at the end. The other files, and the tests within every file, keep their order.
LONG_FILES = ("test_fleet.py", "test_runtime_floor.py", "test_readme_lab_line.py", "test_info.py", "test_modules.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # a stable sort


class Appliance:
    """The sample appliance (tests/harness/appliance.py) plus the few helpers the
    module tests need to compare an archive with its sources."""

    def __init__(self, root: str, cluster, profile: dict):
        self.root = root
        self.cluster = cluster
        self.profile = profile

    def profile_for(self, db: str) -> dict:
        prof = copy.deepcopy(self.profile)
        prof["database"]["name"] = db
        return prof

    def create_database(self, db: str) -> None:
        self.cluster.create_database(db, owner=self.profile["database"]["user"])

    def restore_dump(self, path: str, db: str, category: str | None = None) -> None:
        """Restore a dump (checked as its category's: by default the one its name says, db/<category>.pgdump)."""
        from ansible_collections.sar.backup.plugins.module_utils import sources
        category = category or os.path.basename(path)[:-len(".pgdump")]
        sources.restore_dump(path, category, self.profile_for(db))

    def tables_of(self, category: str) -> tuple:
        from harness import appliance
        return {"core": appliance.CORE_TABLES, "cdr_voicemail": appliance.CDR_TABLES}.get(category, ())

    def table_rows(self, table: str, db: str | None = None) -> list:
        from harness import appliance
        return appliance.table_rows(self.cluster, table, db=db or appliance.DATABASE)


@pytest.fixture(scope="session")
def appliance():
    """One PostgreSQL cluster and sample appliance for the whole session (read-only
    for the tests that use it)."""
    from harness import appliance as sample
    from harness.postgres import PostgresCluster
    root = tempfile.mkdtemp(prefix="sar-appliance-")
    os.chmod(root, 0o755)
    cluster = PostgresCluster().start()
    try:
        profile = sample.build_appliance(os.path.join(root, "appliance"), cluster)
        yield Appliance(os.path.join(root, "appliance"), cluster, profile)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


# -- folders outside pytest's tmp tree ------------------------------------------------------------
# pytest's tmp_path is root-only and long: /tmp/pytest-of-root is 0700, and under pytest-xdist
# (make integration runs `-n 2`) each worker's tree adds another 0700 level, .../pytest-N/popen-gwN/.
# A test whose server runs as another user (PostgreSQL as `postgres`) and must reach a folder, or that
# needs a short path (a unix socket below it), takes one of these instead: mkdtemp under /tmp, removed
# after the test.
@contextlib.contextmanager
def _outside_tmp(mode: int):
    path = tempfile.mkdtemp(prefix="sar-t-")
    os.chmod(path, mode)
    try:
        yield pathlib.Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def reachable_tmp():
    """A fresh folder every user can search (0755; the path above it, /tmp, too)."""
    with _outside_tmp(0o755) as path:
        yield path


@pytest.fixture
def closed_tmp():
    """A fresh root-only folder (0700, like pytest's own tmp) with a short path."""
    with _outside_tmp(0o700) as path:
        yield path
