"""The public entry points of design ingest: inspect an upload, reload a design."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec
import trimesh

from inventory.errors import UnsupportedMediaType

from .detect import DesignFormat, binary_stl_count, detect_format
from .limits import IngestLimits
from .measure import GeometryStats, apply_solid_policy, measure
from .obj import load_obj
from .stl import load_ascii_stl, load_binary_stl
from .threemf import load_3mf
from .units import DEFAULT_UNIT, UNIT_TO_MM, normalize_unit

DEFAULT_LIMITS = IngestLimits()


class DesignReport(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of inspecting an accepted design."""

    format: DesignFormat
    stl_variant: Literal["binary", "ascii"] | None = None
    unit: str
    unit_source: Literal["file", "hint", "default"]
    """Where the unit came from: the 3MF itself, the caller's hint, or the mm default."""
    stats: GeometryStats
    warnings: tuple[str, ...] = ()


def _load(
    path: Path, fmt: DesignFormat, binary: bool, limits: IngestLimits
) -> tuple[trimesh.Trimesh, str | None]:
    """(mesh, unit declared by the file or None)."""
    if fmt is DesignFormat.THREEMF:
        return load_3mf(path, limits)
    if fmt is DesignFormat.OBJ:
        return load_obj(path, limits), None
    loader = load_binary_stl if binary else load_ascii_stl
    return loader(path, limits), None


def _resolve_unit(
    declared: str | None, hint: str | None, warnings: list[str]
) -> tuple[str, Literal["file", "hint", "default"]]:
    if declared is not None:
        if hint is not None and hint != declared:
            warnings.append(f"unit hint {hint!r} ignored: the 3MF declares {declared!r}")
        return declared, "file"
    if hint is not None:
        return hint, "hint"
    warnings.append("the file carries no unit; millimeter assumed")
    return DEFAULT_UNIT, "default"


def inspect_design(
    path: Path,
    *,
    filename: str | None,
    unit_hint: str | None = None,
    allow_open: bool = False,
    limits: IngestLimits = DEFAULT_LIMITS,
) -> DesignReport:
    """Validate and measure the uploaded design at `path`; raise a `PartvaultError` to refuse.

    Pure: reads only `path`, no database, no network. `filename` is the client's
    name for the file (its extension must agree with the content); `unit_hint`
    gives the unit of an STL or OBJ (3MF declares its own); `allow_open` accepts
    a design that is not a closed solid, recorded as not watertight.
    """
    hint = normalize_unit(unit_hint) if unit_hint is not None else None
    fmt, binary = detect_format(path, filename, limits)
    mesh, declared = _load(path, fmt, binary, limits)
    warnings: list[str] = []
    unit, source = _resolve_unit(declared, hint, warnings)
    stats = measure(mesh, unit, UNIT_TO_MM[unit])
    warnings.extend(apply_solid_policy(stats, allow_open=allow_open, limits=limits))
    return DesignReport(
        format=fmt,
        stl_variant=("binary" if binary else "ascii") if fmt is DesignFormat.STL else None,
        unit=unit,
        unit_source=source,
        stats=stats,
        warnings=tuple(warnings),
    )


def load_mesh(
    path: Path,
    fmt: DesignFormat | str,
    *,
    unit_hint: str | None = None,
    limits: IngestLimits = DEFAULT_LIMITS,
) -> tuple[trimesh.Trimesh, float]:
    """(mesh in the design's unit, factor to millimetres) of a stored, decrypted design.

    Applies the same parsing checks as `inspect_design` but no closed-solid
    policy. For STL and OBJ the unit is `unit_hint` (as recorded at upload),
    else millimetres.
    """
    try:
        fmt = DesignFormat(fmt)
    except ValueError:
        raise UnsupportedMediaType(
            f"unknown design format {fmt!r}", code="unknown-format"
        ) from None
    binary = fmt is DesignFormat.STL and binary_stl_count(path, path.stat().st_size) is not None
    mesh, declared = _load(path, fmt, binary, limits)
    unit = declared or (normalize_unit(unit_hint) if unit_hint else DEFAULT_UNIT)
    return mesh, UNIT_TO_MM[unit]
