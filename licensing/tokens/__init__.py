"""Token cryptography: licences, proofs of possession, signing keys, JWKS, CRL.

See docs/licences.md for the formats and the verification rules.
"""

from licensing.tokens.dpop import access_token_hash, make_proof, verify_proof
from licensing.tokens.licence import LicenceClaims, issue_licence, verify_licence
from licensing.tokens.offline import keys_from_jwks, verify_offline
from licensing.tokens.presentation import verify_presentation
from licensing.tokens.replay import DbReplayGuard, DpopReplay, prune_replay_cache, remember
from licensing.tokens.revocation import (
    Revocation,
    RevocationList,
    sign_revocation_list,
    verify_revocation_list,
)
from licensing.tokens.signer import Ed25519Signer, Signer
from licensing.tokens.signing import (
    LicenceSigningKey,
    current_signer,
    ensure_signing_key,
    jwks,
    published_key,
    rotate_signing_key,
)
from licensing.tokens.thumbprint import jwk_thumbprint, key_thumbprint, public_jwk

__all__ = [
    "DbReplayGuard",
    "DpopReplay",
    "Ed25519Signer",
    "LicenceClaims",
    "LicenceSigningKey",
    "Revocation",
    "RevocationList",
    "Signer",
    "access_token_hash",
    "current_signer",
    "ensure_signing_key",
    "issue_licence",
    "jwk_thumbprint",
    "jwks",
    "key_thumbprint",
    "keys_from_jwks",
    "make_proof",
    "prune_replay_cache",
    "public_jwk",
    "published_key",
    "remember",
    "rotate_signing_key",
    "sign_revocation_list",
    "verify_licence",
    "verify_offline",
    "verify_presentation",
    "verify_proof",
    "verify_revocation_list",
]
