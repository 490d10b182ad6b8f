"""Settings, all read from ``PARTVAULT_*`` environment variables.

With no variable set, partvault runs on embedded defaults under
``./partvault-data/``: a SQLite database, a local object folder and a local
key-ring file. Each setting is documented in README and printed by
``partvault config show``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


@dataclass(frozen=True)
class Setting:
    env: str
    help: str
    default: Callable[[Path], str]


def _data(sub: str) -> Callable[[Path], str]:
    return lambda data_dir: str(data_dir / sub)


SETTINGS: dict[str, Setting] = {
    "data_dir": Setting("PARTVAULT_DATA_DIR", "folder for embedded defaults", lambda d: str(d)),
    "database_url": Setting(
        "PARTVAULT_DATABASE_URL",
        "SQLAlchemy URL: sqlite:///file.db or postgresql+psycopg://user@host/db",
        lambda d: f"sqlite:///{d / 'partvault.db'}",
    ),
    "object_store_url": Setting(
        "PARTVAULT_OBJECT_STORE",
        "file:///abs/folder or s3://bucket/prefix?endpoint_url=…&region=…",
        lambda d: (d / "objects").resolve().as_uri(),
    ),
    "keyring_url": Setting(
        "PARTVAULT_KEYRING",
        "file:///abs/keyring.json or kms://?key_id=…&region=…&endpoint_url=…",
        lambda d: (d / "keys" / "keyring.json").resolve().as_uri(),
    ),
    "host": Setting("PARTVAULT_HOST", "bind address", lambda d: "127.0.0.1"),
    "port": Setting("PARTVAULT_PORT", "bind port", lambda d: "8000"),
    "workers": Setting("PARTVAULT_WORKERS", "server processes", lambda d: "1"),
    "public_url": Setting(
        "PARTVAULT_PUBLIC_URL",
        "external base URL (licence issuer, proof htu)",
        lambda d: "http://127.0.0.1:8000",
    ),
    "database_pool_size": Setting(
        "PARTVAULT_DATABASE_POOL_SIZE",
        "PostgreSQL connections kept per server process (up to twice as many in bursts)",
        lambda d: "5",
    ),
    "max_upload_bytes": Setting(
        "PARTVAULT_MAX_UPLOAD_BYTES", "largest design upload", lambda d: str(100 * 1000 * 1000)
    ),
    "max_triangles": Setting("PARTVAULT_MAX_TRIANGLES", "most triangles", lambda d: "2000000"),
    "max_json_bytes": Setting(
        "PARTVAULT_MAX_JSON_BYTES", "largest JSON request body", lambda d: str(MIB)
    ),
    "max_downloads": Setting(
        "PARTVAULT_MAX_DOWNLOADS", "times a print job's design may be fetched", lambda d: "3"
    ),
    "log_level": Setting("PARTVAULT_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR", lambda d: "INFO"),
    "webhook_dispatcher": Setting(
        "PARTVAULT_WEBHOOK_DISPATCHER", "send queued webhooks from this process", lambda d: "on"
    ),
    "webhook_allow_http": Setting(
        "PARTVAULT_WEBHOOK_ALLOW_HTTP",
        "accept http:// and internal webhook URLs (development and tests only)",
        lambda d: "off",
    ),
    "webhook_retry_delays": Setting(
        "PARTVAULT_WEBHOOK_RETRY_DELAYS",
        "seconds before each webhook retry, comma-separated (the last repeats)",
        lambda d: "0,5,300,1800,7200,18000,36000",
    ),
    "webhook_timeout": Setting(
        "PARTVAULT_WEBHOOK_TIMEOUT", "seconds to wait for a webhook receiver", lambda d: "10"
    ),
    "webhook_poll_interval": Setting(
        "PARTVAULT_WEBHOOK_POLL_INTERVAL", "seconds between idle outbox polls", lambda d: "1"
    ),
    "group_commit": Setting(
        "PARTVAULT_GROUP_COMMIT",
        "where a server process commits its issuance and redemption batches:"
        " process (a committing process of its own) or thread",
        lambda d: "process",
    ),
    "prune_interval": Setting(
        "PARTVAULT_PRUNE_INTERVAL",
        "seconds between deletions of expired proof identifiers and Idempotency-Keys (0: never)",
        lambda d: "300",
    ),
}

INT_SETTINGS = {
    "port",
    "workers",
    "database_pool_size",
    "max_upload_bytes",
    "max_triangles",
    "max_json_bytes",
    "max_downloads",
}
BOOL_SETTINGS = {"webhook_dispatcher", "webhook_allow_http"}
FLOAT_SETTINGS = {"webhook_timeout", "webhook_poll_interval", "prune_interval"}
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}
CHOICES = {"group_commit": ("process", "thread")}


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    object_store_url: str
    keyring_url: str
    host: str
    port: int
    workers: int
    public_url: str
    database_pool_size: int
    max_upload_bytes: int
    max_triangles: int
    max_json_bytes: int
    max_downloads: int
    log_level: str
    webhook_dispatcher: bool
    webhook_allow_http: bool
    webhook_retry_delays: tuple[float, ...]
    webhook_timeout: float
    webhook_poll_interval: float
    group_commit: str
    prune_interval: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        data_dir = Path(env.get("PARTVAULT_DATA_DIR", "partvault-data")).resolve()
        values: dict[str, Any] = {}
        for name, setting in SETTINGS.items():
            raw = env.get(setting.env) or setting.default(data_dir)
            values[name] = _convert(name, raw)
        values["data_dir"] = data_dir
        values.update(overrides)
        return cls(**values)

    def describe(self) -> list[tuple[str, str, str, str]]:
        """(variable, value, source, help) rows for `partvault config show`."""
        rows = []
        for f in fields(self):
            setting = SETTINGS[f.name]
            source = "env" if setting.env in os.environ else "default"
            rows.append((setting.env, str(getattr(self, f.name)), source, setting.help))
        return rows


def _convert(name: str, raw: str) -> Any:
    if name in BOOL_SETTINGS:
        return _boolean(name, raw)
    if name in FLOAT_SETTINGS:
        return _seconds(name, raw)
    if name in CHOICES:
        return _choice(name, raw)
    if name == "webhook_retry_delays":
        return tuple(_seconds(name, part) for part in raw.split(","))
    if name not in INT_SETTINGS:
        return raw
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{SETTINGS[name].env} must be an integer, got {raw!r}") from None
    if value < 0:
        raise SystemExit(f"{SETTINGS[name].env} must not be negative")
    return value


def _boolean(name: str, raw: str) -> bool:
    word = raw.strip().lower()
    if word not in TRUE_WORDS | FALSE_WORDS:
        raise SystemExit(f"{SETTINGS[name].env} must be on or off, got {raw!r}")
    return word in TRUE_WORDS


def _choice(name: str, raw: str) -> str:
    word = raw.strip().lower()
    if word not in CHOICES[name]:
        raise SystemExit(
            f"{SETTINGS[name].env} must be one of {', '.join(CHOICES[name])}, got {raw!r}"
        )
    return word


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{SETTINGS[name].env} must be seconds, got {raw!r}") from None
    if not 0 <= value < 10**7:
        raise SystemExit(f"{SETTINGS[name].env} must be between 0 and 10^7 seconds")
    return value
