"""A strict, block-wise ASCII STL reader.

The file is read in blocks; each facet is matched whole by one compiled regular
expression and its twelve numbers are converted per block, which is
several times faster than trimesh's ASCII reader and never holds more than a
block of text. Anything that is not `solid` / `facet normal` / `outer loop` /
three `vertex` lines / `endloop` / `endfacet` / `endsolid` is refused with the
line it starts on.
"""

from __future__ import annotations

import re
from array import array
from pathlib import Path
from typing import BinaryIO, NoReturn

import numpy as np
import numpy.typing as npt

from ._refuse import refuse
from .limits import IngestLimits
from .meshbuild import refuse_triangle_limit

_BLOCK = 4 * 1024 * 1024
_LOOKAHEAD = 1024 * 1024
"""A facet (or solid line) longer than this is refused."""
_NUM = rb"[ \t]+([+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|nan|inf(?:inity)?))"
_FACET = re.compile(
    rb"\s*facet[ \t]+normal"
    + _NUM * 3
    + rb"\s+outer[ \t]+loop"
    + (rb"\s+vertex" + _NUM * 3) * 3
    + rb"\s+endloop\s+endfacet(?=\s|$)",
    re.IGNORECASE,
)
_SOLID = re.compile(rb"\s*solid(?:[^\S\n][^\n]*)?(?:\n|$)", re.IGNORECASE)
_ENDSOLID = re.compile(rb"\s*endsolid(?:[^\S\n][^\n]*)?(?:\n|$)", re.IGNORECASE)
_WHITESPACE = re.compile(rb"\s*")


class _Reader:
    """Parser state across blocks: buffer, position, line count, outputs."""

    def __init__(self, f: BinaryIO, limits: IngestLimits) -> None:
        self.f = f
        self.limits = limits
        self.buf = f.read(_BLOCK).removeprefix(b"\xef\xbb\xbf")
        self.pos = 0
        self.line = 1
        self.eof = len(self.buf) < _BLOCK
        self.numbers: list[bytes] = []
        self.blocks: list[npt.NDArray[np.float64]] = []
        self.facets = 0

    def refill(self) -> bool:
        """Drop consumed text and append the next block; False at end of file."""
        if self.eof:
            return False
        self.line += self.buf.count(b"\n", 0, self.pos)
        self.flush()
        more = self.f.read(_BLOCK)
        self.eof = len(more) < _BLOCK
        self.buf, self.pos = self.buf[self.pos :] + more, 0
        return bool(more)

    def match(self, pattern: re.Pattern[bytes]) -> re.Match[bytes] | None:
        """Match at the current position with at least `_LOOKAHEAD` bytes ahead (or EOF)."""
        if len(self.buf) - self.pos < _LOOKAHEAD:
            self.refill()
        found = pattern.match(self.buf, self.pos)
        if found is not None and found.end() == len(self.buf) and not self.eof:
            self.fail(f"a statement is longer than {_LOOKAHEAD} bytes")
        return found

    def flush(self) -> None:
        """Convert the numbers collected so far (12 per facet, all regex-checked) to floats."""
        values = np.frombuffer(array("d", map(float, self.numbers)), dtype=np.float64)
        self.blocks.append(values.reshape((-1, 12)))
        self.numbers = []

    def fail(self, detail: str) -> NoReturn:
        line = self.line + self.buf.count(b"\n", 0, self.pos)
        if self.buf[self.pos : self.pos + 1] == b"\n":
            line += 1
        refuse("stl-ascii-syntax", f"ASCII STL near line {line}: {detail}")

    def at_end(self) -> bool:
        """Skip whitespace (reading on as needed); True when only whitespace was left."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf) or not self.refill():
                return self.pos == len(self.buf)


def _solid(reader: _Reader) -> None:
    """Consume facets up to and including `endsolid`."""
    while (facet := reader.match(_FACET)) is not None:
        reader.numbers.extend(facet.groups())
        reader.pos = facet.end()
        reader.facets += 1
        if reader.facets > reader.limits.max_triangles:
            refuse_triangle_limit(reader.limits)
    end = reader.match(_ENDSOLID)
    if end is None:
        if reader.at_end():
            refuse("stl-ascii-syntax", "ASCII STL ends before 'endsolid': the file is truncated")
        reader.fail("expected a complete 'facet normal ... endfacet' block or 'endsolid'")
    reader.pos = end.end()


def parse_ascii_stl(
    path: Path, limits: IngestLimits
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(vertices, shape (3n, 3); facet normals, shape (n, 3)) of an ASCII STL."""
    with path.open("rb") as f:
        reader = _Reader(f, limits)
        while not reader.at_end():
            start = reader.match(_SOLID)
            if start is None:
                reader.fail("expected 'solid'")
            reader.pos = start.end()
            _solid(reader)
        reader.flush()
    table = np.concatenate(reader.blocks) if reader.blocks else np.empty((0, 12))
    return table[:, 3:].reshape((-1, 3)), table[:, :3]
