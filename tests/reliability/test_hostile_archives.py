# SPDX-License-Identifier: GPL-3.0-or-later
"""Hostile archives (tests/reliability/hostile.py) against every reader: the
engine's `archive.verify`, `sar-backup verify`, `sar-backup restore --yes`
(onto the live appliance and into a scratch directory) and, for a sample in
one playbook run, the `sar_backup_restore` module.

Unsigned cases run with `--trust any` on purpose: the content checks must hold
when the trust gate is open. Each must be refused with a message naming the
member or field and no traceback; nothing outside the scratch tree may change
(the appliance's trees, its database - tables, roles, functions, comments -, a
sentinel directory outside the profile, a canary directory a hostile command
would write to); bombs run in child processes whose peak memory (VmHWM) must
stay under 100 MB; every reader finishes within a generous bound."""

from __future__ import annotations

import json
import os
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import hostile
from conftest import CASE_SECONDS, CHILD_SECONDS, MEMORY_LIMIT, SOAK, _remove

from harness import appliance as sample
from harness.playbook import run_playbook

CASES = hostile.cases()
# Drills in the bounded suite: every hostile dump (a drill restores dumps into a scratch database on the
# live server) and the first case of each class; every case under SAR_SOAK.
DRILL_SAMPLE = {c.ident for c in CASES if c.cls == "dumps" and not c.heavy}
DRILL_SAMPLE |= {next(c.ident for c in CASES if c.cls == cls and not c.heavy) for cls in hostile.CLASSES
                 if any(c.cls == cls and not c.heavy for c in CASES)}


def _file_name(case) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", case.ident)[:150] + ".sar"


FIGURES = os.environ.get("SAR_RELIABILITY_FIGURES")  # a file: one JSON line per reader run (docs/reliability.md)


def _judge(case, who: str, run, must_refuse: bool, problems: list) -> None:
    if FIGURES:
        with open(FIGURES, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"case": case.ident, "class": case.cls, "reader": who, "rc": run.rc,
                                     "seconds": round(run.seconds, 3), "vmhwm": run.vmhwm, "timed_out": run.timed_out,
                                     "traceback": run.traceback, "said": run.brief()}) + "\n")
    bound = CHILD_SECONDS if run.child else CASE_SECONDS
    if run.timed_out or run.seconds > bound:
        how = "interrupted" if run.timed_out else "finished"
        problems.append("%s: %s after %.0f s (bound %d s)" % (who, how, run.seconds, bound))
        if run.timed_out:
            return
    if run.traceback:
        last = [ln for ln in run.text.splitlines() if ln.strip()]
        problems.append("%s: Python traceback (%s)" % (who, last[-1][:200] if last else "?"))
        return
    if run.child and (run.vmhwm is None or run.vmhwm < 0 or run.vmhwm >= MEMORY_LIMIT):
        problems.append("%s: peak memory %s (limit %d MB)" % (
            who, "unknown" if run.vmhwm is None else "%.0f MB" % (run.vmhwm / 2 ** 20), MEMORY_LIMIT >> 20))
    if not must_refuse:
        return
    if run.rc == 0:
        problems.append("%s: ACCEPTED (%s)" % (who, run.brief()))
        return
    text = run.text.lower()
    if case.expect and not any(token.lower() in text for token in case.expect):
        problems.append("%s: refused without naming %s: %s" % (who, " or ".join(repr(t) for t in case.expect[:4]),
                                                               run.brief()))


def _trust_args(case) -> list:
    return [] if case.signed else ["--trust", "any"]


