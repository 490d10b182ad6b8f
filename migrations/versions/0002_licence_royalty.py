"""licence royalty: the part's rate when the licence was issued

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 23:58:00

A part's royalty may change; a licence keeps the rate in force when it was
issued, so reports of past prints do not change with it. Existing licences
take their part's rate at the time of the upgrade (the best that is known).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("licence", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("royalty_per_print_cents", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("currency", sa.String(length=3), nullable=False, server_default="EUR")
        )
    part = sa.table(
        "part",
        sa.column("id", sa.String),
        sa.column("royalty_per_print_cents", sa.Integer),
        sa.column("currency", sa.String),
    )
    licence = sa.table(
        "licence",
        sa.column("part_id", sa.String),
        sa.column("royalty_per_print_cents", sa.Integer),
        sa.column("currency", sa.String),
    )
    of_part = part.c.id == licence.c.part_id
    op.execute(
        licence.update().values(
            royalty_per_print_cents=sa.select(part.c.royalty_per_print_cents)
            .where(of_part)
            .scalar_subquery(),
            currency=sa.select(part.c.currency).where(of_part).scalar_subquery(),
        )
    )
    with op.batch_alter_table("licence", schema=None) as batch_op:
        batch_op.alter_column("royalty_per_print_cents", server_default=None)
        batch_op.alter_column("currency", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("licence", schema=None) as batch_op:
        batch_op.drop_column("currency")
        batch_op.drop_column("royalty_per_print_cents")
