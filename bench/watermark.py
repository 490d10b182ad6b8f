"""Watermark benchmark: robustness table over the fixtures and speed on a 1M-face mesh.

Run: python bench/watermark.py [fixtures-dir [first-mesh-name]]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

# this file is itself named watermark.py: import the package from the repository root
sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import trimesh  # noqa: E402

from watermark import derive_brand_key, detect, embed  # noqa: E402
from watermark.attacks import ATTACKS  # noqa: E402
from watermark.core import Embedding, analyse, embedding, raw_ber  # noqa: E402

SERIAL = 0x0123456789ABCDEF
KEY = derive_brand_key(b"bench-master-secret", "bench-brand")
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "meshes"


def displacement(mesh: trimesh.Trimesh, made: Embedding) -> tuple[float, float]:
    """Exact max and RMS vertex displacement (% of the diagonal) against the refined original."""
    moved = np.linalg.norm(made.marked.vertices - made.refined.vertices, axis=1)
    diagonal = float(np.linalg.norm(mesh.extents))
    return 100 * moved.max() / diagonal, 100 * float(np.sqrt((moved**2).mean())) / diagonal


def robustness(folder: Path, start: str = "") -> None:
    names = list(ATTACKS)
    print("mesh".ljust(24), "max%  rms%  ", " ".join(n[:9].rjust(9) for n in ["none", *names]))
    for path in sorted(p for p in folder.iterdir() if p.name >= start):
        mesh = trimesh.load(path, force="mesh")
        made = embedding(mesh, SERIAL, KEY)
        marked = made.marked
        peak, rms = displacement(mesh, made)
        cells = []
        for attacked in [marked, *(ATTACKS[n](marked) for n in names)]:
            result, soft = analyse(attacked, KEY)
            mark = "+" if result.serial == SERIAL else ("-" if result.serial is None else "WRONG")
            cells.append(f"{raw_ber(soft, KEY, SERIAL):.2f}{mark}".rjust(9))
        print(path.name[:24].ljust(24), f"{peak:.3f} {rms:.4f}", " ".join(cells), flush=True)
    print("cell = BER before error correction; + serial recovered, - not recovered")


def speed() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=7, radius=40.0)
    box = trimesh.creation.box(extents=(60.0, 60.0, 20.0))
    box.apply_translation((0.0, 0.0, 45.0))
    mesh = trimesh.util.concatenate([sphere, box])
    mesh = trimesh.Trimesh(*trimesh.remesh.subdivide(mesh.vertices, mesh.faces))
    mesh = trimesh.Trimesh(mesh.vertices, mesh.faces[:1_000_000])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.stl"
        mesh.export(path)
        start = time.perf_counter()
        loaded = trimesh.load(path, force="mesh")
        load = time.perf_counter() - start
    start = time.perf_counter()
    marked = embed(loaded, SERIAL, KEY)
    embed_time = time.perf_counter() - start
    start = time.perf_counter()
    result = detect(marked, KEY)
    detect_time = time.perf_counter() - start
    print(
        f"\n{len(loaded.faces)} faces: load {load:.2f}s  embed {embed_time:.2f}s "
        f"({embed_time / load:.1f}x)  detect {detect_time:.2f}s ({detect_time / load:.1f}x)  "
        f"recovered={result.serial == SERIAL}"
    )


if __name__ == "__main__":
    robustness(
        Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURES,
        sys.argv[2] if len(sys.argv) > 2 else "",
    )
    speed()
