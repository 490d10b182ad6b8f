"""The migrations build exactly the models, on both backends."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command

from migrations.runner import alembic_config, check, upgrade


def test_upgrade_head_matches_models_without_drift(db_url):
    upgrade(db_url)
    check(db_url)  # raises when autogenerate would emit any operation
    engine = sa.create_engine(db_url)
    names = set(sa.inspect(engine).get_table_names())
    engine.dispose()
    assert {"brand", "api_token", "part", "print_profile", "revision"} <= names


def test_constraint_names_follow_the_convention(db_url):
    upgrade(db_url)
    engine = sa.create_engine(db_url)
    inspector = sa.inspect(engine)
    uniques = {u["name"] for u in inspector.get_unique_constraints("part")}
    foreign = {f["name"] for f in inspector.get_foreign_keys("part")}
    engine.dispose()
    assert "uq_part_brand_id_sku" in uniques
    assert "fk_part_brand_id_brand" in foreign


def test_0002_gives_existing_licences_their_parts_rate(world):
    """Licences issued before rates were kept take their part's rate on upgrade."""
    licence = world.licence()
    url = world.api.settings.database_url
    world.api.client.app.state.services.engine.dispose()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE part SET royalty_per_print_cents = 275, currency = 'CHF' WHERE id = :p"
            ),
            {"p": world.part["id"]},
        )
    command.downgrade(alembic_config(url), "0001")
    upgrade(url)
    check(url)
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT royalty_per_print_cents, currency FROM licence WHERE jti = :j"),
            {"j": licence["jti"]},
        ).one()
    engine.dispose()
    assert tuple(row) == (275, "CHF")
