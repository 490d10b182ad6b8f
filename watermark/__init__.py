"""Forensic mesh watermark: a print serial hidden in the geometry, keyed per brand."""

from watermark.core import Detection, detect, embed
from watermark.ecc import derive_brand_key
from watermark.metrics import distortion

__all__ = ["Detection", "derive_brand_key", "detect", "distortion", "embed"]
