"""The tamper-evident audit log: an RFC 9162 Merkle tree with signed checkpoints.

Public API (see docs/audit.md):

- record: `AuditEvent`, `append_event`, `append_events` → `AuditReceipt`;
  `record_event` (queued inside `queued_appends`, for group commits), `log_event`
- serve: `latest_checkpoint`, `checkpoints`, `inclusion_proof`,
  `consistency_proof`, `entries`, `log_size`, `tree_root`
- verify offline: `verify_log`, `parse_and_verify_checkpoint`, `read_checkpoint`,
  `verify_inclusion`, `verify_consistency`, `verifier_key_string`
"""

from licensing.audit.checkpoint import (
    Checkpoint,
    NoteSigner,
    parse_and_verify_checkpoint,
    read_checkpoint,
    sign_checkpoint,
    verifier_key_string,
)
from licensing.audit.errors import (
    AuditEventInvalid,
    AuditRangeError,
    AuditStorageError,
    AuditVerificationError,
)
from licensing.audit.events import AuditEvent, EventType, encode_event
from licensing.audit.log import (
    AuditReceipt,
    EntryView,
    SignedCheckpoint,
    append_event,
    append_events,
    checkpoints,
    consistency_proof,
    entries,
    inclusion_proof,
    latest_checkpoint,
    log_event,
    log_size,
    queued_appends,
    record_event,
    tree_root,
)
from licensing.audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from licensing.audit.models import AuditCheckpoint, AuditEntry, AuditHead, AuditNode
from licensing.audit.verify import VerifyReport, verify_log

__all__ = [
    "AuditCheckpoint",
    "AuditEntry",
    "AuditEvent",
    "AuditEventInvalid",
    "AuditHead",
    "AuditNode",
    "AuditRangeError",
    "AuditReceipt",
    "AuditStorageError",
    "AuditVerificationError",
    "Checkpoint",
    "EntryView",
    "EventType",
    "NoteSigner",
    "SignedCheckpoint",
    "VerifyReport",
    "append_event",
    "append_events",
    "checkpoints",
    "consistency_proof",
    "encode_event",
    "entries",
    "inclusion_proof",
    "latest_checkpoint",
    "leaf_hash",
    "log_event",
    "log_size",
    "parse_and_verify_checkpoint",
    "queued_appends",
    "read_checkpoint",
    "record_event",
    "sign_checkpoint",
    "tree_root",
    "verifier_key_string",
    "verify_consistency",
    "verify_inclusion",
    "verify_log",
]
