"""The robustness attack suite: what a leaked mesh may have gone through.

Every attack is deterministic (fixed seeds) and takes and returns a
``trimesh.Trimesh`` without modifying its input.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Any

import fast_simplification
import numpy as np
import trimesh
from numpy.typing import NDArray

Attack = Callable[[trimesh.Trimesh], trimesh.Trimesh]
FloatArray = NDArray[np.float64]
SEED = 1234


def _mesh(vertices: Any, faces: Any, process: bool = False) -> trimesh.Trimesh:
    return trimesh.Trimesh(
        np.asarray(vertices, dtype=np.float64), np.asarray(faces), process=process
    )


def reorder(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Permute vertices and faces, and rotate each face's vertex order."""
    rng = np.random.default_rng(SEED)
    perm = rng.permutation(len(mesh.vertices))
    inverse = np.argsort(perm)
    faces = inverse[np.asarray(mesh.faces)][rng.permutation(len(mesh.faces))]
    return _mesh(np.asarray(mesh.vertices)[perm], np.roll(faces, 1, axis=1))


def _random_rotation(rng: np.random.Generator) -> FloatArray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def rigid(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    rng = np.random.default_rng(SEED)
    moved = np.asarray(mesh.vertices) @ _random_rotation(rng).T + rng.normal(size=3) * mesh.scale
    return _mesh(moved, mesh.faces)


def scale(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Uniform scaling by 2.54 combined with a rotation."""
    rng = np.random.default_rng(SEED + 1)
    return _mesh(2.54 * np.asarray(mesh.vertices) @ _random_rotation(rng).T, mesh.faces)


def _roundtrip(file_type: str, **kwargs: Any) -> Attack:
    def attack(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
        data = mesh.export(file_type=file_type, **kwargs)
        blob = data.encode() if isinstance(data, str) else data
        loaded = trimesh.load(io.BytesIO(blob), file_type=file_type, force="mesh")
        assert isinstance(loaded, trimesh.Trimesh)
        return loaded

    attack.__doc__ = f"Export as {file_type} and load again."
    return attack


_FACET = "facet normal %e %e %e\n outer loop\n" + "  vertex %e %e %e\n" * 3 + " endloop\nendfacet\n"
_VERTEX = re.compile(r"vertex\s+(\S+)\s+(\S+)\s+(\S+)")


def stl_ascii(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Write ASCII STL as CAD exporters do (``%e``: 7 significant digits), read it back.

    Reading keeps what every STL reader does: a triangle soup whose equal
    vertices are merged.
    """
    rows = np.concatenate(
        [mesh.face_normals, np.asarray(mesh.vertices)[mesh.faces].reshape(-1, 9)], 1
    )
    text = (
        "solid leaked\n" + (_FACET * len(rows)) % tuple(rows.ravel().tolist()) + "endsolid leaked\n"
    )
    vertices = np.array(_VERTEX.findall(text), dtype=np.float64)
    return _mesh(vertices, np.arange(len(vertices)).reshape(-1, 3), process=True)


def split_vertices(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Give every face its own three vertices (a triangle soup)."""
    faces = np.asarray(mesh.faces)
    return _mesh(np.asarray(mesh.vertices)[faces.reshape(-1)], np.arange(faces.size).reshape(-1, 3))


def merge_vertices(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    merged = split_vertices(mesh)
    merged.merge_vertices()
    return merged


def noise(fraction: float) -> Attack:
    """Uniform noise in [-a, a]^3, a = fraction of the mean vertex-to-centroid distance."""

    def attack(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
        vertices = np.asarray(mesh.vertices)
        amplitude = fraction * np.linalg.norm(vertices - vertices.mean(0), axis=1).mean()
        rng = np.random.default_rng(SEED)
        return _mesh(vertices + rng.uniform(-amplitude, amplitude, vertices.shape), mesh.faces)

    return attack


def quantize(bits: int) -> Attack:
    """Round coordinates to 2**bits levels spanning the bounding box."""

    def attack(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
        vertices = np.asarray(mesh.vertices)
        low, high = vertices.min(0), vertices.max(0)
        step = (high - low) / (2**bits - 1)
        return _mesh(low + np.round((vertices - low) / step) * step, mesh.faces)

    return attack


def subdivide_midpoint(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    return _mesh(*trimesh.remesh.subdivide(mesh.vertices, mesh.faces))


def subdivide_loop(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """One step of Loop subdivision (degenerate faces, which it rejects, are dropped)."""
    faces = np.asarray(mesh.faces)
    faces = faces[
        (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])
    ]
    return _mesh(*trimesh.remesh.subdivide_loop(mesh.vertices, faces, iterations=1))


def simplify(keep: float) -> Attack:
    """Quadric decimation (fast_simplification) down to ``keep`` of the faces."""

    def attack(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
        vertices, faces = fast_simplification.simplify(
            np.asarray(mesh.vertices, dtype=np.float32),
            np.asarray(mesh.faces),
            target_reduction=1.0 - keep,
        )
        return _mesh(vertices, faces)

    return attack


def smooth(iterations: int) -> Attack:
    """Laplacian smoothing, lambda = 0.1 (trimesh defaults otherwise)."""

    def attack(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
        out = mesh.copy()
        trimesh.smoothing.filter_laplacian(out, lamb=0.1, iterations=iterations)
        return out

    return attack


ATTACKS: dict[str, Attack] = {
    "reorder": reorder,
    "rigid": rigid,
    "scale": scale,
    "stl_binary": _roundtrip("stl"),
    "stl_ascii": stl_ascii,
    "3mf": _roundtrip("3mf"),
    "obj": _roundtrip("obj"),
    "split_vertices": split_vertices,
    "merge_vertices": merge_vertices,
    "noise_0.05%": noise(0.0005),
    "noise_0.10%": noise(0.0010),
    "quantize_10": quantize(10),
    "quantize_9": quantize(9),
    "subdivide_midpoint": subdivide_midpoint,
    "subdivide_loop": subdivide_loop,
    "simplify_70%": simplify(0.70),
    "simplify_50%": simplify(0.50),
    "smooth_5": smooth(5),
    "smooth_10": smooth(10),
}
