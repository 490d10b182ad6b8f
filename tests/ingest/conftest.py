"""Builders for crafted (mostly hostile) design files, written to tmp_path."""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

CORE = "http://schemas.microsoft.com/3dmanufacturing/core/2015/02"
MODEL_REL = "http://schemas.microsoft.com/3dmanufacturing/2013/01/3dmodel"
CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" '
    'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="model" '
    'ContentType="application/vnd.ms-package.3dmanufacturing-3dmodel+xml"/>'
    '<Default Extension="png" ContentType="image/png"/>'
    "</Types>"
)

# A closed tetrahedron, outward-facing: 4 vertices, 4 triangles.
TETRA_VERTICES = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], dtype=np.float64)
TETRA_FACES = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])


def rels(*relationships: str) -> str:
    body = "".join(relationships)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        f"{body}</Relationships>"
    )


def rel(target: str, rel_type: str = MODEL_REL, rid: str = "rel0", mode: str = "") -> str:
    extra = f' TargetMode="{mode}"' if mode else ""
    return f'<Relationship Target="{target}" Id="{rid}" Type="{rel_type}"{extra}/>'


def mesh_xml(vertices: np.ndarray = TETRA_VERTICES, faces: np.ndarray = TETRA_FACES) -> str:
    vs = "".join(f'<vertex x="{x}" y="{y}" z="{z}"/>' for x, y, z in vertices)
    ts = "".join(f'<triangle v1="{a}" v2="{b}" v3="{c}"/>' for a, b, c in faces)
    return f"<mesh><vertices>{vs}</vertices><triangles>{ts}</triangles></mesh>"


def model_xml(
    objects: str | None = None,
    build: str = '<build><item objectid="1"/></build>',
    unit: str = "millimeter",
    attrs: str = "",
    prolog: str = '<?xml version="1.0" encoding="UTF-8"?>',
) -> str:
    if objects is None:
        objects = f'<object id="1" type="model">{mesh_xml()}</object>'
    return (
        f'{prolog}<model unit="{unit}" xmlns="{CORE}"{attrs}>'
        f"<resources>{objects}</resources>{build}</model>"
    )


Entries = dict[str, bytes | str]


def default_entries(model: str | bytes | None = None) -> Entries:
    return {
        "[Content_Types].xml": CONTENT_TYPES,
        "_rels/.rels": rels(rel("/3D/3dmodel.model")),
        "3D/3dmodel.model": model_xml() if model is None else model,
    }


@pytest.fixture
def make_3mf(tmp_path: Path) -> Callable[..., Path]:
    """Write a 3MF package from {entry name: content}; defaults to a valid tetrahedron."""

    def build(
        entries: Entries | None = None, name: str = "part.3mf", **overrides: bytes | str
    ) -> Path:
        content = default_entries() if entries is None else entries
        content = {**content, **overrides}
        path = tmp_path / name
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for entry, data in content.items():
                zf.writestr(entry, data.encode() if isinstance(data, str) else data)
        return path

    return build


def binary_stl(
    triangles: np.ndarray, normals: np.ndarray | None = None, header: bytes = b""
) -> bytes:
    """Bytes of a binary STL for (n, 3, 3) triangles."""
    n = len(triangles)
    if normals is None:
        normals = np.tile([0.0, 0.0, 1.0], (n, 1))
    record = np.zeros(n, dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")])
    record["n"] = normals
    record["v"] = triangles
    return header.ljust(80, b" ")[:80] + struct.pack("<I", n) + record.tobytes()


def tetra_triangles() -> np.ndarray:
    return TETRA_VERTICES[TETRA_FACES]


def ascii_stl(triangles: np.ndarray, name: str = "part") -> str:
    facets = "".join(
        "facet normal 0 0 1\n outer loop\n"
        + "".join(f"  vertex {x} {y} {z}\n" for x, y, z in tri)
        + " endloop\nendfacet\n"
        for tri in triangles
    )
    return f"solid {name}\n{facets}endsolid {name}\n"


@pytest.fixture
def craft() -> SimpleNamespace:
    """The builders above, for test modules (importlib mode cannot import conftest)."""
    return SimpleNamespace(
        rels=rels,
        rel=rel,
        mesh_xml=mesh_xml,
        model_xml=model_xml,
        default_entries=default_entries,
        binary_stl=binary_stl,
        ascii_stl=ascii_stl,
        tetra=tetra_triangles(),
        CONTENT_TYPES=CONTENT_TYPES,
    )
