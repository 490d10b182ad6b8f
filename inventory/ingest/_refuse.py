"""Shorthand for refusing a design with a stable problem code."""

from __future__ import annotations

from typing import NoReturn

from inventory.errors import Invalid


def refuse(code: str, detail: str) -> NoReturn:
    """Raise the 422 `Invalid` that names the broken rule."""
    raise Invalid(detail, code=code)
