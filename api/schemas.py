"""msgspec Structs for every request and response body.

Input Structs forbid unknown fields and carry no server-owned fields (ids,
owners, counts, timestamps), so a client cannot set them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from inventory.accounts import ApiToken, Brand
from inventory.catalog import Part, PrintProfile, Process, Revision


class Input(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class Output(msgspec.Struct, kw_only=True):
    pass


Name = Annotated[str, Meta(min_length=1, max_length=200)]
Text = Annotated[str, Meta(max_length=4000)]
Sku = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$")]
Cents = Annotated[int, Meta(ge=0, le=10_000_000)]
PartStatusName = Literal["active", "discontinued", "withdrawn"]


class Health(Output):
    status: str
    checks: dict[str, str] = msgspec.field(default_factory=dict)


# --- brands and tokens -------------------------------------------------------


class BrandCreate(Input):
    name: Name


class BrandOut(Output):
    id: str
    name: str
    created_at: datetime

    @classmethod
    def of(cls, row: Brand) -> BrandOut:
        return cls(id=row.id, name=row.name, created_at=row.created_at)


class TokenCreate(Input):
    kind: Literal["brand", "shop", "facility"]
    name: Name
    brand_id: str | None = None
    facility_id: str | None = None


class TokenOut(Output):
    id: str
    kind: str
    name: str
    brand_id: str | None
    facility_id: str | None
    display_prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiToken) -> TokenOut:
        return cls(
            id=row.id,
            kind=row.kind,
            name=row.name,
            brand_id=row.brand_id,
            facility_id=row.facility_id,
            display_prefix=row.display_prefix,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
        )


class TokenCreated(TokenOut):
    """A new token: the only response that ever carries its secret."""

    token: str

    @classmethod
    def issued(cls, row: ApiToken, plaintext: str) -> TokenCreated:
        return cls(token=plaintext, **msgspec.structs.asdict(TokenOut.of(row)))


class Whoami(Output):
    kind: str
    token_id: str
    brand_id: str | None
    facility_id: str | None


# --- parts -------------------------------------------------------------------


class PartCreate(Input):
    sku: Sku
    name: Name
    description: Text = ""
    status: PartStatusName = "active"
    royalty_per_print_cents: Cents = 0
    currency: Currency = "EUR"


class PartUpdate(Input):
    name: Name | UnsetType = UNSET
    description: Text | UnsetType = UNSET
    status: PartStatusName | UnsetType = UNSET
    royalty_per_print_cents: Cents | UnsetType = UNSET
    currency: Currency | UnsetType = UNSET

    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in msgspec.structs.asdict(self).items() if v is not UNSET}


class PartOut(Output):
    id: str
    brand_id: str
    sku: str
    name: str
    description: str
    status: str
    royalty_per_print_cents: int
    currency: str
    current_profile_id: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Part) -> PartOut:
        return cls(
            id=row.id,
            brand_id=row.brand_id,
            sku=row.sku,
            name=row.name,
            description=row.description,
            status=row.status,
            royalty_per_print_cents=row.royalty_per_print_cents,
            currency=row.currency,
            current_profile_id=row.current_profile_id,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class PartPage(Output):
    items: list[PartOut]
    next_cursor: str | None


# --- print profiles ----------------------------------------------------------


class PrintProfileIn(Input):
    """Print parameters; every length is in millimetres, infill in percent."""

    process: Process
    material: Annotated[str, Meta(min_length=1, max_length=64)]
    layer_height_mm: Annotated[float, Meta(ge=0.005, le=1.0)]
    infill_percent: Annotated[int, Meta(ge=0, le=100)] | None = None
    wall_count: Annotated[int, Meta(ge=0, le=50)] | None = None
    orientation: Annotated[str, Meta(min_length=1, max_length=200)] = "as-designed"
    supports: Literal["none", "auto", "custom"] = "auto"
    post_processing: Annotated[
        list[Annotated[str, Meta(min_length=1, max_length=100)]], Meta(max_length=20)
    ] = msgspec.field(default_factory=list)
    tolerance_mm: Annotated[float, Meta(ge=0.001, le=5.0)] = 0.1
    notes: Text = ""


class PrintProfileOut(PrintProfileIn, forbid_unknown_fields=False, kw_only=True):
    id: str
    part_id: str
    profile_hash: str
    created_at: datetime

    @classmethod
    def of(cls, row: PrintProfile) -> PrintProfileOut:
        return cls(
            id=row.id,
            part_id=row.part_id,
            profile_hash=row.profile_hash,
            created_at=row.created_at,
            **row.settings,
        )


# --- public catalog ----------------------------------------------------------


class CatalogItem(Output):
    """What a webshop may see of a part: metadata only, never geometry."""

    sku: str
    name: str
    description: str
    status: str
    currency: str
    process: str | None
    material: str | None

    @classmethod
    def of(cls, part: Part, profile: PrintProfile | None) -> CatalogItem:
        settings = profile.settings if profile else {}
        return cls(
            sku=part.sku,
            name=part.name,
            description=part.description,
            status=part.status,
            currency=part.currency,
            process=settings.get("process"),
            material=settings.get("material"),
        )


class CatalogPage(Output):
    items: list[CatalogItem]
    next_cursor: str | None


# --- facilities and certifications -------------------------------------------

Country = Annotated[str, Meta(pattern=r"^[A-Z]{2}$")]
Latitude = Annotated[float, Meta(ge=-90, le=90)]
Longitude = Annotated[float, Meta(ge=-180, le=180)]
Material = Annotated[str, Meta(min_length=1, max_length=64)]
Millimetres = Annotated[float, Meta(gt=0, le=10_000)]
Email = Annotated[str, Meta(pattern=r"^[^@\s]{1,64}@[^@\s]{1,255}$")]
Pem = Annotated[str, Meta(min_length=40, max_length=4000)]
Label = Annotated[str, Meta(min_length=1, max_length=100)]
Reason = Annotated[str, Meta(max_length=1000)]


class FacilityRates(Input):
    """Quoting rates in integer minor units (cents) of `currency`."""

    per_cm3_cents: dict[Material, Cents]
    per_hour_cents: Cents
    setup_fee_cents: Cents
    currency: Currency = "EUR"


class FacilityIn(Input):
    name: Name
    address: Annotated[str, Meta(min_length=1, max_length=1000)]
    country: Country
    latitude: Latitude
    longitude: Longitude
    processes: Annotated[list[Process], Meta(min_length=1, max_length=5)]
    materials: Annotated[list[Material], Meta(min_length=1, max_length=100)]
    build_volume_mm: tuple[Millimetres, Millimetres, Millimetres]
    capacity: Annotated[int, Meta(ge=1, le=100_000)]
    contact_email: Email
    rates: FacilityRates
    pop_public_key: Pem
    wrap_public_key: Pem
    printer_models: Annotated[list[Label], Meta(max_length=100)] = msgspec.field(
        default_factory=list
    )


class FacilityUpdate(Input):
    """Profile changes; new PEMs rotate the facility's keys."""

    name: Name | UnsetType = UNSET
    address: Annotated[str, Meta(min_length=1, max_length=1000)] | UnsetType = UNSET
    latitude: Latitude | UnsetType = UNSET
    longitude: Longitude | UnsetType = UNSET
    processes: Annotated[list[Process], Meta(min_length=1, max_length=5)] | UnsetType = UNSET
    materials: Annotated[list[Material], Meta(min_length=1, max_length=100)] | UnsetType = UNSET
    printer_models: Annotated[list[Label], Meta(max_length=100)] | UnsetType = UNSET
    build_volume_mm: tuple[Millimetres, Millimetres, Millimetres] | UnsetType = UNSET
    capacity: Annotated[int, Meta(ge=1, le=100_000)] | UnsetType = UNSET
    contact_email: Email | UnsetType = UNSET
    rates: FacilityRates | UnsetType = UNSET
    pop_public_key: Pem | UnsetType = UNSET
    wrap_public_key: Pem | UnsetType = UNSET

    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in msgspec.to_builtins(self).items() if getattr(self, k) is not UNSET}


