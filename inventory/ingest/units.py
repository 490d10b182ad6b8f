"""Length units a design may be expressed in (the 3MF unit set)."""

from __future__ import annotations

from inventory.errors import Invalid

UNIT_TO_MM: dict[str, float] = {
    "micron": 0.001,
    "millimeter": 1.0,
    "centimeter": 10.0,
    "inch": 25.4,
    "foot": 304.8,
    "meter": 1000.0,
}

_ALIASES = {
    "um": "micron",
    "µm": "micron",
    "mm": "millimeter",
    "cm": "centimeter",
    "in": "inch",
    "ft": "foot",
    "m": "meter",
}

DEFAULT_UNIT = "millimeter"


def normalize_unit(name: str) -> str:
    """Canonical 3MF unit name for `name` (also accepts mm, cm, in, ...)."""
    key = name.strip().lower()
    unit = _ALIASES.get(key, key)
    if unit not in UNIT_TO_MM:
        allowed = ", ".join(UNIT_TO_MM)
        raise Invalid(f"unknown unit {name!r}; use one of {allowed}", code="bad-unit-hint")
    return unit
