# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Exceptions of the engine. Each carries a result code (SPEC section 7)."""

from __future__ import annotations

# Result codes of the appliance's own vocabulary, plus ours where it has none.
SUCCESSFUL = "successful"
MOUNTFAIL = "mountfail"
AUTH_FAILED = "authFailed"
SFTP_RIGHT_PROBLEM = "sftpRightProblem"
CONNECT_FAILED = "connectFailed"
HOST_KEY_UNKNOWN = "hostKeyUnknown"
HOST_KEY_MISMATCH = "hostKeyMismatch"
MAIL_TOO_BIG = "mailtobig"
MAIL_FAILED = "mailFailed"
DISK_FULL = "diskFull"
SOURCE_FAILED = "sourceFailed"
VERIFY_FAILED = "verifyFailed"
ALREADY_RUNNING = "alreadyRunning"
DEFERRED = "deferred"
# Ours: no word for these in the appliance's vocabulary.
INVALID = "invalidConfig"
MISSING_LIBRARY = "missingLibrary"
FAILED = "failed"
NOT_DUE = "notDue"
HOOK_FAILED = "hookFailed"

CODES = (
    SUCCESSFUL, MOUNTFAIL, AUTH_FAILED, SFTP_RIGHT_PROBLEM, CONNECT_FAILED,
    HOST_KEY_UNKNOWN, HOST_KEY_MISMATCH, MAIL_TOO_BIG, MAIL_FAILED, DISK_FULL,
    SOURCE_FAILED, VERIFY_FAILED, ALREADY_RUNNING, DEFERRED, INVALID,
    MISSING_LIBRARY, FAILED, NOT_DUE, HOOK_FAILED,
)


class SarError(Exception):
    """Base error: a message a user can act on, and a result code."""

    code = FAILED

    def __init__(self, msg: str, code: str | None = None):
        super().__init__(msg)
        self.msg = msg
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.msg


class ValidationError(SarError):
    """Bad input. `field` names the offending option (dotted path)."""

    code = INVALID

    def __init__(self, field: str, problem: str):
        super().__init__("%s: %s" % (field, problem))
        self.field = field
        self.problem = problem


class SourceError(SarError):
    """A source could not be read or dumped; the run fails for every target."""

    code = SOURCE_FAILED


class ArchiveError(SarError):
    """A .sar archive is corrupted, truncated, unsafe or cannot be decrypted."""

    code = VERIFY_FAILED


class LockBusy(SarError):
    """The maintenance lock is held by another process."""

    code = ALREADY_RUNNING


class TargetError(SarError):
    """A target failed; `code` says how (mountfail, authFailed, ...)."""

    def __init__(self, msg: str, code: str = FAILED, transient: bool = False):
        super().__init__(msg, code)
        self.transient = transient


class MissingLibrary(SarError):
    """A Python library a target (or compression/encryption) needs is absent."""

    code = MISSING_LIBRARY

    def __init__(self, library: str, needed_for: str):
        super().__init__(
            "Failed to import the required Python library (%s), needed for %s." % (library, needed_for)
        )
        self.library = library
        self.needed_for = needed_for


class TrustError(ArchiveError):
    """An intact archive that nothing proves this host may trust (unsigned, or signed by an unknown key)."""


class DecryptKeyError(ArchiveError):
    """An encrypted archive, and no passphrase or identity that opens it: not damage."""
