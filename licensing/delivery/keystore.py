"""The 3MF Secure Content key store (`/Secure/keystore.xml`): build and parse.

Only what a partvault delivery needs is modelled: consumers, one access right
per consumer, and resource data with AES-256-GCM parameters. Parsing is strict
about the fields it uses and ignores the `##other` extension points.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from typing import Any

from lxml import etree

from licensing.delivery import errors

SC_NS = "http://schemas.microsoft.com/3dmanufacturing/securecontent/2019/04"
XENC_NS = "http://www.w3.org/2001/04/xmlenc#"
AES256_GCM = "http://www.w3.org/2009/xmlenc11#aes256-gcm"
RSA_OAEP = "http://www.w3.org/2009/xmlenc11#rsa-oaep"
RSA_OAEP_MGF1P = "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p"
MGF1_SHA1 = "http://www.w3.org/2009/xmlenc11#mgf1sha1"
MGF1_SHA256 = "http://www.w3.org/2009/xmlenc11#mgf1sha256"
DIGEST_SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"
DIGEST_SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
_NS = {"k": SC_NS, "x": XENC_NS}


@dataclass(frozen=True)
class Consumer:
    """A `<consumer>`: who may open, and (optionally) which key."""

    consumer_id: str
    key_id: str | None


@dataclass(frozen=True)
class AccessRight:
    """One consumer's wrapped content key and its RSA-OAEP parameters."""

    consumer_index: int
    wrapping_algorithm: str
    mgf_algorithm: str | None
    digest_method: str | None
    wrapped_key: bytes


@dataclass(frozen=True)
class ResourceData:
    """One encrypted part and its content-encryption parameters."""

    path: str
    encryption_algorithm: str
    compression: str
    iv: bytes
    tag: bytes
    aad: bytes


@dataclass(frozen=True)
class ResourceDataGroup:
    """Parts sharing one content key, and the rights to unwrap that key."""

    key_uuid: str
    access_rights: tuple[AccessRight, ...]
    resources: tuple[ResourceData, ...]


@dataclass(frozen=True)
class KeyStore:
    """The parsed key store."""

    uuid: str
    consumers: tuple[Consumer, ...]
    groups: tuple[ResourceDataGroup, ...]

    def find_resource(self, path: str) -> tuple[ResourceDataGroup, ResourceData]:
        """The group and resource data for an encrypted part path."""
        for group in self.groups:
            for res in group.resources:
                if res.path == path:
                    return group, res
        raise errors.Malformed(f"the key store has no entry for {path}")


def _sub(parent: Any, name: str, **attrs: str) -> Any:
    return etree.SubElement(parent, f"{{{SC_NS}}}{name}", **attrs)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def build_keystore_xml(
    consumer: Consumer, pem: str, right: AccessRight, resource: ResourceData, package_uuid: str
) -> bytes:
    """Serialise a key store with one consumer, one group and one encrypted part."""
    ks = etree.Element(f"{{{SC_NS}}}keystore", nsmap={None: SC_NS, "xenc": XENC_NS})
    ks.set("UUID", package_uuid)
    cons = _sub(ks, "consumer", consumerid=consumer.consumer_id)
    if consumer.key_id:
        cons.set("keyid", consumer.key_id)
    _sub(cons, "keyvalue").text = pem
    group = _sub(ks, "resourcedatagroup", keyuuid=str(uuid.uuid4()))
    acc = _sub(group, "accessright", consumerindex=str(right.consumer_index))
    kek = {
        "wrappingalgorithm": right.wrapping_algorithm,
        "mgfalgorithm": right.mgf_algorithm,
        "digestmethod": right.digest_method,
    }
    _sub(acc, "kekparams", **{k: v for k, v in kek.items() if v})
    cipher = _sub(acc, "cipherdata")
    etree.SubElement(cipher, f"{{{XENC_NS}}}CipherValue").text = _b64(right.wrapped_key)
    data = _sub(group, "resourcedata", path=resource.path)
    cek = _sub(
        data,
        "cekparams",
        encryptionalgorithm=resource.encryption_algorithm,
        compression=resource.compression,
    )
    for name, value in (("iv", resource.iv), ("tag", resource.tag), ("aad", resource.aad)):
        _sub(cek, name).text = _b64(value)
    return bytes(etree.tostring(ks, xml_declaration=True, encoding="UTF-8"))


def _unb64(text: str | None, what: str) -> bytes:
    try:
        return base64.b64decode((text or "").strip(), validate=False)
    except (binascii.Error, ValueError) as exc:
        raise errors.Malformed(f"{what} is not base64") from exc


def _required(elem: Any, attr: str) -> str:
    value = elem.get(attr)
    if value is None:
        raise errors.Malformed(f"<{etree.QName(elem).localname}> lacks @{attr}")
    return str(value)


def _parse_right(elem: Any) -> AccessRight:
    kek = elem.find("k:kekparams", _NS)
    value = elem.find("k:cipherdata/x:CipherValue", _NS)
    if kek is None or value is None:
        raise errors.Malformed("<accessright> lacks kekparams or cipherdata")
    try:
        index = int(_required(elem, "consumerindex"))
    except ValueError as exc:
        raise errors.Malformed("consumerindex is not an integer") from exc
    return AccessRight(
        consumer_index=index,
        wrapping_algorithm=_required(kek, "wrappingalgorithm"),
        mgf_algorithm=kek.get("mgfalgorithm"),
        digest_method=kek.get("digestmethod"),
        wrapped_key=_unb64(value.text, "CipherValue"),
    )


def _parse_resource(elem: Any) -> ResourceData:
    cek = elem.find("k:cekparams", _NS)
    if cek is None:
        raise errors.Malformed("<resourcedata> lacks cekparams")
    return ResourceData(
        path=_required(elem, "path"),
        encryption_algorithm=_required(cek, "encryptionalgorithm"),
        compression=cek.get("compression", "none"),
        iv=_unb64(cek.findtext("k:iv", None, _NS), "iv"),
        tag=_unb64(cek.findtext("k:tag", None, _NS), "tag"),
        aad=_unb64(cek.findtext("k:aad", None, _NS), "aad"),
    )


def parse_keystore(xml: bytes) -> KeyStore:
    """Parse `/Secure/keystore.xml` (entities and DTDs disabled)."""
    try:
        root = etree.fromstring(xml, parser=_PARSER)
    except etree.XMLSyntaxError as exc:
        raise errors.Malformed(f"the key store does not parse: {exc}") from exc
    if root.tag != f"{{{SC_NS}}}keystore":
        raise errors.Malformed("the key store root is not <keystore>")
    consumers = tuple(
        Consumer(_required(c, "consumerid"), c.get("keyid") or None)
        for c in root.iterfind("k:consumer", _NS)
    )
    groups = tuple(
        ResourceDataGroup(
            key_uuid=str(g.get("keyuuid", "")),
            access_rights=tuple(_parse_right(a) for a in g.iterfind("k:accessright", _NS)),
            resources=tuple(_parse_resource(r) for r in g.iterfind("k:resourcedata", _NS)),
        )
        for g in root.iterfind("k:resourcedatagroup", _NS)
    )
    return KeyStore(uuid=str(root.get("UUID", "")), consumers=consumers, groups=groups)
