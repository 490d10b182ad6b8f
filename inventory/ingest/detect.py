"""Recognise a design's format from its bytes; the filename is only a hint.

Content decides. A filename extension naming a different format family is
refused (`format-mismatch`, 415) so that a file cannot be one thing to
partvault and another to the bureau's software that trusts the extension.
"""

from __future__ import annotations

import enum
import os
import re
from pathlib import Path
from typing import NoReturn

from inventory.errors import PayloadTooLarge, UnsupportedMediaType

from ._refuse import refuse
from .limits import IngestLimits

STL_HEADER_BYTES = 84
STL_RECORD_BYTES = 50
_SNIFF_BYTES = 4096
_ZIP_MAGIC = b"PK\x03\x04"
_OBJ_KEYWORDS = frozenset(b"v vt vn vp f l p o g s usemtl mtllib cstype deg curv surf".split())


class DesignFormat(enum.StrEnum):
    """The formats partvault stores; `stl` covers binary and ASCII."""

    STL = "stl"
    THREEMF = "3mf"
    OBJ = "obj"


_EXTENSIONS = {".stl": DesignFormat.STL, ".3mf": DesignFormat.THREEMF, ".obj": DesignFormat.OBJ}


def extension_format(filename: str | None) -> DesignFormat | None:
    """The format an upload's filename claims, or None when it claims none we know."""
    if not filename:
        return None
    return _EXTENSIONS.get(os.path.splitext(filename)[1].lower())


def binary_stl_count(path: Path, size: int) -> int | None:
    """Triangle count of a binary STL whose length is exactly 84 + 50 x count, else None."""
    if size < STL_HEADER_BYTES:
        return None
    with path.open("rb") as f:
        f.seek(80)
        count = int.from_bytes(f.read(4), "little")
    return count if STL_HEADER_BYTES + STL_RECORD_BYTES * count == size else None


def _is_text(head: bytes) -> bool:
    """True when the sniffed bytes look like ASCII/UTF-8 text (no NUL, decodable)."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start > len(head) - 4  # a multi-byte character cut by the sniff window
    return True


def _first_keyword(head: bytes) -> bytes:
    """First token of the first line that is neither blank nor a comment."""
    for line in head.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith(b"#"):
            return stripped.split()[0].lower()
    return b""


def _sniff_text(head: bytes) -> DesignFormat | None:
    body = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if re.match(rb"(?i)solid\b", body):
        return DesignFormat.STL
    if _first_keyword(body) in _OBJ_KEYWORDS:
        return DesignFormat.OBJ
    return None


def sniff(path: Path, size: int) -> tuple[DesignFormat | None, bool]:
    """(format by content, is_binary_stl); the format is None when unrecognised."""
    with path.open("rb") as f:
        head = f.read(_SNIFF_BYTES)
    if head.startswith(_ZIP_MAGIC):
        return DesignFormat.THREEMF, False
    if binary_stl_count(path, size) is not None:
        return DesignFormat.STL, True
    if _is_text(head):
        return _sniff_text(head), False
    return None, False


def check_size(size: int, limits: IngestLimits) -> None:
    """Refuse empty uploads and uploads over the byte limit."""
    if size == 0:
        refuse("empty-file", "the uploaded file is empty")
    if size > limits.max_bytes:
        raise PayloadTooLarge(
            f"the design is {size} bytes; the limit is {limits.max_bytes} bytes",
            code="design-too-large",
        )


def detect_format(
    path: Path, filename: str | None, limits: IngestLimits
) -> tuple[DesignFormat, bool]:
    """(format, is_binary_stl) of the upload at `path`, or a refusal.

    A binary file that is named `.stl` or starts with "solid" but whose length is
    not 84 + 50 x its triangle count is refused as `stl-length-mismatch`: this
    catches truncated or padded binary STLs, including those whose 80-byte
    header begins with "solid".
    """
    size = path.stat().st_size
    check_size(size, limits)
    found, is_binary = sniff(path, size)
    claimed = extension_format(filename)
    if found is None:
        _refuse_unrecognised(path, size, claimed)
    if claimed is not None and claimed is not found:
        raise UnsupportedMediaType(
            f"the file is named .{claimed.value} but its content is {found.value.upper()}",
            code="format-mismatch",
        )
    return found, is_binary


def _refuse_unrecognised(path: Path, size: int, claimed: DesignFormat | None) -> NoReturn:
    with path.open("rb") as f:
        head = f.read(_SNIFF_BYTES)
    looks_stl = claimed is DesignFormat.STL or head.lower().startswith(b"solid")
    if looks_stl and _is_text(head):
        refuse("stl-ascii-syntax", "line 1: an ASCII STL must start with 'solid'")
    if looks_stl:
        refuse(
            "stl-length-mismatch",
            f"binary STL is {size} bytes but its header implies {_expected_len(head)} "
            "bytes (84 + 50 x triangle count); the file is truncated or padded",
        )
    raise UnsupportedMediaType(
        "the file is not a binary or ASCII STL, a 3MF package or an OBJ file",
        code="unknown-format",
    )


def _expected_len(head: bytes) -> str:
    if len(head) < STL_HEADER_BYTES:
        return "at least 84"
    count = int.from_bytes(head[80:84], "little")
    return str(STL_HEADER_BYTES + STL_RECORD_BYTES * count)
