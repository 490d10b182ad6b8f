"""The migrations build exactly the models, on both backends."""

from __future__ import annotations

import sqlalchemy as sa

from migrations.runner import check, upgrade


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
