"""OPC (Open Packaging Conventions) rules of a 3MF package.

Checks `[Content_Types].xml` and every relationships part: no external
targets, no target outside the package, no dangling target, and exactly one
3D model part that is the target of the package's root relationship.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any

from ._refuse import refuse
from .xmlsafe import local_name, parse_small
from .zipscan import ScannedPackage

CONTENT_TYPES = "/[Content_Types].xml"
ROOT_RELS = "/_rels/.rels"
MODEL_REL_TYPE = "http://schemas.microsoft.com/3dmanufacturing/2013/01/3dmodel"
MODEL_CONTENT_TYPE = "application/vnd.ms-package.3dmanufacturing-3dmodel+xml"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class Relationship:
    source_dir: str
    target: str
    type: str
    mode: str


def _relationships(scan: ScannedPackage, rels_part: str) -> list[Relationship]:
    root = parse_small(scan.package_xml[rels_part], rels_part)
    if local_name(root.tag) != "Relationships":
        refuse("opc-bad-relationship", f"{rels_part!r} is not a relationships part")
    source_dir = posixpath.dirname(posixpath.dirname(rels_part)) or "/"
    out = []
    for el in root:
        if local_name(el.tag) != "Relationship":
            continue
        target = el.get("Target")
        if not target:
            refuse("opc-bad-relationship", f"a relationship in {rels_part!r} has no Target")
        out.append(Relationship(source_dir, target, el.get("Type", ""), el.get("TargetMode", "")))
    return out


def _normalize(path: str) -> str | None:
    """Resolve '.' and '..' in an absolute path; None when '..' climbs above the root."""
    parts: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if not parts:
                return None
            parts.pop()
        elif segment not in ("", "."):
            parts.append(segment)
    return "/" + "/".join(parts)


def resolve_target(rel: Relationship) -> str:
    """Absolute part name of an internal relationship target; refuses anything external."""
    target = rel.target
    resolved = None
    if not (
        rel.mode.lower() == "external"
        or _SCHEME.match(target)
        or target.startswith("//")
        or "\\" in target
    ):
        resolved = _normalize(target if target.startswith("/") else f"{rel.source_dir}/{target}")
    if resolved is None:
        refuse(
            "3mf-external-relationship",
            f"relationship target {target[:200]!r} points outside the package; a stored "
            "design must be self-contained",
        )
    if "?" in target or "#" in target:
        refuse("opc-bad-relationship", f"relationship target {target[:200]!r} is not a part name")
    return resolved


def _check_targets(scan: ScannedPackage, rels: list[Relationship]) -> None:
    for rel in rels:
        part = resolve_target(rel)
        if not scan.has(part):
            refuse(
                "3mf-relationship-target-missing",
                f"a relationship points to {part!r}, which is not in the package",
            )


def _rels_parts(scan: ScannedPackage) -> list[str]:
    return [
        key for key in scan.package_xml if posixpath.basename(posixpath.dirname(key)) == "_rels"
    ]


def _content_type_of(types: Any, part: str) -> str | None:
    """Content type of `part` from the Override or the Default for its extension."""
    extension = posixpath.splitext(part)[1].lstrip(".").lower()
    default = None
    for el in types:
        name = local_name(el.tag)
        if name == "Override" and (el.get("PartName") or "").casefold() == part.casefold():
            return str(el.get("ContentType"))
        if name == "Default" and (el.get("Extension") or "").lower() == extension:
            default = str(el.get("ContentType"))
    return default


def find_model_part(scan: ScannedPackage) -> str:
    """Validate the OPC layer and return the (case-folded) name of the one model part."""
    if not scan.has(CONTENT_TYPES):
        refuse("opc-missing-content-types", "the 3MF package has no [Content_Types].xml")
    if not scan.has(ROOT_RELS):
        refuse("opc-missing-root-rels", "the 3MF package has no _rels/.rels")
    types = parse_small(scan.package_xml[CONTENT_TYPES.casefold()], CONTENT_TYPES)
    for rels_part in _rels_parts(scan):
        _check_targets(scan, _relationships(scan, rels_part))
    root_rels = _relationships(scan, ROOT_RELS)
    models = [resolve_target(r) for r in root_rels if r.type == MODEL_REL_TYPE]
    if not models:
        refuse(
            "3mf-model-relationship-missing",
            "_rels/.rels has no 3D model relationship: the package does not say which part "
            "is the model",
        )
    _check_single_model(scan, models)
    model = models[0]
    if _content_type_of(types, model) != MODEL_CONTENT_TYPE:
        refuse(
            "3mf-model-content-type",
            f"[Content_Types].xml does not declare {model!r} as a 3D model part",
        )
    return model.casefold()


def _check_single_model(scan: ScannedPackage, models: list[str]) -> None:
    model_parts = {k for k in scan.zip_names if k.endswith(".model")}
    if len(models) > 1 or model_parts - {models[0].casefold()}:
        refuse(
            "3mf-multiple-model-parts",
            "the package holds more than one 3D model part; partvault stores single-model "
            "3MF files (export the assembly as one model)",
        )