@pytest.mark.parametrize("case", CASES, ids=[c.ident for c in CASES])
def test_hostile_archive_is_refused(case, live, tmp_path):
    path = hostile.build(case, live.ctx, str(tmp_path / _file_name(case)))
    trust = _trust_args(case)
    problems = []
    if case.heavy:
        # Bombs: each reader in its own child, memory measured; together (two cores), bounded in time.
        started = {"archive.verify": live.start_child("engine", path),
                   "sar-backup verify": live.start_child("cli", "verify", path, *trust),
                   "sar-backup restore": live.start_child("cli", "restore", path, "--yes", *trust)}
        runs = {who: live.finish_child(s) for who, s in started.items()}
        _judge(case, "archive.verify", runs["archive.verify"], case.engine, problems)
        _judge(case, "sar-backup verify", runs["sar-backup verify"], True, problems)
        _judge(case, "sar-backup restore", runs["sar-backup restore"], True, problems)
        problems += live.check_unchanged("sar-backup restore")
        if SOAK:
            live.place_for_drill(path)
            run = live.finish_child(live.start_child("cli", "drill", "drill", *trust))
            _judge(case, "sar-backup drill", run, True, problems)
            problems += live.check_unchanged("sar-backup drill", ignore=("status/",))
    else:
        _judge(case, "archive.verify", live.engine(path), case.engine, problems)
        _judge(case, "sar-backup verify", live.cli("verify", path, *trust), True, problems)
        _judge(case, "sar-backup restore", live.cli("restore", path, "--yes", *trust), True, problems)
        problems += live.check_unchanged("sar-backup restore")
        scratch = os.path.join(live.scratch_root, "restore")
        run = live.cli("restore", path, "--yes", *trust, "--scratch-dir", scratch)
        _judge(case, "sar-backup restore --scratch-dir", run, not case.scratch_ok, problems)
        problems += live.check_unchanged("sar-backup restore --scratch-dir")
        _remove(scratch)
        if SOAK or case.ident in DRILL_SAMPLE:
            # A drill restores into a scratch folder and a scratch database on the live server: what only
            # the profile mapping refuses may pass, a hostile dump may not.
            run = live.drill(path, *trust)
            _judge(case, "sar-backup drill", run, not case.scratch_ok or case.cls == "dumps", problems)
            problems += live.check_unchanged("sar-backup drill", ignore=("status/",))
    assert not problems, "%s (%s):\n  %s" % (case.ident, case.cls, "\n  ".join(problems))


# -- the valid archive the cases start from, and the trust gate ------------------------------------

def test_the_valid_base_archive_is_accepted_and_restores_the_same_data(live, tmp_path):
    """The generator is faithful: its unmodified archive verifies and restores (trust any) to the same
    trees and rows, so every case's refusal is due to what the case changed."""
    path = hostile.build_valid(live.ctx, str(tmp_path / "valid.sar"))
    problems = []
    for who, run in (("archive.verify", live.engine(path)),
                     ("sar-backup verify --trust any", live.cli("verify", path, "--trust", "any")),
                     ("sar-backup restore --trust any", live.cli("restore", path, "--yes", "--trust", "any"))):
        if run.rc != 0 or run.traceback:
            problems.append("%s: %s" % (who, run.brief()))
    changed = live.content_changes()
    live.reset()
    run = live.drill(path, "--trust", "any")  # and a drill of it passes (so a drill's refusals mean something)
    if run.rc != 0 or run.traceback:
        problems.append("sar-backup drill --trust any: %s" % run.brief())
    problems += live.check_unchanged("sar-backup drill", ignore=("status/",))
    assert not problems and not changed, (problems, changed[:10])


def test_unsigned_and_foreign_archives_need_trust(live, tmp_path):
    """An unsigned archive and one signed by another host's key are intact (archive.verify accepts them)
    but refused without `--trust any` or the signer's key; accepted with them. The host's own signature
    needs nothing."""
    unsigned = hostile.build_valid(live.ctx, str(tmp_path / "unsigned.sar"))
    foreign = hostile.build_valid(live.ctx, str(tmp_path / "foreign.sar"), sign_key=live.foreign_key)
    foreign_pub = hostile.public_key_text(live.foreign_key)
    other_pub = hostile.public_key_text(Ed25519PrivateKey.generate())
    problems = []

    def expect(who, run, ok):
        if run.traceback:
            problems.append("%s: traceback: %s" % (who, run.brief()))
        elif ok and run.rc != 0:
            problems.append("%s: refused: %s" % (who, run.brief()))
        elif not ok and run.rc == 0:
            problems.append("%s: ACCEPTED" % who)
        elif not ok and not re.search(r"sign|trust", run.text, re.I):
            problems.append("%s: refused without saying why (signature/trust): %s" % (who, run.brief()))

    for name, path in (("unsigned", unsigned), ("foreign", foreign)):
        expect("archive.verify %s" % name, live.engine(path), True)
        expect("verify %s" % name, live.cli("verify", path), False)
        expect("verify %s --trusted-key <another key>" % name, live.cli("verify", path, "--trusted-key", other_pub), False)
        expect("verify %s --trust any" % name, live.cli("verify", path, "--trust", "any"), True)
        expect("restore %s" % name, live.cli("restore", path, "--yes"), False)
        problems.extend(live.check_unchanged("restore %s without trust" % name))
    expect("verify unsigned --trusted-key <foreign>", live.cli("verify", unsigned, "--trusted-key", foreign_pub), False)
    expect("verify foreign --trusted-key <foreign>", live.cli("verify", foreign, "--trusted-key", foreign_pub), True)
    expect("restore foreign --trusted-key <foreign>", live.cli("restore", foreign, "--yes", "--trusted-key", foreign_pub),
           True)
    problems.extend("restore foreign --trusted-key: %s" % c for c in live.content_changes())
    live.reset()
    expect("restore unsigned --trust any", live.cli("restore", unsigned, "--yes", "--trust", "any"), True)
    live.reset()
    if live.host_key is not None:
        own = hostile.build_valid(live.ctx, str(tmp_path / "own.sar"), sign_key=live.host_key)
        expect("verify signed by the host's own key", live.cli("verify", own), True)
    else:
        problems.append("the host has no signing key (signing.load_or_create missing)")
    assert not problems, "\n".join(problems)


