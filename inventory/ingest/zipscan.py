"""Hardened reading of a ZIP container (the outer layer of a 3MF package).

Every entry is decompressed once, in chunks, and the limits are enforced on the
bytes actually produced: entry count, total decompressed size, per-entry
compression ratio, no archive nested inside, no encryption, only the STORED and
DEFLATE methods OPC allows, and every entry name a safe OPC part name.
"""

from __future__ import annotations

import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ._refuse import refuse
from .limits import IngestLimits

_CHUNK = 64 * 1024
_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
_ARCHIVE_MAGICS = (
    (b"PK\x03\x04", "ZIP"),
    (b"PK\x05\x06", "ZIP"),
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip"),
    (b"Rar!\x1a\x07", "RAR"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
_DRIVE = re.compile(r"^[A-Za-z]:")
_ESCAPES = re.compile(r"%(2[eEfF]|5[cC]|00)")


@dataclass
class ScannedPackage:
    """What the scan learned: part name → zip name and measured size, small XML parts."""

    zip_names: dict[str, str] = field(default_factory=dict)
    """Case-folded OPC part name ("/3d/3dmodel.model") → name inside the zip."""
    sizes: dict[str, int] = field(default_factory=dict)
    """Case-folded part name → decompressed size measured while streaming."""
    package_xml: dict[str, bytes] = field(default_factory=dict)
    """Case-folded part name → bytes of `[Content_Types].xml` and every `.rels` part."""

    def has(self, part: str) -> bool:
        return part.casefold() in self.zip_names


def _entry_count(path: Path) -> int:
    """Entry count from the end-of-central-directory record, before zipfile builds its index."""
    with path.open("rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - (65535 + 22 + 20)))
        tail = f.read()
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < 22:
        refuse("zip-invalid", "the 3MF package is not a readable ZIP archive")
    count = struct.unpack_from("<H", tail, at + 10)[0]
    locator = at - 20
    if count == 0xFFFF and locator >= 0 and tail[locator : locator + 4] == _ZIP64_LOCATOR:
        return _zip64_count(path, struct.unpack_from("<Q", tail, locator + 8)[0])
    return int(count)


def _zip64_count(path: Path, offset: int) -> int:
    with path.open("rb") as f:
        f.seek(offset)
        record = f.read(56)
    if len(record) < 56 or not record.startswith(_ZIP64_EOCD):
        refuse("zip-invalid", "the 3MF package has a damaged ZIP64 directory")
    return int(struct.unpack_from("<Q", record, 32)[0])


def check_part_name(name: str) -> str:
    """The OPC part name ("/a/b") for a zip entry name, or `opc-bad-part-name`."""
    bad = (
        not name
        or name.startswith("/")
        or "\\" in name
        or _DRIVE.match(name)
        or _ESCAPES.search(name)
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)
    )
    segments = name.rstrip("/").split("/")
    if bad or any(s in ("", ".", "..") or s.endswith(".") for s in segments):
        refuse(
            "opc-bad-part-name",
            f"package entry {name[:200]!r} is not a valid part name: no '..', '.', empty "
            "segments, backslashes, drive letters, absolute paths or escapes are allowed",
        )
    return "/" + name


def scan_package(path: Path, limits: IngestLimits) -> ScannedPackage:
    """Validate the container and measure every entry by decompressing it."""
    count = _entry_count(path)
    if count > limits.max_zip_entries:
        refuse(
            "zip-too-many-entries",
            f"the 3MF package has {count} entries; the limit is {limits.max_zip_entries}",
        )
    scan = ScannedPackage()
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > limits.max_zip_entries:
                refuse("zip-too-many-entries", f"the 3MF package has {len(infos)} entries")
            total = 0
            for info in infos:
                total += _scan_entry(zf, info, scan, limits, total)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, ValueError) as exc:
        refuse("zip-invalid", f"the 3MF package is not a readable ZIP archive ({exc})")
    return scan


def _check_entry_header(info: zipfile.ZipInfo) -> None:
    if info.flag_bits & 0x1:
        refuse("zip-encrypted", f"package entry {info.filename!r} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        refuse(
            "zip-unsupported-compression",
            f"package entry {info.filename!r} uses compression method "
            f"{info.compress_type}; 3MF allows only stored and deflate",
        )


def _register(info: zipfile.ZipInfo, scan: ScannedPackage) -> str | None:
    """Record the entry's part name; None for a directory entry."""
    part = check_part_name(info.filename)
    if info.is_dir():
        return None
    key = part.casefold()
    if key in scan.zip_names:
        refuse("opc-duplicate-part-name", f"part {part!r} appears twice in the package")
    scan.zip_names[key] = info.filename
    return key


def _is_package_xml(key: str) -> bool:
    return key == "/[content_types].xml" or key.endswith(".rels")


def _scan_entry(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    scan: ScannedPackage,
    limits: IngestLimits,
    total_before: int,
) -> int:
    """Stream one entry through the limits; returns its measured decompressed size."""
    key = _register(info, scan)
    if key is None:
        return 0
    _check_entry_header(info)
    keep = _is_package_xml(key)
    kept = bytearray()
    produced = 0
    with zf.open(info) as stream:
        while chunk := stream.read(_CHUNK):
            if produced == 0:
                _refuse_nested(info.filename, chunk)
            produced += len(chunk)
            _check_growth(info, produced, total_before + produced, limits)
            if keep:
                _keep(kept, chunk, info.filename, limits)
    scan.sizes[key] = produced
    if keep:
        scan.package_xml[key] = bytes(kept)
    return produced


def _refuse_nested(name: str, head: bytes) -> None:
    for magic, kind in _ARCHIVE_MAGICS:
        if head.startswith(magic):
            refuse(
                "zip-nested-archive",
                f"package entry {name!r} is itself a {kind} archive; nested archives "
                "are not accepted",
            )


def _check_growth(info: zipfile.ZipInfo, produced: int, total: int, limits: IngestLimits) -> None:
    if total > limits.max_uncompressed_bytes:
        refuse(
            "zip-too-large-uncompressed",
            f"the 3MF package decompresses to more than {limits.max_uncompressed_bytes} bytes",
        )
    ratio = produced / max(info.compress_size, 1)
    if produced > limits.ratio_grace_bytes and ratio > limits.max_compression_ratio:
        refuse(
            "zip-ratio-exceeded",
            f"package entry {info.filename!r} expands more than "
            f"{limits.max_compression_ratio:g}x (a zip bomb?)",
        )


def _keep(kept: bytearray, chunk: bytes, name: str, limits: IngestLimits) -> None:
    if len(kept) + len(chunk) > limits.max_package_xml_bytes:
        refuse(
            "xml-too-large",
            f"package part {name!r} is larger than {limits.max_package_xml_bytes} bytes",
        )
    kept.extend(chunk)


def open_part(zf: zipfile.ZipFile, scan: ScannedPackage, part: str) -> IO[bytes]:
    """A decompressing stream of an already scanned part."""
    return zf.open(scan.zip_names[part.casefold()])
