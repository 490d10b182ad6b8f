"""3MF: hardened package, OPC rules, 3MF core rules, then the mesh.

The model part is parsed here in one streaming pass (an lxml parser target
with the safe options, so no element tree is built) rather than by trimesh's
3MF loader, which reads the whole archive into memory, picks the model part by
its conventional name instead of the root relationship and does not apply the
checks below. Objects made of components and build items with transforms are
expanded into one mesh, in the model's own unit.
"""

from __future__ import annotations

import zipfile
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import trimesh
from lxml import etree

from ._refuse import refuse
from .limits import IngestLimits
from .meshbuild import build_mesh, check_coordinates, check_triangle_count, refuse_triangle_limit
from .opc import find_model_part
from .units import DEFAULT_UNIT, UNIT_TO_MM
from .xmlsafe import SAFE_OPTIONS, check_encoding, local_name, namespace
from .zipscan import ScannedPackage, open_part, scan_package

CORE_NAMESPACES = frozenset(
    {
        "http://schemas.microsoft.com/3dmanufacturing/core/2015/02",
        "http://schemas.microsoft.com/3dmanufacturing/core/2013/01",
    }
)
SUPPORTED_EXTENSIONS = frozenset(
    {
        "http://schemas.microsoft.com/3dmanufacturing/material/2015/02",
        "http://schemas.microsoft.com/3dmanufacturing/production/2015/06",
    }
)
PRODUCTION_NS = "http://schemas.microsoft.com/3dmanufacturing/production/2015/06"
_MAX_DEPTH = 32
_CHUNK = 256 * 1024

Matrix = npt.NDArray[np.float64]


@dataclass
class MeshObject:
    vertices: npt.NDArray[np.float64]
    triangles: npt.NDArray[np.int64]


@dataclass
class ModelPart:
    """The parsed content of a 3MF model part (objects by id, build items)."""

    unit: str = DEFAULT_UNIT
    meshes: dict[str, MeshObject] = field(default_factory=dict)
    composites: dict[str, list[tuple[str, Matrix]]] = field(default_factory=dict)
    items: list[tuple[str, Matrix]] = field(default_factory=list)
    has_resources: bool = False
    has_build: bool = False


def parse_transform(text: str | None) -> Matrix:
    """3MF's 12-number row-major 4x3 matrix as a 4x4 matrix for row vectors."""
    matrix = np.eye(4)
    if text is None:
        return matrix
    try:
        values = [float(v) for v in text.split()]
    except ValueError:
        values = []
    if len(values) != 12 or not np.all(np.isfinite(values)):
        refuse("3mf-bad-transform", f"transform {text[:100]!r} is not 12 finite numbers")
    matrix[:, :3] = np.asarray(values).reshape((4, 3))
    return matrix


