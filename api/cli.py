"""The `partvault` command."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table

from api.config import Settings

if TYPE_CHECKING:  # the services pull in trimesh and scipy: seconds a quick command skips
    from api.client import Bureau
    from api.services import Services

console = Console(stderr=True)
#: A click command function, as the option decorators take and return it.
F = TypeVar("F", bound=Callable[..., Any])


@click.group()
def main() -> None:
    """partvault: a vault for eternal spare parts."""


@main.command()
@click.option("--host", help="bind address (PARTVAULT_HOST)")
@click.option("--port", type=int, help="bind port (PARTVAULT_PORT)")
@click.option("--workers", type=int, help="server processes (PARTVAULT_WORKERS)")
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    """Run the API server; on first start create everything it needs."""
    import uvicorn

    from api.bootstrap import prepare

    settings = Settings.from_env()
    token = prepare(settings)
    if token:
        _announce_admin_token(token)
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers or settings.workers,
        log_config=None,
        timeout_graceful_shutdown=30,
        server_header=False,
    )


def _announce_admin_token(token: str) -> None:
    console.print("[bold]partvault first start:[/] the operator's admin token (shown only once):")
    click.echo(token)
    console.print("Keep it safe. `partvault admin token --rotate` replaces it.")


@main.command()
def migrate() -> None:
    """Apply database migrations up to the latest."""
    from migrations.runner import upgrade

    upgrade(Settings.from_env().database_url)
    console.print("database is at the latest migration")


@main.group()
def config() -> None:
    """Configuration."""


@config.command("show")
def config_show() -> None:
    """Print every setting, its value and where it came from."""
    table = Table("variable", "value", "from", "meaning")
    for row in Settings.from_env().describe():
        table.add_row(*row)
    Console().print(table)


@main.group()
def admin() -> None:
    """Operator commands run on the server host."""


@admin.command("token")
@click.option(
    "--rotate", is_flag=True, required=True, help="revoke the admin token, print a new one"
)
def admin_token(rotate: bool) -> None:
    """Replace the operator's admin token (the old one stops working at once)."""
    from api.bootstrap import prepare
    from api.services import Services
    from inventory.accounts import rotate_operator_token

    settings = Settings.from_env()
    prepare(settings)
    services = Services.from_settings(settings)
    with services.transaction() as session:
        token = rotate_operator_token(session)
    services.close()
    click.echo(token)


def _local_services() -> Services:
    """Services for operator commands run on the server host (migrations applied)."""
    from api.bootstrap import prepare
    from api.services import Services

    settings = Settings.from_env()
    prepare(settings)
    return Services.from_settings(settings)


@main.group()
def keys() -> None:
    """Key-encryption and signing keys (run on the server host)."""


@keys.command("rotate")
def keys_rotate() -> None:
    """Add a new KEK version and re-wrap every data and signing key; designs are untouched."""
    from inventory.accounts import rewrap_watermark_keys
    from inventory.designs import rewrap_data_keys
    from licensing.audit.signer import rewrap_log_keys
    from licensing.tokens.signing import rewrap_signing_keys

    services = _local_services()
    version = services.keyring.rotate()
    with services.transaction() as session:
        designs = rewrap_data_keys(session, services.keyring)
        signing = rewrap_signing_keys(session, services.keyring)
        rewrap_watermark_keys(session, services.keyring)
        rewrap_log_keys(session, services.keyring)
        append_system_event(session, "inventory:kek:rotated", {"version": version})
    services.close()
    console.print(
        f"KEK version {version} is current; re-wrapped {designs} data keys "
        f"and {signing} signing keys"
    )


@keys.command("rotate-signing")
def keys_rotate_signing() -> None:
    """Make a new licence signing key current; the old one verifies until its licences expire."""
    from sqlmodel import Session

    from licensing.tokens import rotate_signing_key

    services = _local_services()
    with Session(services.engine) as session:
        kid = rotate_signing_key(session, services.keyring)
    with services.transaction() as session:
        append_system_event(session, "licensing:signing_key:rotated", {"kid": kid})
    services.close()
    click.echo(kid)


