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