class FacilityOut(Output):
    id: str
    name: str
    address: str
    country: str
    latitude: float
    longitude: float
    processes: list[str]
    materials: list[str]
    printer_models: list[str]
    build_volume_mm: list[float]
    capacity: int
    contact_email: str
    rates: dict[str, Any]
    status: str
    pop_public_key: str
    pop_jkt: str
    wrap_public_key: str
    wrap_kid: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Any) -> FacilityOut:
        return cls(**{f: getattr(row, f) for f in cls.__struct_fields__})


class FacilityApproved(Output):
    """An approved facility and its API token (shown once)."""

    facility: FacilityOut
    token: str


class CertificationIn(Input):
    facility_id: Annotated[str, Meta(min_length=1, max_length=40)]
    processes: Annotated[list[Process], Meta(min_length=1, max_length=5)]
    materials: Annotated[list[Material], Meta(min_length=1, max_length=100)]
    expires_at: datetime


class StatusChange(Input):
    reason: Reason = ""


class CertificationOut(Output):
    id: str
    brand_id: str
    facility_id: str
    processes: list[str]
    materials: list[str]
    expires_at: datetime
    status: str
    reason: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Any) -> CertificationOut:
        return cls(**{f: getattr(row, f) for f in cls.__struct_fields__})


# --- revisions ---------------------------------------------------------------


