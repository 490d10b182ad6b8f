"""Resource limits for ingesting one design upload."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class IngestLimits:
    """Every bound the ingest path enforces; defaults suit a public upload route.

    Zip limits are measured on the bytes actually produced while decompressing,
    never taken from the sizes an archive declares in its headers.
    """

    max_bytes: int = 100 * MiB
    """Upload size on disk (413 above it)."""
    max_triangles: int = 2_000_000
    """Triangles after 3MF components and build items are expanded."""
    max_zip_entries: int = 256
    max_uncompressed_bytes: int = 512 * MiB
    """Sum of all decompressed 3MF entries."""
    max_compression_ratio: float = 100.0
    """Decompressed / compressed size of one entry, checked once it passes `ratio_grace_bytes`."""
    ratio_grace_bytes: int = 1 * MiB
    max_xml_bytes: int = 256 * MiB
    """Decompressed size of the 3MF model part."""
    max_package_xml_bytes: int = 1 * MiB
    """Decompressed size of `[Content_Types].xml` and each `.rels` part."""
    max_line_bytes: int = 4096
    """Longest line accepted in an OBJ file."""
    max_abs_coordinate: float = 1e7
    """Largest coordinate magnitude, in the design's unit (10 km in mm)."""
    max_open_edge_ratio: float = 0.02
    """Share of boundary edges above which a mesh is not a closed solid."""