class _ModelTarget:
    """lxml parser target building a `ModelPart` from parse callbacks, without a tree.

    Callbacks receive plain tag strings and attribute mappings: several times
    faster than iterparse, and memory stays at the vertex and index arrays.
    """

    def __init__(self, part: str, limits: IngestLimits) -> None:
        self.part = part
        self.limits = limits
        self.model = ModelPart()
        self.depth = 0
        self.object_tag = ""
        self.handlers: dict[str, Callable[[Any], None]] = {}
        self.object_id: str | None = None
        self.vertices: array[float] = array("d")
        self.triangles: array[int] = array("q")
        self.components: list[tuple[str, Matrix]] = []
        self.total_triangles = 0

    def doctype(self, *_: object) -> None:
        refuse(
            "xml-dtd-forbidden",
            f"XML part {self.part!r} declares a DTD; DTDs and entity declarations are not allowed",
        )

    def start(self, tag: str, attrib: Any, nsmap: Any = None) -> None:
        self.depth += 1
        if self.depth == 1:
            self._start_model(tag, attrib, nsmap or {})
        handler = self.handlers.get(tag)
        if handler is not None:
            handler(attrib)

    def end(self, tag: str) -> None:
        self.depth -= 1
        if tag == self.object_tag:
            self._end_object()

    def close(self) -> ModelPart:
        return self.model

    def _start_model(self, tag: str, attrib: Any, nsmap: Any) -> None:
        core = namespace(tag)
        if local_name(tag) != "model" or core not in CORE_NAMESPACES:
            refuse("3mf-bad-model", "the model part's root element is not a 3MF <model>")
        unit = attrib.get("unit", DEFAULT_UNIT)
        if unit not in UNIT_TO_MM:
            refuse("3mf-bad-unit", f"unit {unit[:40]!r} is not a 3MF unit")
        self.model.unit = unit
        _check_required_extensions(attrib.get("requiredextensions", ""), nsmap)
        self.object_tag = f"{{{core}}}object"
        self.handlers = {
            f"{{{core}}}vertex": self._vertex,
            f"{{{core}}}triangle": self._triangle,
            f"{{{core}}}component": self._component,
            f"{{{core}}}object": self._start_object,
            f"{{{core}}}item": self._item,
            f"{{{core}}}resources": self._resources,
            f"{{{core}}}build": self._build,
        }

    def _resources(self, _: Any) -> None:
        self.model.has_resources |= self.depth == 2

    def _build(self, _: Any) -> None:
        self.model.has_build |= self.depth == 2

    def _start_object(self, attrib: Any) -> None:
        object_id = attrib.get("id")
        if not object_id:
            refuse("3mf-bad-object", "an <object> has no id")
        if object_id in self.model.meshes or object_id in self.model.composites:
            refuse("3mf-bad-object", f"object id {object_id!r} is used twice")
        self.object_id = object_id

    def _inside_object(self, what: str) -> None:
        if self.object_id is None:
            refuse("3mf-bad-object", f"a <{what}> appears outside an <object>")

    def _vertex(self, attrib: Any) -> None:
        self._inside_object("vertex")
        try:
            self.vertices.extend((float(attrib["x"]), float(attrib["y"]), float(attrib["z"])))
        except (KeyError, ValueError):
            refuse("3mf-bad-number", "a <vertex> lacks a numeric x, y or z")

    def _triangle(self, attrib: Any) -> None:
        self._inside_object("triangle")
        try:
            self.triangles.extend((int(attrib["v1"]), int(attrib["v2"]), int(attrib["v3"])))
        except (KeyError, ValueError):
            refuse("3mf-bad-triangle", "a <triangle> lacks integer v1, v2 or v3")
        self.total_triangles += 1
        if self.total_triangles > self.limits.max_triangles:
            refuse_triangle_limit(self.limits)

    def _component(self, attrib: Any) -> None:
        self._inside_object("component")
        self.components.append(self._reference(attrib, "component"))

    def _item(self, attrib: Any) -> None:
        self.model.items.append(self._reference(attrib, "build <item>"))

    def _reference(self, attrib: Any, what: str) -> tuple[str, Matrix]:
        """(objectid, transform) of a component or build item."""
        path = attrib.get(f"{{{PRODUCTION_NS}}}path")
        if path is not None and path.casefold() != self.part:
            refuse(
                "3mf-multiple-model-parts",
                f"a {what} refers to model part {path[:200]!r}; partvault stores "
                "single-model 3MF files",
            )
        target = attrib.get("objectid")
        if not target:
            refuse("3mf-bad-object", f"a {what} has no objectid")
        return target, parse_transform(attrib.get("transform"))

    def _end_object(self) -> None:
        assert self.object_id is not None
        if self.components:
            self.model.composites[self.object_id] = self.components
        else:
            self.model.meshes[self.object_id] = self._finish_mesh(self.object_id)
        self.object_id, self.components = None, []
        self.vertices, self.triangles = array("d"), array("q")

    def _finish_mesh(self, object_id: str) -> MeshObject:
        vertices = np.frombuffer(self.vertices, dtype=np.float64).reshape((-1, 3))
        triangles = np.frombuffer(self.triangles, dtype=np.int64).reshape((-1, 3))
        if triangles.size and (triangles.min() < 0 or triangles.max() >= len(vertices)):
            refuse(
                "3mf-bad-triangle",
                f"object {object_id!r} has a triangle that indexes a missing vertex",
            )
        check_coordinates(vertices, self.limits)
        return MeshObject(vertices, triangles)