def test_a_dump_holding_another_categorys_table_is_refused_and_cdr_stays(live, tmp_path):
    """A real pg_dump -Fc -Z0 of a scratch database holding public.cdr, as member db/core.pgdump of an
    archive that otherwise matches the profile: refused, the live cdr table unchanged."""
    case = next(c for c in CASES if c.ident == "dumps-other_category_table")
    path = hostile.build(case, live.ctx, str(tmp_path / "cdr-in-core.sar"))
    cdr_before = sample.table_rows(live.cluster, "cdr", db="pbx_live")
    run = live.cli("restore", path, "--yes", "--trust", "any")
    cdr_after = sample.table_rows(live.cluster, "cdr", db="pbx_live")
    changes = live.check_unchanged("restore")
    assert not run.traceback and run.rc != 0, run.text
    assert cdr_after == cdr_before, "the live cdr table changed"
    assert not changes, changes
    assert "cdr" in run.text, "the refusal does not name the table: %s" % run.brief()


# -- the module, one playbook run for a sample ----------------------------------------------------

def _module_sample() -> list:
    """The first case of each class (bombs aside, but one decompression bomb)."""
    picked, seen = [], set()
    for case in CASES:
        if case.cls in seen or case.cls == "combined" or case.heavy:
            continue
        seen.add(case.cls)
        picked.append(case)
    picked.append(next(c for c in CASES if c.name == "zero_tail"))
    return picked


def test_module_refuses_a_sample_and_honours_trust(live, tmp_path):
    sample_cases = _module_sample()
    tasks = []
    for case in sample_cases:
        args = {"path": hostile.build(case, live.ctx, str(tmp_path / _file_name(case))),
                "config_dir": live.config_dir}
        if not case.signed:
            args["trust"] = "any"
        tasks.append({"name": "hostile " + case.ident, "sar.backup.sar_backup_restore": args, "ignore_errors": True})
    unsigned = hostile.build_valid(live.ctx, str(tmp_path / "unsigned.sar"))
    foreign = hostile.build_valid(live.ctx, str(tmp_path / "foreign.sar"), sign_key=live.foreign_key)
    trust_tasks = {
        "unsigned without trust": ({"path": unsigned}, False),
        "unsigned with trust any": ({"path": unsigned, "trust": "any"}, True),
        "foreign without trust": ({"path": foreign}, False),
        "foreign with its key": ({"path": foreign, "trusted_keys": [hostile.public_key_text(live.foreign_key)]}, True),
    }
    for name, (args, _ok) in trust_tasks.items():
        tasks.append({"name": "trust " + name, "ignore_errors": True,
                      "sar.backup.sar_backup_restore": dict(args, config_dir=live.config_dir, verify_only=True)})
    run = run_playbook(tasks, str(tmp_path))
    results = run.results()
    problems = []
    for case in sample_cases:
        res = results.get("hostile " + case.ident)
        text = json.dumps(res, default=str) if res is not None else ""
        if res is None:
            problems.append("%s: no result (playbook rc %s): %s" % (case.ident, run.rc, run.stderr[-500:]))
        elif "Traceback (most recent call last)" in text or res.get("module_stderr"):
            problems.append("%s: module traceback: %s" % (case.ident, (res.get("module_stderr") or res.get("msg"))[:300]))
        elif not res.get("failed"):
            problems.append("%s: ACCEPTED by the module" % case.ident)
        elif case.expect and not any(t.lower() in str(res.get("msg", "")).lower() for t in case.expect):
            problems.append("%s: refused without naming %s: %s" % (case.ident, case.expect[:3], str(res.get("msg"))[:300]))
    for name, (_args, ok) in trust_tasks.items():
        res = results.get("trust " + name) or {}
        if bool(res.get("failed")) == ok:
            problems.append("trust %s: %s (%s)" % (name, "refused" if ok else "ACCEPTED", str(res.get("msg"))[:200]))
    problems += live.check_unchanged("the module")
    assert not problems, "\n".join(problems)