class RevisionOut(Output):
    """A stored design as its brand sees it: identity, checksum and full measurements."""

    id: str
    part_id: str
    number: int
    filename: str
    format: str
    size_bytes: int
    sha256: str
    units: str
    geometry: dict[str, Any]
    warnings: list[str]
    notes: str
    created_at: datetime
    shredded_at: datetime | None

    @classmethod
    def of(cls, row: Revision) -> RevisionOut:
        report = row.stats.get("report", {})
        return cls(
            id=row.id,
            part_id=row.part_id,
            number=row.number,
            filename=row.filename,
            format=row.format,
            size_bytes=row.size_bytes,
            sha256=row.sha256,
            units=row.units,
            geometry=report.get("stats", {}),
            warnings=list(report.get("warnings", [])),
            notes=row.notes,
            created_at=row.created_at,
            shredded_at=row.shredded_at,
        )


# --- licences and print jobs -------------------------------------------------

Prints = Annotated[int, Meta(ge=1, le=100_000)]


class LicenceIn(Input):
    facility_id: Annotated[str, Meta(min_length=1, max_length=40)]
    revision_id: Annotated[str, Meta(min_length=1, max_length=40)]
    prints: Prints
    expires_at: datetime
    not_before: datetime | None = None


class LicenceOut(Output):
    jti: str
    brand_id: str
    part_id: str
    revision_id: str
    facility_id: str
    order_id: str | None
    prints_total: int
    prints_used: int
    prints_remaining: int
    reprints_allowed: int
    reprints_used: int
    profile_hash: str
    not_before: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoke_reason: str
    created_at: datetime
    token: str

    @classmethod
    def of(cls, row: Any) -> LicenceOut:
        fields = {f: getattr(row, f) for f in cls.__struct_fields__ if f != "prints_remaining"}
        return cls(prints_remaining=row.prints_total - row.prints_used, **fields)


class RedeemIn(Input):
    licence: Annotated[str, Meta(min_length=10, max_length=8000)]


class PrintJobOut(Output):
    serial: str
    licence_jti: str
    facility_id: str
    part_id: str
    revision_id: str
    status: str
    failure_reason: str
    measurements: dict[str, Any]
    refunded: bool
    downloads: int
    created_at: datetime
    reported_at: datetime | None

    @classmethod
    def of(cls, row: Any) -> PrintJobOut:
        fields = {f: getattr(row, f) for f in cls.__struct_fields__ if f != "serial"}
        return cls(serial=f"{row.serial:016x}", **fields)


class PrintReport(Input):
    status: Literal["printed", "failed"]
    reason: Reason = ""
    measurements: Annotated[dict[Label, float], Meta(max_length=50)] = msgspec.field(
        default_factory=dict
    )


class BrandPolicy(Input):
    reprints_per_licence: Annotated[int, Meta(ge=0, le=100)]


class BrandPolicyOut(Output):
    brand_id: str
    reprints_per_licence: int


# --- tracing -----------------------------------------------------------------


class TraceResult(Output):
    """The print a leaked file came from, or found=false ("no mark found")."""

    found: bool
    p_value: float
    bit_error_rate: float
    serial: str | None = None
    licence_jti: str | None = None
    facility_id: str | None = None
    part_id: str | None = None
    revision_id: str | None = None
    redeemed_at: datetime | None = None

    @classmethod
    def of(cls, trace: Any) -> TraceResult:
        return cls(**{f: getattr(trace, f) for f in cls.__struct_fields__})