@keys.command("rotate-checkpoint")
def keys_rotate_checkpoint() -> None:
    """Hand the audit log over to a new checkpoint key; prints its verifier key.

    Brands need not re-pin: `audit verify` follows the handover checkpoint,
    which both keys sign, from either key.
    """
    from licensing.audit.signer import rotate_log_key

    services = _local_services()
    with services.transaction() as session:
        verifier_key = rotate_log_key(
            session, services.keyring, services.audit_origin, actor="operator:cli"
        )
    services.close()
    click.echo(verifier_key)


def append_system_event(session: Any, kind: str, facts: dict[str, Any]) -> None:
    from licensing.audit import AuditEvent, append_event

    append_event(session, AuditEvent(type=kind, actor="operator:cli", facts=facts))


@main.group()
def licence() -> None:
    """Licences."""


@licence.command("verify")
@click.argument("token")
@click.option("--jwks", "jwks_file", type=click.File("r"), required=True, help="saved JWKS")
@click.option("--crl", "crl_file", type=click.File("r"), help="saved revocation list")
@click.option("--issuer", help="expected issuer (the partvault base URL)")
def licence_verify(token: str, jwks_file: Any, crl_file: Any, issuer: str | None) -> None:
    """Check a licence's signature, claims and expiry offline, without the server."""
    import json

    from inventory.db import utcnow
    from inventory.errors import PartvaultError
    from licensing.tokens import verify_offline

    try:
        claims = verify_offline(
            token.strip(),
            json.load(jwks_file),
            issuer=issuer,
            now=utcnow(),
            revocation_list=crl_file.read().strip() if crl_file else None,
        )
    except PartvaultError as exc:
        console.print(f"[red]INVALID[/] {exc.code}: {exc.detail}")
        sys.exit(1)
    table = Table("claim", "value")
    for name in (
        "jti",
        "issuer",
        "facility_id",
        "brand_id",
        "part_id",
        "revision_id",
        "design_sha256",
        "prints",
        "print_profile_hash",
        "facility_jkt",
        "not_before",
        "expires_at",
        "kid",
    ):
        table.add_row(name, str(getattr(claims, name)))
    Console().print(table)
    console.print("[green]VALID[/]")


@main.group()
def bureau() -> None:
    """Tools for print bureaus (run on the bureau's machine)."""


@bureau.command("keygen")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
def bureau_keygen(directory: Path) -> None:
    """Create the facility's Ed25519 (proof) and RSA (key wrapping) key pairs, private 0600."""
    from licensing.delivery import generate_facility_keys

    paths = generate_facility_keys(directory)
    for label, path in (
        ("Ed25519 private", paths.ed25519_private),
        ("Ed25519 public ", paths.ed25519_public),
        ("RSA private    ", paths.rsa_private),
        ("RSA public     ", paths.rsa_public),
    ):
        console.print(f"{label}  {path}")
    console.print(f"RSA key id (thumbprint): {paths.rsa_thumbprint}")


def _facility_key_option(help_text: str) -> Callable[[F], F]:
    """``--key``: one of the facility's private key files (PEM)."""
    return click.option(
        "--key",
        "key_path",
        required=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help=help_text,
    )


@bureau.command("open")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_facility_key_option("the facility's RSA private key (PEM)")
@click.option(
    "-o",
    "--output",
    "out_path",
    required=True,
    type=click.Path(path_type=Path),
    help="out.3mf or out.stl",
)
def bureau_open(file: Path, key_path: Path, out_path: Path) -> None:
    """Decrypt a delivered design locally for slicing; no partial file on failure."""
    from inventory.errors import PartvaultError
    from licensing.delivery import open_delivery

    try:
        result = open_delivery(file, key_path, out_path)
    except PartvaultError as exc:
        console.print(f"[red]cannot open[/] {exc.code}: {exc.detail}")
        sys.exit(1)
    console.print(f"wrote {result.out_path}: {result.triangles} triangles")


