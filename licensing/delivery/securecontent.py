"""3MF Secure Content packages: write a copy for one facility, open it with its key.

Layout (see docs/delivery.md): a plain root model `/3D/3dmodel.model` whose
build item points (Production `p:path`) at the encrypted non-root model
`/3D/design.model`. That part is a 3MF cipher file (``%3McF`` header, then
AES-256-GCM ciphertext); its IV, tag and AAD live in `/Secure/keystore.xml`
with the content key wrapped RSA-OAEP (MGF1-SHA256, SHA-256) to the facility's
RSA key. Attachments are stored in clear and bound to the model through the
GCM additional authenticated data, so editing them makes opening fail.
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from lxml import etree

from licensing.delivery import errors
from licensing.delivery.keystore import (
    AES256_GCM,
    DIGEST_SHA1,
    DIGEST_SHA256,
    MGF1_SHA1,
    MGF1_SHA256,
    RSA_OAEP,
    RSA_OAEP_MGF1P,
    SC_NS,
    AccessRight,
    Consumer,
    KeyStore,
    ResourceData,
    build_keystore_xml,
    parse_keystore,
)
from licensing.delivery.model3mf import (
    CORE_NS,
    PROD_NS,
    REL_3DMODEL,
    content_types_xml,
    relationships_xml,
)
from licensing.tokens.thumbprint import key_thumbprint

KEYSTORE_PATH = "/Secure/keystore.xml"
KEYSTORE_CONTENT_TYPE = "application/vnd.ms-package.3dmanufacturing-keystore+xml"
REL_KEYSTORE = "http://schemas.microsoft.com/3dmanufacturing/2019/04/keystore"
REL_MUSTPRESERVE = "http://schemas.openxmlformats.org/package/2006/relationships/mustpreserve"
REL_ENCRYPTED = "http://schemas.openxmlformats.org/package/2006/relationships/encryptedfile"
REL_ATTACHMENT = "http://schemas.partvault.dev/delivery/2026/attachment"
ROOT_MODEL_PATH = "/3D/3dmodel.model"
DESIGN_PATH = "/3D/design.model"
OPC_RELS_NS = "http://schemas.openxmlformats.org/package/2006/relationships"

CIPHER_MAGIC = b"%3McF"
CIPHER_HEADER = CIPHER_MAGIC + b"\x00\x00\x00" + struct.pack("<I", 12)
AAD_PREFIX = b"partvault-delivery-v1:"
CHUNK = 1 << 20
DEFAULT_MAX_MODEL_BYTES = 2 << 30

_MGF: dict[str, type[hashes.SHA1 | hashes.SHA256]] = {
    MGF1_SHA1: hashes.SHA1,
    MGF1_SHA256: hashes.SHA256,
}
_DIGEST: dict[str, type[hashes.SHA1 | hashes.SHA256]] = {
    DIGEST_SHA1: hashes.SHA1,
    DIGEST_SHA256: hashes.SHA256,
}
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


@dataclass(frozen=True)
class OpenedDesign:
    """A decrypted delivery: model XML, clear attachments and key store facts."""

    model_xml: bytes
    attachments: dict[str, bytes]
    consumer_id: str
    key_id: str | None
    package_uuid: str


# --------------------------------------------------------------------------- writing


def attachments_aad(attachments: Mapping[str, bytes]) -> bytes:
    """AAD binding the attachments: prefix ‖ SHA-256 over sorted (path, SHA-256(data))."""
    h = hashlib.sha256()
    for path in sorted(attachments):
        h.update(path.encode() + b"\0" + hashlib.sha256(attachments[path]).digest())
    return AAD_PREFIX + h.digest()


def _root_model_xml() -> bytes:
    """Plain root model: one build item referencing object 1 of the encrypted part."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<model xmlns="{CORE_NS}" xmlns:p="{PROD_NS}" xmlns:sc="{SC_NS}" '
        'unit="millimeter" xml:lang="en-US" requiredextensions="p sc">\n'
        f'<resources/>\n<build p:UUID="{uuid.uuid4()}">'
        f'<item objectid="1" p:path="{DESIGN_PATH}" p:UUID="{uuid.uuid4()}"/></build>\n'
        "</model>\n"
    ).encode()


