# SPDX-License-Identifier: GPL-3.0-or-later
"""The `definition` fragment of sar_backup_run is a generated copy of the job
options (tools/gen-doc-fragments.py); it must say exactly what they say."""

from __future__ import annotations

import re

import yaml

from ansible_collections.sar.backup.plugins.doc_fragments.job import ModuleDocFragment
from ansible_collections.sar.backup.plugins.module_utils.job import argument_spec


def _unnest(value):
    if isinstance(value, dict):
        return {k: _unnest(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unnest(v) for v in value]
    if isinstance(value, str):
        return re.sub(r"O\(definition\.", "O(", value)
    return value


def test_definition_is_the_job_options_nested():
    options = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]
    nested = yaml.safe_load(ModuleDocFragment.DEFINITION)["options"]["definition"]["suboptions"]
    assert _unnest(nested) == options, "run tools/gen-doc-fragments.py"


def test_documented_options_match_the_argument_spec():
    options = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]
    spec = argument_spec()
    assert sorted(options) == sorted(spec)
    assert sorted(options["targets"]["suboptions"]) == sorted(spec["targets"]["options"])
