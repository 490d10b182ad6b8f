"""Delivery of a bureau's design copy as a 3MF Secure Content package.

Server side: `mesh_to_model_xml` then `write_secure_3mf`. Bureau side:
`open_secure_3mf` / `open_delivery`. See docs/delivery.md.
"""

from licensing.delivery.bureau import (
    FacilityKeyPaths,
    OpenResult,
    generate_facility_keys,
    load_ed25519_private_key,
    load_rsa_private_key,
    open_delivery,
)
from licensing.delivery.model3mf import (
    extract_mesh,
    extract_metadata,
    mesh_to_model_xml,
    write_atomically,
    write_binary_stl,
    write_plain_3mf,
)
from licensing.delivery.securecontent import OpenedDesign, open_secure_3mf, write_secure_3mf
from licensing.tokens.thumbprint import key_thumbprint

__all__ = [
    "FacilityKeyPaths",
    "OpenResult",
    "OpenedDesign",
    "extract_mesh",
    "extract_metadata",
    "generate_facility_keys",
    "key_thumbprint",
    "load_ed25519_private_key",
    "load_rsa_private_key",
    "mesh_to_model_xml",
    "open_delivery",
    "open_secure_3mf",
    "write_atomically",
    "write_binary_stl",
    "write_plain_3mf",
    "write_secure_3mf",
]
