#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers

from __future__ import annotations

DOCUMENTATION = r"""
module: sar_backup_restore
short_description: Verify a backup archive and restore it onto a PBX appliance
description:
  - Restores a C(.sar) archive made by M(sar.backup.sar_backup_run) or the C(sar-backup) timers - from a file on the host
    (O(path)) or from one of a saved job's targets (O(job), O(target), O(archive)); archives on remote targets are
    downloaded into the staging directory first.
  - Verifies the whole archive before anything is changed (every layer, every member's SHA-256, no unsafe member). A
    corrupted, truncated or tampered archive is reported as such and nothing is written.
  - Restores the chosen categories (O(data); default every category in the archive) exactly as archived - their
    database tables as they were (rows added later are gone) and their file trees as they were (files added later are
    gone). Other categories are not touched.
  - All or nothing - the file trees are extracted next to where they go, swapped in, then every database dump is restored
    in one transaction; if the database part fails, the previous trees are put back.
  - Takes the maintenance lock, like a backup run, so no backup or archiving runs meanwhile.
  - Check mode verifies the archive and lists what would be restored, checking the database connection, without changing
    anything.
version_added: 0.1.0
author:
  - sar-backup engineers (@sar-backup)
extends_documentation_fragment:
  - sar.backup.common
options:
  path:
    description:
      - A C(.sar) file on the managed host. Mutually exclusive with O(job).
    type: path
  job:
    description:
      - A saved job (M(sar.backup.sar_backup_job)) whose target holds the archive.
    type: str
  target:
    description:
      - With O(job), which of the job's targets to fetch the archive from, by index (V(0) = the first in O(job)'s
        C(targets) list). E-mail targets cannot be read back.
      - Default V(0); with O(drill), the job's C(drill.target) (V(rotate) - the next target after the last drill's).
    type: int
  archive:
    description:
      - With O(job), the archive's name (C(<job>_<host>_<YYYYMMDDTHHMMSSZ>.sar)) or V(latest), the newest one of the job on
        that target.
    type: str
    default: latest
  data:
    description:
      - The categories to restore; each must be in the archive. Default - every category in the archive.
    type: list
    elements: str
    choices: [core, cdr_voicemail, announcements]
  verify_only:
    description:
      - Only verify the archive (and fetch it from the target); restore nothing.
    type: bool
    default: false
  passphrase:
    description:
      - The passphrase of an archive encrypted with a passphrase.
    type: str
  identity:
    description:
      - For an archive encrypted to age recipients, the contents of an age identity file (one or more
        C(AGE-SECRET-KEY-1...) lines).
    type: str
  wait:
    description:
      - How long to wait for the maintenance lock when a backup or the appliance's archiving holds it - seconds or
        C(30s)/C(5m)/C(1h). V(0) fails at once with code C(alreadyRunning).
    type: raw
    default: 0
  trust:
    description:
      - Which archives to accept. V(signed) - only archives signed by this host's own key (C(signing.key) in
        O(config_dir), made on its first backup) or by one of O(trusted_keys). V(any) - also unsigned archives (made
        before archives were signed) and archives signed by other keys; the archive's contents are checked all the
        same.
      - A signature that does not match the archive is refused whatever this says.
    type: str
    choices: [signed, any]
    default: signed
  trusted_keys:
    description:
      - Public keys (C(ed25519:<base64>), the C(public_key) that M(sar.backup.sar_backup_info) returns, or the host's
        C(signing.pub)) of other hosts whose archives this host may restore - e.g. the old appliance's key when
        restoring its backup onto a replacement.
    type: list
    elements: str
  scratch_dir:
    description:
      - Restore into this new or empty directory instead of the places the host's profile gives - file trees as
        C(files/<category>/<index>/), database dumps as C(db/<category>.pgdump) files (not restored into the database).
        Nothing of the appliance is touched. The way to look at an archive whose sources do not match this host's
        profile (another appliance's layout), which is otherwise refused.
      - Must not overlap any profile path.
    type: path
  drill:
    description:
      - A restore drill instead of a restore - the newest archive of O(job) is fetched from a target, verified, and
        restored into isolation (file trees into a scratch folder under the staging directory, database dumps into a
        scratch database created for the drill and dropped afterwards, or - where the profile's user may not create
        databases - into a private temporary PostgreSQL cluster of the server's version, on a unix socket in the staging
        directory, removed afterwards); then every table's row count is compared with
        the count recorded at backup time and every restored file's SHA-256 with the archive's. Nothing of the
        appliance is changed. The result goes to the job's status file (C(last_drill)), the metrics and, on failure, the
        report mail. Not run in check mode.
      - Needs O(job); O(path), O(data), O(scratch_dir) and an O(archive) other than V(latest) do not apply.
    type: bool
    default: false
notes:
  - Where restored data goes is decided by this host's profile (O(config_dir)'s settings), never by the archive - a
    tree goes to the profile path of its category and index, a dump into the profile's database and only into the tables
    its category owns. An archive whose sources do not match the profile is refused (see O(scratch_dir)).
  - The PBX services should be stopped while their data is replaced; this module does not stop or start them (do it in
    the play, as the collection's C(playbooks/restore.yml) does).
  - A file tree is replaced as a whole directory, so a profile path that is itself a mount point is refused.
attributes:
  check_mode:
    support: full
    description: Verifies and lists what would be restored; changes nothing.
  diff_mode:
    support: none
    description: Nothing to diff.
seealso:
  - module: sar.backup.sar_backup_run
  - module: sar.backup.sar_backup_info
"""

