"""The audit log: signed checkpoints, the verifier key, proofs and entries.

Proofs, checkpoints and the key are for any authenticated caller; entry
contents for the operator (everything) and brands (their own entries in full,
everyone else's as index and leaf hash only). See docs/audit.md.
"""

from __future__ import annotations

from typing import Annotated

from litestar import MediaType, get
from litestar.params import QueryParameter

from api.audit_schemas import (
    AuditEntriesOut,
    AuditEntryOut,
    AuditKeyOut,
    CheckpointOut,
    CheckpointsOut,
    ConsistencyProofOut,
    InclusionProofOut,
    b64,
)
from api.auth import Auth, Svc
from inventory.accounts import TokenKind
from licensing import audit
from licensing.audit.log import MAX_ENTRIES_PAGE
from licensing.audit.signer import current_log_signer, current_public_key, log_key_id

Size = Annotated[int | None, QueryParameter(ge=0, description="tree size (default: current)")]
Index = Annotated[int, QueryParameter(ge=0)]
MAX_PAGE = MAX_ENTRIES_PAGE
_NO_BRAND = "\x00"


@get(
    "/v1/audit/checkpoint",
    sync_to_thread=True,
    media_type=MediaType.TEXT,
    tags=["audit"],
)
def get_checkpoint(caller: Auth, services: Svc) -> str:
    """The latest signed checkpoint (a C2SP signed note), signed now if the log grew."""
    with services.transaction() as session:
        signer = current_log_signer(session, services.keyring)
        return audit.latest_checkpoint(session, signer, services.audit_origin).signed_note


@get("/v1/audit/key", sync_to_thread=True, tags=["audit"])
def get_log_key(caller: Auth, services: Svc) -> AuditKeyOut:
    """The origin and the verifier key string to pin (fetch it once, out of band ideally)."""
    origin = services.audit_origin
    with services.transaction() as session:
        public = current_public_key(session)
    return AuditKeyOut(
        origin=origin,
        verifier_key=audit.verifier_key_string(origin, public),
        key_id=log_key_id(public),
    )


@get("/v1/audit/checkpoints", sync_to_thread=True, tags=["audit"])
def list_checkpoints(
    caller: Auth,
    services: Svc,
    since_size: Annotated[int, QueryParameter(ge=0)] = 0,
) -> CheckpointsOut:
    """Every stored checkpoint of this origin with size ≥ ``since_size``, oldest first."""
    origin = services.audit_origin
    with services.transaction() as session:
        rows = audit.checkpoints(session, origin, since_size)
    return CheckpointsOut(origin=origin, items=[CheckpointOut.of(r) for r in rows])


@get("/v1/audit/proof/inclusion", sync_to_thread=True, tags=["audit"])
def inclusion_proof(
    caller: Auth, services: Svc, index: Index, size: Size = None
) -> InclusionProofOut:
    """The audit path of leaf ``index`` in the tree of ``size`` leaves."""
    with services.transaction() as session:
        tree_size = audit.log_size(session) if size is None else size
        proof = audit.inclusion_proof(session, index, tree_size)
        # the leaf hash only: an impossible reader brand redacts every body
        found = audit.entries(session, index, 1, brand_id=_NO_BRAND)
    if not found:
        raise audit.AuditStorageError(f"entry {index} is missing", code="audit-entry-missing")
    return InclusionProofOut(
        index=index,
        size=tree_size,
        leaf_hash=b64(found[0].leaf_hash),
        proof=[b64(p) for p in proof],
    )


@get("/v1/audit/proof/consistency", sync_to_thread=True, tags=["audit"])
def consistency_proof(
    caller: Auth,
    services: Svc,
    old_size: Annotated[int, QueryParameter(ge=0)],
    new_size: Size = None,
) -> ConsistencyProofOut:
    """Proof that the tree of ``old_size`` leaves is a prefix of the tree of ``new_size``."""
    with services.transaction() as session:
        size = audit.log_size(session) if new_size is None else new_size
        if old_size > size:
            raise audit.AuditRangeError(
                f"old_size {old_size} exceeds new_size {size}", code="proof-size-out-of-range"
            )
        proof = audit.consistency_proof(session, old_size, size)
    return ConsistencyProofOut(old_size=old_size, new_size=size, proof=[b64(p) for p in proof])


@get("/v1/audit/entries", sync_to_thread=True, tags=["audit"])
def list_entries(
    reader: Auth,
    services: Svc,
    start: Annotated[int, QueryParameter(ge=0)] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = MAX_PAGE,
) -> AuditEntriesOut:
    """Entries ``[start, start+limit)``: a brand reads its own, the operator everything."""
    brand_id = None if reader.kind == TokenKind.operator else reader.brand_id
    with services.transaction() as session:
        size = audit.log_size(session)
        views = audit.entries(session, start, limit, brand_id=brand_id)
    items = [AuditEntryOut.of(v) for v in views]
    # by the head size, not the rows found: a missing row must show as a gap, not an end
    next_start = start + limit if start + limit < size else None
    return AuditEntriesOut(items=items, next_start=next_start, size=size)


ROUTES = [
    get_checkpoint,
    get_log_key,
    list_checkpoints,
    inclusion_proof,
    consistency_proof,
    list_entries,
]
