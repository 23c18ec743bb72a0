# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Storage locations (seed step 3). One module per type; `target_class` picks the class.

Each import is written out (not computed) so Ansible's module packer sees and
ships every target; each target guards its own third-party import, so a
missing library only fails that target type (errors.MissingLibrary)."""

from __future__ import annotations

TARGET_TYPES = ("local", "smb", "sftp", "dropbox", "usb", "email")


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
