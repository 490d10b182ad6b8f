"""Design ingest: detect, validate and measure an uploaded STL, 3MF or OBJ.

Every refusal is a `PartvaultError` with a stable `code`; see docs/ingest.md.

The mesh stack (trimesh, scipy: about half of a server process's start-up)
loads on first use of a name that needs it, so the CLI and a booting worker
that never touch a mesh do not pay for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .detect import DesignFormat
from .limits import IngestLimits

if TYPE_CHECKING:
    from .measure import GeometryStats
    from .service import DesignReport, inspect_design, load_mesh

_LAZY = {
    "GeometryStats": ".measure",
    "DesignReport": ".service",
    "inspect_design": ".service",
    "load_mesh": ".service",
}

__all__ = [
    "DesignFormat",
    "DesignReport",
    "GeometryStats",
    "IngestLimits",
    "inspect_design",
    "load_mesh",
]


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
