"""The migrations build exactly the schema service/tables.py describes."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from service import db


def test_migrations_match_the_tables(database_url: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(db.migrations_dir()))
    config.attributes["database_url"] = database_url
    command.check(config)  # raises when autogenerate would find a difference
