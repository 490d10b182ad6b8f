"""Forensic mesh watermark: a print serial hidden in the geometry, keyed per brand."""

from watermark.core import Detection, Embedding, detect, embed, embedding
from watermark.ecc import derive_brand_key
from watermark.metrics import distortion

__all__ = [
    "Detection",
    "Embedding",
    "derive_brand_key",
    "detect",
    "distortion",
    "embed",
    "embedding",
]