def _check_required_extensions(required: str, nsmap: Any) -> None:
    """Refuse a model that requires an extension partvault cannot interpret."""
    for prefix in required.split():
        uri = nsmap.get(prefix)
        if uri not in SUPPORTED_EXTENSIONS:
            refuse(
                "3mf-unsupported-extension",
                f"the model requires extension {uri or prefix!r}, which partvault cannot interpret",
            )


def _parse_model(stream: IO[bytes], part: str, limits: IngestLimits) -> ModelPart:
    target = _ModelTarget(part, limits)
    parser = etree.XMLParser(target=target, **SAFE_OPTIONS)
    try:
        while chunk := stream.read(_CHUNK):
            parser.feed(chunk)
        model: ModelPart = parser.close()
    except etree.XMLSyntaxError as exc:
        refuse("xml-malformed", f"the model part is not well-formed XML: {exc.msg}")
    return model


def read_model(
    zf: zipfile.ZipFile, scan: ScannedPackage, part: str, limits: IngestLimits
) -> ModelPart:
    """Stream-parse the model part and apply the 3MF core structure rules."""
    if scan.sizes[part] > limits.max_xml_bytes:
        refuse("xml-too-large", f"the model part is larger than {limits.max_xml_bytes} bytes")
    with open_part(zf, scan, part) as stream:
        check_encoding(stream.read(512), part)
    with open_part(zf, scan, part) as stream:
        model = _parse_model(stream, part, limits)
    if not model.has_resources:
        refuse("3mf-missing-resources", "the model has no <resources> element")
    if not model.has_build:
        refuse("3mf-missing-build", "the model has no <build> element: nothing is to be printed")
    if not model.items:
        refuse("3mf-empty-build", "the model's <build> has no items: nothing is to be printed")
    return model


class _Expander:
    """Walks build items and components down to meshes, composing transforms."""

    def __init__(self, model: ModelPart, limits: IngestLimits) -> None:
        self.model = model
        self.limits = limits
        self.placed: list[tuple[MeshObject, Matrix]] = []
        self.triangles = 0

    def visit(self, object_id: str, matrix: Matrix, depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            refuse("3mf-component-cycle", "components nest too deep or refer to themselves")
        mesh = self.model.meshes.get(object_id)
        if mesh is not None:
            self._place(mesh, matrix)
            return
        if object_id not in self.model.composites:
            refuse("3mf-unknown-object", f"object {object_id!r} is referenced but not defined")
        for child, transform in self.model.composites[object_id]:
            self.visit(child, transform @ matrix, depth + 1)

    def _place(self, mesh: MeshObject, matrix: Matrix) -> None:
        # an empty mesh still counts one, so that instancing cannot run away
        self.triangles += max(len(mesh.triangles), 1)
        if self.triangles > self.limits.max_triangles:
            refuse_triangle_limit(self.limits)
        self.placed.append((mesh, matrix))


def _instances(model: ModelPart, limits: IngestLimits) -> list[tuple[MeshObject, Matrix]]:
    """Every mesh placed by the build, with its accumulated transform (row-vector form)."""
    expander = _Expander(model, limits)
    for object_id, transform in model.items:
        expander.visit(object_id, transform)
    return expander.placed


def assemble(model: ModelPart, limits: IngestLimits) -> tuple[Matrix, npt.NDArray[np.int64]]:
    """(vertices, faces) of the whole build in the model's unit."""
    vertices, faces, offset = [], [], 0
    for mesh, matrix in _instances(model, limits):
        vertices.append(mesh.vertices @ matrix[:3, :3] + matrix[3, :3])
        tri = mesh.triangles[:, ::-1] if np.linalg.det(matrix[:3, :3]) < 0 else mesh.triangles
        faces.append(tri + offset)
        offset += len(mesh.vertices)
    return np.concatenate(vertices), np.concatenate(faces)


def load_3mf(path: Path, limits: IngestLimits) -> tuple[trimesh.Trimesh, str]:
    """(mesh in the model's unit, unit name) of a validated 3MF package."""
    scan = scan_package(path, limits)
    part = find_model_part(scan)
    with zipfile.ZipFile(path) as zf:
        model = read_model(zf, scan, part, limits)
    vertices, faces = assemble(model, limits)
    check_triangle_count(len(faces), limits, empty_code="empty-mesh")
    check_coordinates(vertices, limits)
    return build_mesh(vertices, faces), model.unit
