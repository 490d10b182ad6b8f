"""First-start work done once before the server takes requests."""

from __future__ import annotations

import os

from api.config import Settings
from api.services import Services
from inventory.accounts import ensure_operator_token
from licensing.audit.signer import ensure_log_key
from licensing.tokens import ensure_signing_key
from migrations.runner import upgrade


def prepare(settings: Settings) -> str | None:
    """Create the data folder, apply migrations, create keys; return a new admin token.

    The operator token is returned only on the very first start (when none
    exists), so the caller prints it once and it is never shown again.
    """
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)
    upgrade(settings.database_url)
    services = Services.from_settings(settings)
    try:
        with services.transaction() as session:
            ensure_signing_key(session, services.keyring)
            ensure_log_key(session, services.keyring)
            return ensure_operator_token(session)
    finally:
        services.close()
