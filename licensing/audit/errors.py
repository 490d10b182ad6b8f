"""The audit log's error family: every failure names the broken rule in `code`."""

from __future__ import annotations

from inventory.errors import Invalid, PartvaultError


class AuditEventInvalid(Invalid):
    """An event cannot be recorded: its type, actor, ids or facts break a rule."""

    title = "Audit event invalid"


class AuditRangeError(Invalid):
    """A proof or listing asks for an index or size the log cannot answer."""

    title = "Audit range invalid"


class AuditVerificationError(Invalid):
    """A proof, checkpoint, verifier key or log copy failed verification."""

    title = "Audit verification failed"


class AuditStorageError(PartvaultError):
    """The stored tree lacks a node it must have: the database is damaged (500)."""

    title = "Audit storage inconsistent"