@bureau.command("redeem")
@click.argument("licence_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_facility_key_option("the facility's Ed25519 private key (PEM): it signs the proofs")
@click.option("--prints", default=1, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--download",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    help="also fetch each print's design (3MF Secure Content) into this folder",
)
@click.option(
    "--retries", default=5, show_default=True, type=click.IntRange(0, 20), help="per print"
)
@click.option("--url", envvar="PARTVAULT_URL", default="http://127.0.0.1:8000", show_default=True)
@click.option("--token", envvar="PARTVAULT_TOKEN", required=True, help="the facility's token")
def bureau_redeem(
    licence_file: Path,
    key_path: Path,
    prints: int,
    folder: Path | None,
    retries: int,
    url: str,
    token: str,
) -> None:
    """Redeem prints of a licence one by one (and fetch their designs).

    The licence is checked against the server's published keys first. Each
    print is safe to retry: it keeps one Idempotency-Key over its attempts, so
    a lost answer is asked for again without counting a second print. Stops at
    the first refusal (exit 1), e.g. when no print is left.
    """
    import httpx

    from inventory.db import utcnow
    from licensing.tokens import verify_offline

    with _bureau_refusals():
        try:
            bureau = _bureau(url, token, key_path)
            licence = licence_file.read_text().strip()
            jwks = bureau.client.json("GET", "/.well-known/jwks.json")
            claims = verify_offline(licence, jwks, now=utcnow())
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
            for done in range(1, prints + 1):
                job = bureau.redeem(claims.jti, licence, retries=retries)
                line = f"print {done}/{prints} of {claims.jti}: serial {job['serial']}"
                if folder is not None:
                    line += f" -> {bureau.download(job['serial'], folder)}"
                click.echo(line)
        except httpx.TransportError as exc:
            _exit_with(
                f"no answer from {url} ({type(exc).__name__}) after {retries + 1} attempts: "
                "the last print may have been counted; GET /v1/jobs lists the facility's jobs"
            )


@bureau.command("download")
@click.argument("serial")
@_facility_key_option("the facility's Ed25519 private key (PEM): it signs the proof")
@click.option(
    "--to",
    "folder",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="folder for <serial>.3mf",
)
@click.option("--url", envvar="PARTVAULT_URL", default="http://127.0.0.1:8000", show_default=True)
@click.option("--token", envvar="PARTVAULT_TOKEN", required=True, help="the facility's token")
def bureau_download(serial: str, key_path: Path, folder: Path, url: str, token: str) -> None:
    """Fetch a redeemed print's design again (each fetch counts against the job's limit)."""
    with _bureau_refusals():
        bureau = _bureau(url, token, key_path)
        folder.mkdir(parents=True, exist_ok=True)
        click.echo(str(bureau.download(serial, folder)))


def _bureau(url: str, token: str, key_path: Path) -> Bureau:
    """The facility's side of the API, signing proofs with the key in `key_path`."""
    from api.client import Bureau, Client
    from licensing.delivery import load_ed25519_private_key

    return Bureau(Client(url, token), url, token, load_ed25519_private_key(key_path))


@contextmanager
def _bureau_refusals() -> Iterator[None]:
    """A refusal (the server's problem or a bad key or licence file) exits 1 with its code."""
    from api.client import ApiError
    from inventory.errors import PartvaultError

    try:
        yield
    except ApiError as exc:
        _exit_with(f"refused: {exc}")
    except PartvaultError as exc:
        _exit_with(f"refused: {exc.code}: {exc.detail}")


def _exit_with(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(1)


@main.group()
def storage() -> None:
    """Object storage maintenance (run on the server host)."""


@storage.command("reconcile")
@click.option("--grace", default=3600, show_default=True, help="seconds an orphan may live")
@click.option("--dry-run", is_flag=True, help="list orphans without removing them")
def storage_reconcile(grace: int, dry_run: bool) -> None:
    """Remove objects no revision points at; flag revisions whose object is missing."""
    from datetime import timedelta

    from inventory.designs import reconcile

    services = _local_services()
    with services.transaction() as session:
        report = reconcile(session, services.store, grace=timedelta(seconds=grace), dry_run=dry_run)
    services.close()
    verb = "would remove" if dry_run else "removed"
    for key in report.orphans_removed:
        console.print(f"{verb} orphan {key}")
    for key in report.orphans_young:
        console.print(f"kept young orphan {key} (inside the grace period)")
    for revision in report.missing_objects:
        console.print(f"[red]MISSING[/] object of revision {revision}")
    console.print(
        f"{len(report.orphans_removed)} orphans {verb}, "
        f"{len(report.missing_objects)} revisions missing their object"
    )
    if report.missing_objects:
        sys.exit(2)


@main.group()
def database() -> None:
    """Database maintenance (run on the server host)."""


@database.command("prune")
def database_prune() -> None:
    """Delete expired proof identifiers and Idempotency-Keys now (the server also
    does every PARTVAULT_PRUNE_INTERVAL seconds)."""
    from api.housekeeping import prune

    services = _local_services()
    try:
        pruned = prune(services)
    finally:
        services.close()
    for table, count in pruned.items():
        click.echo(f"{table}: {count} expired rows deleted")


@main.group()
def parts() -> None:
    """Parts (client commands; PARTVAULT_URL and PARTVAULT_TOKEN select server and brand)."""


@parts.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--part", "sku", required=True, help="the part's SKU")
@click.option(
    "--unit",
    type=click.Choice(["micron", "millimeter", "centimeter", "meter", "inch", "foot"]),
    help="unit of an STL/OBJ",
)
@click.option("--allow-open", is_flag=True, help="accept a design that is not a closed solid")
@click.option("--notes", default="", help="revision notes")
@click.option("--url", envvar="PARTVAULT_URL", default="http://127.0.0.1:8000", show_default=True)
@click.option("--token", envvar="PARTVAULT_TOKEN", required=True, help="a brand token")
def parts_upload(
    file: Path, sku: str, unit: str | None, allow_open: bool, notes: str, url: str, token: str
) -> None:
    """Upload FILE as a new revision of the part, streaming with a progress bar."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from api.client import ApiError, Client, file_chunks

    client = Client(url, token)
    params: dict[str, Any] = {"filename": file.name, "allow_open": allow_open, "notes": notes}
    if unit:
        params["unit"] = unit
    try:
        part = _part_by_sku(client, sku)
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task(file.name, total=file.stat().st_size)
            revision = client.json(
                "POST",
                f"/v1/parts/{part['id']}/revisions",
                params=params,
                content=file_chunks(file, lambda n: progress.advance(task, n)),
                headers={
                    "content-type": "application/octet-stream",
                    "content-length": str(file.stat().st_size),
                },
            )
    except ApiError as exc:
        console.print(f"[red]refused[/] {exc}")
        sys.exit(1)
    geometry = revision["geometry"]
    console.print(f"revision {revision['number']} ({revision['id']}) sha256 {revision['sha256']}")
    console.print(
        f"{geometry['triangles']} triangles, {geometry['volume_mm3']:.1f} mm³, "
        f"watertight={geometry['watertight']}"
    )


@main.command("trace")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--url", envvar="PARTVAULT_URL", default="http://127.0.0.1:8000", show_default=True)
@click.option("--token", envvar="PARTVAULT_TOKEN", required=True, help="a brand token")
def trace(file: Path, url: str, token: str) -> None:
    """Find which print job, licence and facility a leaked STL/3MF/OBJ came from."""
    from api.client import ApiError, Client, file_chunks

    try:
        result = Client(url, token).json(
            "POST",
            "/v1/trace",
            params={"filename": file.name},
            content=file_chunks(file),
            headers={"content-type": "application/octet-stream"},
        )
    except ApiError as exc:
        console.print(f"[red]refused[/] {exc}")
        sys.exit(1)
    if not result["found"]:
        console.print(f"no mark found (best p-value {result['p_value']:.3g})")
        sys.exit(3)
    table = Table("field", "value")
    for name in (
        "serial",
        "licence_jti",
        "facility_id",
        "part_id",
        "revision_id",
        "redeemed_at",
        "p_value",
    ):
        table.add_row(name, str(result[name]))
    Console().print(table)


def _part_by_sku(client: Any, sku: str) -> dict[str, Any]:
    cursor = None
    while True:
        page = client.json(
            "GET", "/v1/parts", params={"limit": 200} | ({"cursor": cursor} if cursor else {})
        )
        for part in page["items"]:
            if part["sku"] == sku:
                return dict(part)
        cursor = page["next_cursor"]
        if cursor is None:
            raise click.ClickException(f"no part with SKU {sku!r}")


# ---------------------------------------------------------------------------
# Audit log and print reports (issue 8): client commands over PARTVAULT_URL /
# PARTVAULT_TOKEN. Kept together at the end; `audit verify` and `report prints`.
# ---------------------------------------------------------------------------


@main.group()
def audit() -> None:
    """The tamper-evident audit log (client commands; PARTVAULT_URL and PARTVAULT_TOKEN)."""


def _audit_entries(client: Any, page: int) -> Any:
    """Every entry as (index, body or None, leaf hash), fetched page by page."""
    import base64

    start: int | None = 0
    while start is not None:
        answer = client.json("GET", "/v1/audit/entries", params={"start": start, "limit": page})
        for item in answer["items"]:
            body = base64.b64decode(item["body"]) if item.get("body") is not None else None
            yield int(item["index"]), body, base64.b64decode(item["leaf_hash"])
        start = answer["next_start"]


@audit.command("verify")
@click.option(
    "--since",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="the checkpoint saved by the last run: the log must still extend it",
)
@click.option(
    "--save",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write the latest verified checkpoint here (pass it as --since next time)",
)
@click.option("--key", "pinned_key", help="the pinned verifier key (name+keyid+base64key)")
@click.option("--page", default=1000, show_default=True, help="entries per request (1-1000)")
@click.option("--url", envvar="PARTVAULT_URL", default="http://127.0.0.1:8000", show_default=True)
@click.option("--token", envvar="PARTVAULT_TOKEN", required=True, help="a brand or operator token")
def audit_verify(
    since: Path | None, save: Path | None, pinned_key: str | None, page: int, url: str, token: str
) -> None:
    """Fetch the whole log and its signed checkpoints and verify them offline.

    Exits 1 on any mismatch (an edited, deleted, inserted or reordered entry, a
    bad signature, a history that no longer extends --since).
    """
    from api.client import ApiError, Client
    from licensing.audit import AuditVerificationError, verify_log

    client = Client(url, token)
    try:
        served = client.json("GET", "/v1/audit/key")["verifier_key"]
        if pinned_key is None:
            key = served
            click.echo(
                "warning: no --key given: trusting the server's key on first use; "
                f"pin it next time with --key {served}",
                err=True,
            )
        else:
            key = pinned_key.strip()
        client.request("GET", "/v1/audit/checkpoint")  # sign the current size if it grew
        notes = [c["signed_note"] for c in client.json("GET", "/v1/audit/checkpoints")["items"]]
        old = since.read_text() if since is not None else None
        report = verify_log(_audit_entries(client, page), notes, key, old)
    except ApiError as exc:
        click.echo(f"refused: {exc}", err=True)
        sys.exit(1)
    except AuditVerificationError as exc:
        click.echo(f"FAILED {exc.code}: {exc}", err=True)
        sys.exit(1)
    if served != key:
        handed_over = served in report.keys
        click.echo(
            f"note: the log was handed over to key {served} (pin it from now on)"
            if handed_over
            else "warning: the server now announces another key",
            err=True,
        )
    latest = report.latest
    click.echo(
        f"OK {latest.origin}: {report.entries} entries ({report.bodies_checked} bodies "
        f"checked, {report.redacted} redacted), {report.checkpoints_verified} checkpoints "
        f"verified; latest size {latest.size} time {latest.time}"
    )
    if report.since_size is not None:
        click.echo(f"consistent with the saved checkpoint at size {report.since_size}")
    if report.uncovered:
        click.echo(f"{report.uncovered} entries appended after the latest checkpoint")
    if save is not None:
        save.write_text(latest.note)


@main.group()
def report() -> None:
    """Reports for brands (client commands; PARTVAULT_URL and PARTVAULT_TOKEN)."""


@report.command("prints")
@click.option("--from", "start", required=True, help="first day, YYYY-MM-DD (UTC)")
@click.option("--to", "end", required=True, help="last day, YYYY-MM-DD (UTC, inclusive)")
@click.option(
    "--group", type=click.Choice(["part", "facility", "month"]), default="part", show_default=True
)
@click.option(
    "--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True
)
@click.option("--brand-id", help="the brand (operator tokens only)")
@click.option("--url", envvar="PARTVAULT_URL", default="http://127.0.0.1:8000", show_default=True)
@click.option("--token", envvar="PARTVAULT_TOKEN", required=True, help="a brand or operator token")
def report_prints(
    start: str, end: str, group: str, fmt: str, brand_id: str | None, url: str, token: str
) -> None:
    """Prints, failures and royalties per part, facility or month, counted from the audit log."""
    from api.client import ApiError, Client

    params = {"from": start, "to": end, "group_by": group, "format": fmt}
    if brand_id:
        params["brand_id"] = brand_id
    try:
        answer = Client(url, token).request("GET", "/v1/reports/prints", params=params)
    except ApiError as exc:
        click.echo(f"refused: {exc}", err=True)
        sys.exit(1)
    click.echo(answer.text, nl=not answer.text.endswith("\n"))


if __name__ == "__main__":
    sys.exit(main())
