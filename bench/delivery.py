"""Delivery benchmark: one facility copy of a 1,000,000-face design, stage by stage.

Run: ``python bench/delivery.py [--faces 1000000] [--repeat 3]``. The design is
sealed into a local store exactly as an upload would be; then each stage of
`licensing.deliveries.package` is timed on it, next to `trimesh.load` of the
same mesh from a binary STL in the same run:

* decrypt + parse: streaming AES-GCM from the vault to a spool file, then
  `inventory.ingest.load_mesh` (the same parser the upload used);
* watermark: `watermark.embed` with the print serial;
* serialise: `mesh_to_model_xml`;
* package + encrypt: `write_secure_3mf` (fresh AES-256-GCM key, RSA-OAEP wrap).

Prints each stage, the total and total / load (goal <= 4).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# bench/watermark.py would shadow the package: import from the repository root
sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import trimesh  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

import watermark  # noqa: E402
from inventory.crypto.aead import new_data_key  # noqa: E402
from inventory.crypto.seal import seal_to_store  # noqa: E402
from inventory.designs import revision_aad  # noqa: E402
from inventory.storage import LocalStore  # noqa: E402
from licensing.deliveries import Ticket, load_design  # noqa: E402
from licensing.delivery import key_thumbprint, mesh_to_model_xml, write_secure_3mf  # noqa: E402


def make_mesh(faces: int) -> trimesh.Trimesh:
    """A closed UV sphere with about `faces` triangles, radius 50 mm."""
    side = round(np.sqrt(faces / 4))
    return trimesh.creation.uv_sphere(radius=50.0, count=[side, side])


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Minimum wall time of `repeat` runs of `fn`, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def sealed_ticket(mesh: trimesh.Trimesh, folder: Path) -> tuple[LocalStore, Ticket]:
    """Seal the mesh as a binary STL revision and build the ticket a download would get."""
    stl = folder / "design.stl"
    mesh.export(stl)
    store, data_key, revision = LocalStore(folder / "objects"), new_data_key(), "rev_bench"
    with stl.open("rb") as handle:
        seal_to_store(
            store,
            "designs/bench",
            data_key,
            revision_aad(revision),
            iter(lambda: handle.read(1 << 20), b""),
        )
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    ticket = Ticket(
        serial=secrets.randbits(63),
        facility_id="fac_bench",
        wrap_public_key=key.public_key(),
        wrap_kid=key_thumbprint(key.public_key()),
        object_key="designs/bench",
        revision_id=revision,
        design_format="stl",
        unit="millimeter",
        data_key=data_key,
        watermark_key=secrets.token_bytes(32),
        profile={"process": "SLA"},
        profile_jws="x.y.z",
        licence_jti="lic_bench",
    )
    return store, ticket


def run(faces: int, repeat: int) -> None:
    mesh = make_mesh(faces)
    print(f"mesh: {len(mesh.faces):,} faces, {len(mesh.vertices):,} vertices")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        store, ticket = sealed_ticket(mesh, folder)
        load, _ = best_of(repeat, lambda: trimesh.load(folder / "design.stl", force="mesh"))
        stages: dict[str, float] = {}
        stages["decrypt + parse"], (design, unit_to_mm) = best_of(
            repeat, lambda: load_design(store, ticket, folder / "spool")
        )
        stages["watermark"], marked = best_of(
            repeat,
            lambda: watermark.embed(
                design, ticket.serial, ticket.watermark_key, unit_to_mm=unit_to_mm
            ),
        )
        stages["serialise model XML"], xml = best_of(
            repeat, lambda: mesh_to_model_xml(marked.vertices, marked.faces, metadata={"j": "x"})
        )

        def package() -> None:
            with (folder / "copy.3mf").open("wb") as out:
                write_secure_3mf(
                    out,
                    xml,
                    consumer_id=ticket.facility_id,
                    key_id=ticket.wrap_kid,
                    rsa_public_key=ticket.wrap_public_key,
                )

        stages["package + encrypt"], _ = best_of(repeat, package)
    print(f"  {'trimesh.load (reference)':26s} {load * 1000:9.0f} ms")
    for name, seconds in stages.items():
        print(f"  {name:26s} {seconds * 1000:9.0f} ms   {seconds / load:5.2f} x load")
    total = sum(stages.values())
    print(f"  {'total':26s} {total * 1000:9.0f} ms   {total / load:5.2f} x load  (goal <= 4)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    run(args.faces, args.repeat)


if __name__ == "__main__":
    main()
