"""Design ingest: detect, validate and measure an uploaded STL, 3MF or OBJ.

Every refusal is a `PartvaultError` with a stable `code`; see docs/ingest.md.
"""

from .detect import DesignFormat
from .limits import IngestLimits
from .measure import GeometryStats
from .service import DesignReport, inspect_design, load_mesh

__all__ = [
    "DesignFormat",
    "DesignReport",
    "GeometryStats",
    "IngestLimits",
    "inspect_design",
    "load_mesh",
]
