"""Errors a user can act on: one line that names the object and the fix."""

from __future__ import annotations


class TenantPipelinesError(Exception):
    """A failure with a one-line, user-facing message. The CLI prints it without a traceback."""

    exit_code = 1


class InvalidInput(TenantPipelinesError):
    """The caller passed something malformed (a bad UUID, a hostile name)."""

    exit_code = 2


class UnknownTenant(TenantPipelinesError):
    exit_code = 2


class DatabaseUnreachable(TenantPipelinesError):
    exit_code = 3


class MigrationError(TenantPipelinesError):
    exit_code = 4


class BackupInvalid(TenantPipelinesError):
    """A backup that must not be read: incomplete, damaged, altered, or another tenant's."""

    exit_code = 5


class BackupKeyMissing(TenantPipelinesError):
    """Encryption is required (or the backup is encrypted) and no usable key is configured."""

    exit_code = 6