EXAMPLES = r"""
- name: Restore the newest archive of job nightly from its first target
  sar.backup.sar_backup_restore:
    job: nightly

- name: Restore only the voicemail and CDR from a given archive on the job's SFTP target (the second one)
  sar.backup.sar_backup_restore:
    job: nightly
    target: 1
    archive: nightly_pbx01_20261201T013000Z.sar
    data: [cdr_voicemail]

- name: Restore the old appliance's newest backup onto its replacement (the old host's signing key)
  sar.backup.sar_backup_restore:
    job: nightly
    trusted_keys:
      - "ed25519:5b2m8y3+6N0asiiIz2+jyPLqJGqi87MWSzlOGCNKNa4="

- name: Look at an archive of another layout without touching the appliance
  sar.backup.sar_backup_restore:
    path: /root/pbx-old_nightly.sar
    trust: any
    scratch_dir: /root/restore-look

- name: Prove that the newest archive of job nightly restores (a drill; the appliance is not changed)
  sar.backup.sar_backup_restore:
    job: nightly
    drill: true

- name: Check an encrypted archive copied to the host, restore nothing
  sar.backup.sar_backup_restore:
    path: /root/nightly_pbx01_20261201T013000Z.sar
    passphrase: "{{ vault_backup_passphrase }}"
    verify_only: true
"""

RETURN = r"""
archive:
  description: The archive that was verified.
  returned: success
  type: dict
  contains:
    name:
      description: File name.
      type: str
    path:
      description: Where it is on the host, or null when it was downloaded to staging (and removed afterwards).
      type: str
    size:
      description: Bytes.
      type: int
    sha256:
      description: SHA-256 of the whole file.
      type: str
    created:
      description: When the backup ran (ISO 8601 with UTC offset), from the manifest.
      type: str
    job:
      description: The job that made it.
      type: str
    host:
      description: The appliance it was made on.
      type: str
    categories:
      description: Every category the archive holds.
      type: list
      elements: str
    signature:
      description: Who signed the archive and why it was accepted.
      type: dict
      contains:
        signed:
          description: Whether the archive carries a (valid) signature.
          type: bool
        trusted:
          description: Whether the signer's key is this host's or one of O(trusted_keys).
          type: bool
        signer:
          description: The signer's public key (C(ed25519:...)), or null.
          type: str
        fingerprint:
          description: The signer key's fingerprint (C(SHA256:...)), or null.
          type: str
        trusted_by:
          description: "How it was accepted - C(this host's key), C(trusted_keys) or C(trust: any)."
          type: str
    from:
      description: With O(job), the target it came from (C(job), C(target), C(type), C(location), C(name)); else null.
      type: dict
verified:
  description: Always true on success - the archive was verified completely.
  returned: success
  type: bool
categories:
  description: The categories restored (or, in check mode, that would be).
  returned: success
  type: list
  elements: str
  sample: [core, cdr_voicemail]
restored:
  description: What was (or would be) put back - one entry per source of the chosen categories.
  returned: success
  type: list
  elements: dict
  contains:
    category:
      description: Data category.
      type: str
    kind:
      description: C(postgresql) (a database dump) or C(files) (a file tree).
      type: str
    origin:
      description: Where it goes - the tree's path on the appliance from the profile (or below O(scratch_dir)), or the
        profile's database (never its password).
      type: str
    archived_origin:
      description: Where the archive says the source came from (information only, never used as a destination).
      type: str
    member:
      description: Where it is in the archive.
      type: str
    size:
      description: Bytes.
      type: int
drill:
  description: With O(drill), the drill record (also in the status file as C(last_drill)) - C(code), C(target),
    C(archive), C(tables) (per table C(rows) restored and C(recorded) at backup time), C(trees) (files and bytes
    checked), C(checks) (totals), C(seconds), C(error), C(isolation) (V(scratch_database) or V(private_cluster)).
  returned: with O(drill)
  type: dict
checks:
  description: With O(drill), the totals checked - C(tables), C(files), C(bytes).
  returned: with O(drill)
  type: dict
scratch_dir:
  description: The scratch directory restored into, or null.
  returned: success
  type: str
code:
  description: On failure, the result code (C(verifyFailed) for a damaged archive, C(sourceFailed) when the database
    restore failed, C(alreadyRunning), C(diskFull), ...).
  returned: failure
  type: str
runtime:
  description: The installed runtime's C(sar-backup) command the module ran through, when the Python Ansible picked
    lacked a library (see the collection's docs/role.md); absent when the module did the work itself.
  returned: when the work was handed to the runtime
  type: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.sar.backup.plugins.module_utils.calls import execute
from ansible_collections.sar.backup.plugins.module_utils.job import CATEGORIES


def describe_missing(exc) -> str:
    return "%s: %s (or install the runtime with the role sar.backup.sar_backup: the module then runs through it)" % (
        exc.needed_for, missing_required_lib(exc.library))


def main():
    spec = {
        "config_dir": {"type": "path"},
        "path": {"type": "path"},
        "job": {"type": "str"},
        "target": {"type": "int"},
        "archive": {"type": "str", "default": "latest"},
        "data": {"type": "list", "elements": "str", "choices": list(CATEGORIES)},
        "verify_only": {"type": "bool", "default": False},
        "passphrase": {"type": "str", "no_log": True},
        "identity": {"type": "str", "no_log": True},
        "wait": {"type": "raw", "default": 0},
        "trust": {"type": "str", "choices": ["signed", "any"], "default": "signed"},
        "trusted_keys": {"type": "list", "elements": "str", "no_log": False},
        "scratch_dir": {"type": "path"},
        "drill": {"type": "bool", "default": False},
    }
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True,
                           mutually_exclusive=[("path", "job"), ("passphrase", "identity")],
                           required_one_of=[("path", "job")])
    execute(module, "sar_backup_restore", describe_missing)


if __name__ == "__main__":
    main()
