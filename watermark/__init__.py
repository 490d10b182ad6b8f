"""Forensic mesh watermark: a print serial hidden in the geometry, keyed per brand.

`derive_brand_key` needs only numpy; the rest loads trimesh and scipy on first
use (see `inventory.ingest` for why).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from watermark.ecc import derive_brand_key

if TYPE_CHECKING:
    from watermark.core import Detection, Embedding, detect, embed, embedding
    from watermark.metrics import distortion

_LAZY = {
    "Detection": "watermark.core",
    "Embedding": "watermark.core",
    "detect": "watermark.core",
    "embed": "watermark.core",
    "embedding": "watermark.core",
    "distortion": "watermark.metrics",
}

__all__ = [
    "Detection",
    "Embedding",
    "derive_brand_key",
    "detect",
    "distortion",
    "embed",
    "embedding",
]


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
