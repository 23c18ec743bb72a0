# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Storage locations (seed step 3). One module per type; `target_class` picks the class.

Each import is written out (not computed) so Ansible's module packer sees and
ships every target; each target guards its own third-party import, so a
missing library only fails that target type (errors.MissingLibrary)."""

from __future__ import annotations

from .types import TYPES

TARGET_TYPES = tuple(TYPES)  # options, rules and tags of each: types.py


def target_class(type_name: str):
    """The Target subclass for a type name."""
    if type_name == "local":
        from . import local as module
    elif type_name == "smb":
        from . import smb as module
    elif type_name == "sftp":
        from . import sftp as module
    elif type_name == "dropbox":
        from . import dropbox as module
    elif type_name == "usb":
        from . import usb as module
    elif type_name == "email":
        from . import email as module
    else:
        raise KeyError(type_name)
    return module.TARGET


def job_target(job: dict, index: int, config_dir: str, settings: dict, host: str, log=None, check_mode: bool = False):
    """Target number `index` of a (validated) job, ready to connect: what the
    runner, `sar_backup_info` (archives on a target) and restore (download) use."""
    from .base import TargetContext
    from ..errors import ValidationError
    targets = job.get("targets") or []
    if not 0 <= index < len(targets):
        raise ValidationError("target", "job %r has %d target(s); target must be 0..%d, got %r"
                              % (job.get("name"), len(targets), len(targets) - 1, index))
    options = targets[index]
    ctx = TargetContext(job=job["name"], host=host, config_dir=config_dir, settings=settings, log=log,
                        check_mode=check_mode)
    return target_class(options["type"])(options, ctx)
