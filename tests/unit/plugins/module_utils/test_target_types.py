# SPDX-License-Identifier: GPL-3.0-or-later
"""Each target type is described once (targets/types.py): the job schema, the checkmk tags, the
module argument spec and the role's meta/argument_specs.yml all follow that one table."""

from __future__ import annotations

import os

import pytest
import yaml

from ansible_collections.sar.backup.plugins.module_utils import job as jobmod, report
from ansible_collections.sar.backup.plugins.module_utils.errors import ValidationError
from ansible_collections.sar.backup.plugins.module_utils.targets import TARGET_TYPES, target_class, types

COLLECTION = os.path.abspath(os.path.join(os.path.dirname(jobmod.__file__), "..", ".."))


def test_every_type_has_a_class_options_and_a_tag():
    assert TARGET_TYPES == tuple(types.TYPES) == ("local", "smb", "sftp", "dropbox", "usb", "email")
    for name, ttype in types.TYPES.items():
        assert ttype.tag.startswith("[") and ttype.tag.endswith("]")
        assert jobmod.TARGET_OPTIONS[name] is ttype.options
        assert not set(ttype.options) & set(types.COMMON_OPTIONS), name
    assert types.tag("local") == "[HDD]" and types.tag("nfs") == "[NFS]" and types.tag(None) == "[]"


@pytest.mark.parametrize("name", ["local", "email"])
def test_a_type_resolves_to_its_class(name):
    assert target_class(name).TYPE == name


def test_checkmk_section_takes_the_tag_from_the_table():
    status = {"started_epoch_ms": 1000, "targets": [{"type": t, "location": "x", "code": "successful"}
                                                    for t in types.TYPES]}
    lines = report.checkmk_section({"nightly": status}).splitlines()[1:]
    assert [ln.split("x ")[0] for ln in lines] == [t.tag for t in types.TYPES.values()]


def test_rules_come_from_the_table():
    with pytest.raises(ValidationError, match=r"targets\[0\]\.uuid.*either label or uuid"):
        jobmod.validate_target({"type": "usb", "label": "A", "uuid": "B"}, 0)
    with pytest.raises(ValidationError, match=r"targets\[2\]\.to\[1\].*not an e-mail address"):
        jobmod.validate_target({"type": "email", "to": ["a@b.example", "nope"]}, 2)
    with pytest.raises(ValidationError, match=r"targets\[0\]\.path.*is not an option of email targets"):
        jobmod.validate_target({"type": "email", "to": ["a@b.example"], "path": "/x"}, 0)


def _role_job_options() -> dict:
    with open(os.path.join(COLLECTION, "roles", "sar_backup", "meta", "argument_specs.yml"), encoding="utf-8") as handle:
        specs = yaml.safe_load(handle)
    return specs["argument_specs"]["main"]["options"]["sar_backup_jobs"]["options"]


def _differences(role: dict, module: dict, where: str) -> list:
    out = []
    if sorted(role) != sorted(module):
        out.append("%s: role has %s, job schema has %s" % (where, sorted(role), sorted(module)))
    for key in sorted(set(role) & set(module)):
        mine, spec = role[key], module[key]
        for attr in ("type", "choices", "elements", "default"):
            if mine.get(attr) != spec.get(attr):
                out.append("%s.%s.%s: role %r, job schema %r" % (where, key, attr, mine.get(attr), spec.get(attr)))
        for attr in ("no_log", "required"):
            if bool(mine.get(attr)) != bool(spec.get(attr)):
                out.append("%s.%s.%s: role %r, job schema %r" % (where, key, attr, mine.get(attr), spec.get(attr)))
        if "options" in spec or "options" in mine:
            out.extend(_differences(mine.get("options") or {}, spec.get("options") or {}, where + "." + key))
    return out


def test_role_argument_specs_follow_the_job_schema():
    """The role's hand-written argument spec of sar_backup_jobs (with its descriptions) has exactly the
    options of the job schema, targets and sub-options included, each with the same type, choices,
    elements, default, no_log and required as the modules' spec (job.argument_spec)."""
    assert _differences(_role_job_options(), jobmod.argument_spec(), "sar_backup_jobs") == []
