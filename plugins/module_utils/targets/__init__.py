# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Storage locations (seed step 3). One module per type; `load` picks the class."""

from __future__ import annotations

import importlib

TARGET_TYPES = ("local", "smb", "sftp", "dropbox", "usb", "email")


def target_class(type_name: str):
    """The Target subclass for a type name (imported lazily: a missing library
    of one target type must not break the others)."""
    if type_name not in TARGET_TYPES:
        raise KeyError(type_name)
    module = importlib.import_module("." + type_name, __name__)
    return module.TARGET
