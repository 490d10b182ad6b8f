"""XML parsing with every dangerous feature off.

Entities are never resolved, no DTD is loaded, nothing is fetched from the
network, and a document that carries a DTD at all (internal subset or external
reference, the vehicle of "billion laughs" and XXE) is refused outright.
Encodings are checked before parsing: 3MF and OPC allow UTF-8 and UTF-16 only.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn

from lxml import etree

from ._refuse import refuse

SAFE_OPTIONS: dict[str, Any] = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "dtd_validation": False,
    "huge_tree": False,
    "remove_comments": True,
    "remove_pis": True,
}
_DECLARED = re.compile(rb"""^<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_UTF32_BOMS = (b"\x00\x00\xfe\xff", b"\xff\xfe\x00\x00")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_UTF16_NO_BOM = (b"<\x00?\x00", b"\x00<\x00?")


def check_encoding(head: bytes, part: str) -> str:
    """'utf-8' or 'utf-16' for an XML part, from its BOM and declaration; else `3mf-encoding`."""
    if head.startswith(_UTF32_BOMS):
        _bad_encoding(part, "UTF-32")
    if head.startswith(_UTF16_BOMS) or head.startswith(_UTF16_NO_BOM):
        declared = _declared(_utf16_prefix(head))
        if declared not in (None, "utf-16", "utf-16le", "utf-16be"):
            _bad_encoding(part, declared or "")
        return "utf-16"
    body = head.removeprefix(b"\xef\xbb\xbf")
    if not body.lstrip(b" \t\r\n").startswith(b"<"):
        _bad_encoding(part, "unrecognised bytes")
    declared = _declared(body)
    if declared not in (None, "utf-8"):
        _bad_encoding(part, declared or "")
    return "utf-8"


def _utf16_prefix(head: bytes) -> bytes:
    codec = "utf-16-be" if head.startswith((b"\xfe\xff", b"\x00<")) else "utf-16-le"
    text = head[: len(head) // 2 * 2].decode(codec, "replace").lstrip("\ufeff")
    return text.encode("ascii", "replace")


def _declared(body: bytes) -> str | None:
    match = _DECLARED.match(body)
    return match.group(1).decode("ascii").lower() if match else None


def _bad_encoding(part: str, found: str) -> NoReturn:
    refuse(
        "3mf-encoding",
        f"XML part {part!r} is encoded as {found}; 3MF requires UTF-8 or UTF-16",
    )


def check_no_dtd(element: Any, part: str) -> None:
    """Refuse a document with any DTD (internal subset, external id or doctype)."""
    info = element.getroottree().docinfo
    if info.internalDTD is not None or info.doctype or info.system_url or info.public_id:
        refuse(
            "xml-dtd-forbidden",
            f"XML part {part!r} declares a DTD; DTDs and entity declarations are not allowed",
        )


def parse_small(data: bytes, part: str) -> Any:
    """Parse a small, already size-checked XML part into an element tree root."""
    check_encoding(data[:512], part)
    parser = etree.XMLParser(**SAFE_OPTIONS)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        refuse("xml-malformed", f"XML part {part!r} is not well-formed: {exc.msg}")
    check_no_dtd(root, part)
    return root


def local_name(tag: Any) -> str:
    """The local part of a `{namespace}name` tag ('' for comments and the like)."""
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def namespace(tag: str) -> str:
    return etree.QName(tag).namespace or ""
