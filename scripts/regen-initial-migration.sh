#!/usr/bin/env bash
# Until partvault's first release the schema lives in one initial migration:
# regenerate it from the models (run from the repo root, inside .venv).
set -euo pipefail
rm -f migrations/versions/0001_*.py
db=$(mktemp -u --suffix=.db)
python - "$db" <<'PY'
import sys
from alembic import command
from migrations.runner import alembic_config
command.revision(alembic_config(f"sqlite:///{sys.argv[1]}"), message="initial schema",
                 autogenerate=True, rev_id="0001")
PY
rm -f "$db"
ruff format -q migrations/versions
ruff check -q --fix migrations/versions