def _encrypt_part(dest: IO[bytes], model_xml: bytes, cek: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """Stream the cipher file (header + AES-256-GCM ciphertext) into `dest`; return IV, tag."""
    iv = os.urandom(12)
    enc = Cipher(algorithms.AES(cek), modes.GCM(iv)).encryptor()
    enc.authenticate_additional_data(aad)
    dest.write(CIPHER_HEADER)
    view = memoryview(model_xml)
    for i in range(0, len(view), CHUNK):
        dest.write(enc.update(view[i : i + CHUNK]))
    dest.write(enc.finalize())
    return iv, enc.tag


def _opc_parts(attachments: Mapping[str, bytes]) -> dict[str, bytes]:
    """Content types, relationships and the root model of the package."""
    root_rels = [
        (REL_3DMODEL, ROOT_MODEL_PATH),
        (REL_KEYSTORE, KEYSTORE_PATH),
        (REL_MUSTPRESERVE, KEYSTORE_PATH),
        *((REL_ATTACHMENT, p) for p in sorted(attachments)),
    ]
    overrides = {KEYSTORE_PATH: KEYSTORE_CONTENT_TYPE} | {
        p: "application/json" if p.endswith(".json") else "application/octet-stream"
        for p in sorted(attachments)
    }
    return {
        "[Content_Types].xml": content_types_xml(overrides),
        "_rels/.rels": relationships_xml(root_rels),
        ROOT_MODEL_PATH[1:]: _root_model_xml(),
        "3D/_rels/3dmodel.model.rels": relationships_xml(
            [(REL_3DMODEL, DESIGN_PATH), (REL_ENCRYPTED, DESIGN_PATH)]
        ),
    }


def _check_attachment_paths(attachments: Mapping[str, bytes]) -> None:
    """Attachments live under /Metadata/ and never shadow a structural part."""
    for path in attachments:
        if not path.startswith("/Metadata/") or ".." in path or path.endswith("/"):
            raise errors.Malformed(f"attachment path must be under /Metadata/: {path!r}")


def _public_pem(key: rsa.RSAPublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def write_secure_3mf(
    out: BinaryIO,
    model_xml: bytes,
    *,
    consumer_id: str,
    key_id: str,
    rsa_public_key: rsa.RSAPublicKey,
    attachments: Mapping[str, bytes] | None = None,
    package_uuid: str | None = None,
) -> None:
    """Write a 3MF Secure Content package whose model only `consumer_id` can open.

    `model_xml` is a non-root model (``mesh_to_model_xml(..., root=False)``)
    whose mesh object has id 1. A fresh 32-byte AES-256-GCM content key
    encrypts it; the key is wrapped RSA-OAEP (MGF1-SHA256, SHA-256) to
    `rsa_public_key`; `key_id` should be that key's RFC 7638 thumbprint.
    Attachments (paths under /Metadata/) are stored in clear and bound by the
    GCM AAD. The part is not compressed (``compression="none"``): lib3mf 2.5
    fails to read larger deflated encrypted parts (docs/delivery.md). Output is
    streamed to `out`.
    """
    if not isinstance(rsa_public_key, rsa.RSAPublicKey) or rsa_public_key.key_size < 2048:
        raise errors.Unsupported("the consumer key must be an RSA public key of >= 2048 bits")
    clear = dict(attachments or {})
    _check_attachment_paths(clear)
    cek, aad = os.urandom(32), attachments_aad(clear)
    wrapped = rsa_public_key.encrypt(cek, _oaep(MGF1_SHA256, DIGEST_SHA256))
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in _opc_parts(clear).items():
            zf.writestr(name, data)
        info = zipfile.ZipInfo(DESIGN_PATH[1:], date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED  # ciphertext does not compress
        with zf.open(info, "w", force_zip64=True) as dest:
            iv, tag = _encrypt_part(dest, model_xml, cek, aad)
        right = AccessRight(0, RSA_OAEP, MGF1_SHA256, DIGEST_SHA256, wrapped)
        resource = ResourceData(DESIGN_PATH, AES256_GCM, "none", iv, tag, aad)
        zf.writestr(
            KEYSTORE_PATH[1:],
            build_keystore_xml(
                Consumer(consumer_id, key_id),
                _public_pem(rsa_public_key),
                right,
                resource,
                package_uuid or str(uuid.uuid4()),
            ),
        )
        for path, data in sorted(clear.items()):
            zf.writestr(path[1:], data)


# --------------------------------------------------------------------------- opening


def _oaep(mgf_uri: str | None, digest_uri: str | None) -> padding.OAEP:
    """OAEP padding for the spec's URIs; absent values default to SHA-1."""
    mgf = _MGF.get(mgf_uri or MGF1_SHA1)
    digest = _DIGEST.get(digest_uri or DIGEST_SHA1)
    if mgf is None or digest is None:
        raise errors.Unsupported(f"unsupported OAEP parameters {mgf_uri!r}, {digest_uri!r}")
    return padding.OAEP(mgf=padding.MGF1(mgf()), algorithm=digest(), label=None)


def _kek_padding(right: AccessRight) -> padding.OAEP:
    """Padding for an access right: rsa-oaep-mgf1p (SHA-1) or rsa-oaep with params."""
    if right.wrapping_algorithm == RSA_OAEP_MGF1P:
        return _oaep(MGF1_SHA1, right.digest_method)
    if right.wrapping_algorithm == RSA_OAEP:
        return _oaep(right.mgf_algorithm, right.digest_method)
    raise errors.Unsupported(f"unsupported key wrapping {right.wrapping_algorithm!r}")


def _select_consumer(
    store: KeyStore, private_key: rsa.RSAPrivateKey, consumer_id: str | None
) -> tuple[int, Consumer]:
    """Pick our consumer by id, else by key id = thumbprint of our key."""
    thumb = key_thumbprint(private_key.public_key())
    for index, consumer in enumerate(store.consumers):
        if consumer_id is not None and consumer.consumer_id == consumer_id:
            if consumer.key_id not in (None, thumb):
                raise errors.WrongKey(
                    f"this package is wrapped to key {consumer.key_id}, not to {thumb}"
                )
            return index, consumer
        if consumer_id is None and consumer.key_id == thumb:
            return index, consumer
    who = f"consumer {consumer_id!r}" if consumer_id else f"key {thumb}"
    raise errors.NotForThisConsumer(f"this package was not made for {who}")


def _unwrap(
    store: KeyStore, path: str, private_key: rsa.RSAPrivateKey, consumer_id: str | None
) -> tuple[bytes, ResourceData, Consumer]:
    """Find our access right for `path` and RSA-OAEP-unwrap the content key."""
    group, resource = store.find_resource(path)
    index, consumer = _select_consumer(store, private_key, consumer_id)
    right = next((r for r in group.access_rights if r.consumer_index == index), None)
    if right is None:
        raise errors.NotForThisConsumer(f"no access right for {consumer.consumer_id!r}")
    try:
        cek = private_key.decrypt(right.wrapped_key, _kek_padding(right))
    except ValueError as exc:
        cls = errors.KeyUnwrapFailed if consumer.key_id else errors.WrongKey
        raise cls("the content key does not unwrap with this private key") from exc
    if len(cek) != 32:
        raise errors.Malformed("the unwrapped content key is not 32 bytes")
    return cek, resource, consumer


def _skip_cipher_header(src: IO[bytes], path: str) -> None:
    """Check and consume the %3McF cipher-file header of an encrypted part."""
    head = src.read(12)
    if len(head) < 12:
        raise errors.Truncated(f"{path} ends inside its cipher-file header")
    if head[:5] != CIPHER_MAGIC or head[7] != 0:
        raise errors.Malformed(f"{path} is not a 3MF cipher file")
    if head[5:7] != b"\x00\x00":
        raise errors.Unsupported(f"cipher-file version {head[5]}.{head[6]} of {path}")
    extra = struct.unpack("<I", head[8:12])[0] - 12
    if extra < 0 or len(src.read(extra)) != extra:
        raise errors.Truncated(f"{path} has a bad cipher-file header length")


def _verify_tag(dec: Any, path: str) -> None:
    try:
        dec.finalize()
    except InvalidTag as exc:
        raise errors.TagMismatch(f"{path} fails AES-GCM authentication") from exc


def _check_params(res: ResourceData) -> None:
    if res.encryption_algorithm != AES256_GCM:
        raise errors.Unsupported(f"content encryption {res.encryption_algorithm!r}")
    if res.compression not in ("none", "deflate"):
        raise errors.Unsupported(f"compression {res.compression!r}")
    if len(res.iv) != 12 or len(res.tag) != 16:
        raise errors.Malformed("the key store IV or tag has the wrong length")


def _decrypt_part(zf: zipfile.ZipFile, cek: bytes, res: ResourceData, max_bytes: int) -> bytes:
    """Stream-decrypt (and inflate) an encrypted part; verify the GCM tag.

    A deflate error is reported only after the tag was checked, so an edited
    ciphertext is a tag mismatch whatever the compression.
    """
    _check_params(res)
    dec = Cipher(algorithms.AES(cek), modes.GCM(res.iv, res.tag)).decryptor()
    dec.authenticate_additional_data(res.aad)
    inflate = zlib.decompressobj(-15) if res.compression == "deflate" else None
    out = bytearray()
    try:
        src = zf.open(res.path.lstrip("/"))
    except KeyError as exc:
        raise errors.Malformed(f"the encrypted part {res.path} is missing") from exc
    with src:
        _skip_cipher_header(src, res.path)
        try:
            while chunk := src.read(CHUNK):
                plain = dec.update(chunk)
                out += inflate.decompress(plain, max_bytes + 1 - len(out)) if inflate else plain
                if len(out) > max_bytes:
                    raise errors.TooLarge(f"{res.path} expands beyond {max_bytes} bytes")
        except zlib.error as exc:
            while chunk := src.read(CHUNK):
                dec.update(chunk)
            _verify_tag(dec, res.path)
            raise errors.Malformed(f"{res.path} holds an invalid deflate stream") from exc
    _verify_tag(dec, res.path)
    if inflate is not None and not inflate.eof:
        raise errors.Truncated(f"the deflate stream of {res.path} ends early")
    return bytes(out)


def _root_targets(zf: zipfile.ZipFile) -> dict[str, str]:
    """Relationship type -> target of the package's root `_rels/.rels`."""
    rels = etree.fromstring(_read(zf, "/_rels/.rels"), parser=_PARSER)
    return {
        str(r.get("Type")): str(r.get("Target"))
        for r in rels.iterfind(f"{{{OPC_RELS_NS}}}Relationship")
    }


def _design_path(zf: zipfile.ZipFile, root_model: str) -> str:
    """The model part the root build item points to (Production `p:path`)."""
    root = etree.fromstring(_read(zf, root_model), parser=_PARSER)
    item = root.find(f"{{{CORE_NS}}}build/{{{CORE_NS}}}item")
    path = None if item is None else item.get(f"{{{PROD_NS}}}path")
    if path is None:
        raise errors.Malformed("the root model has no build item with a p:path")
    return str(path)


def _read(zf: zipfile.ZipFile, path: str, limit: int = 64 << 20) -> bytes:
    """Read a small clear part (keystore, root model, attachment) with a size cap."""
    try:
        info = zf.getinfo(path.lstrip("/"))
    except KeyError as exc:
        raise errors.Malformed(f"the package lacks {path}") from exc
    if info.file_size > limit:
        raise errors.TooLarge(f"{path} is larger than {limit} bytes")
    return zf.read(info)


def _attachments(zf: zipfile.ZipFile) -> dict[str, bytes]:
    """Clear parts under /Metadata/."""
    return {
        "/" + name: _read(zf, name)
        for name in zf.namelist()
        if name.startswith("Metadata/") and not name.endswith("/")
    }


def _check_aad(res: ResourceData, attachments: Mapping[str, bytes]) -> None:
    """A partvault AAD must match the attachments actually in the package."""
    if res.aad.startswith(AAD_PREFIX) and res.aad != attachments_aad(attachments):
        raise errors.AttachmentMismatch("an attachment was added, removed or edited")


def _open_zip(
    zf: zipfile.ZipFile, private_key: rsa.RSAPrivateKey, consumer_id: str | None, max_bytes: int
) -> OpenedDesign:
    targets = _root_targets(zf)
    if REL_KEYSTORE not in targets or REL_3DMODEL not in targets:
        raise errors.Malformed("the root relationships name no key store or no 3D model")
    store = parse_keystore(_read(zf, targets[REL_KEYSTORE]))
    path = _design_path(zf, targets[REL_3DMODEL])
    cek, res, consumer = _unwrap(store, path, private_key, consumer_id)
    model_xml = _decrypt_part(zf, cek, res, max_bytes)
    clear = _attachments(zf)
    _check_aad(res, clear)
    return OpenedDesign(model_xml, clear, consumer.consumer_id, consumer.key_id, store.uuid)


def open_secure_3mf(
    source: str | os.PathLike[str] | BinaryIO,
    rsa_private_key: rsa.RSAPrivateKey,
    *,
    consumer_id: str | None = None,
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
) -> OpenedDesign:
    """Open a Secure Content package with a facility's RSA private key.

    The consumer is chosen by `consumer_id` when given, else by key id equal
    to the key's RFC 7638 thumbprint. Raises a `DeliveryError` subclass:
    `NotForThisConsumer`, `WrongKey`, `KeyUnwrapFailed`, `TagMismatch`,
    `Truncated`, `Corrupt`, `Malformed`, `Unsupported`, `AttachmentMismatch`,
    `TooLarge`.
    """
    src = Path(source) if isinstance(source, str | os.PathLike) else source
    try:
        with zipfile.ZipFile(src) as zf:
            return _open_zip(zf, rsa_private_key, consumer_id, max_model_bytes)
    except zipfile.BadZipFile as exc:
        if "CRC" in str(exc):
            raise errors.Corrupt(f"the package is damaged: {exc}") from exc
        raise errors.Truncated(f"the package is not a complete ZIP: {exc}") from exc
    except (EOFError, zlib.error) as exc:
        raise errors.Truncated(f"a part of the package ends early: {exc}") from exc
    except etree.XMLSyntaxError as exc:
        raise errors.Malformed(f"a package part does not parse: {exc}") from exc
