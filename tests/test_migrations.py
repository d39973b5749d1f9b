"""The migrations build exactly the schema service/tables.py describes."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from service import db
from tests.databases import scratch_database

ROOT = Path(__file__).parent.parent


def test_migrations_match_the_tables(database_url: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(db.migrations_dir()))
    config.attributes["database_url"] = database_url
    command.check(config)  # raises when autogenerate would find a difference


def test_registration_rank_upgrades_and_downgrades_with_rows_in_place(server_url: str) -> None:
    """0006 adds messages.registered (0: what was merged before counts as the provider's)."""
    async def columns(url: str, insert: bool) -> list[object]:
        conn = await asyncpg.connect(url)
        try:
            if insert:
                await conn.execute("INSERT INTO messages (source, message_id, status, final,"
                                   " obs_hash, seq) VALUES ('ib', 'm1', 'PENDING', false, 'h', 1)")
            return [row[0] for row in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name ="
                " 'messages' AND column_name = 'registered'")] + [
                await conn.fetchval("SELECT count(*) FROM messages")]
        finally:
            await conn.close()

    with scratch_database(server_url, migrated=False) as url:
        config = Config()
        config.set_main_option("script_location", str(db.migrations_dir()))
        config.attributes["database_url"] = db.asyncpg_url(url)
        command.upgrade(config, "0005")
        assert asyncio.run(columns(url, insert=True)) == [1]
        command.upgrade(config, "0006")
        assert asyncio.run(columns(url, insert=False)) == ["registered", 1]
        command.downgrade(config, "0005")
        assert asyncio.run(columns(url, insert=False)) == [1]
        command.upgrade(config, "head")
        command.check(config)


def test_a_new_database_looks_messages_up_by_their_key(server_url: str) -> None:
    """A generic plan made before any statistics exist (a new deployment) must still use
    the primary key for a look-up by id, not another index that starts with `source`."""
    async def plan(url: str) -> str:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            await conn.execute("PREPARE by_id(text, text) AS"
                               " SELECT * FROM messages WHERE source = $1 AND message_id = $2")
            return "\n".join(row[0] for row in await conn.fetch("EXPLAIN EXECUTE by_id('a', 'b')"))
        finally:
            await conn.close()

    with scratch_database(server_url) as url:
        explained = asyncio.run(plan(url))
    assert "pk_messages" in explained and "Filter" not in explained, explained


def test_rate_cards_upgrade_and_downgrade_with_rows_in_place(server_url: str) -> None:
    """0011 keeps what was merged as reported and rebuilds the rollup by origin; going back
    drops the estimates (never left to pass as reported prices) and rebuilds it again."""
    async def run(url: str, sql: str) -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(url)
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()

    columns = "source, message_id, status, final, obs_hash, seq, sent_at, sms_count"
    values = "'ib', '{}', 'DELIVERED', true, 'h', {}, '2026-11-01T10:00:00Z', 2"
    with scratch_database(server_url, migrated=False) as url:
        config = Config()
        config.set_main_option("script_location", str(db.migrations_dir()))
        config.attributes["database_url"] = db.asyncpg_url(url)
        command.upgrade(config, "0010")
        asyncio.run(run(url, f"INSERT INTO messages ({columns}, price_amount, price_currency) "
                             f"VALUES ({values.format('r', 1)}, 0.5, 'EUR')"))
        command.upgrade(config, "0011")
        assert asyncio.run(run(url, "SELECT origin, messages, amount, unpriced FROM "
                                    "billing_rollup")) == [("reported", 1, Decimal("1.0"), 0)]
        asyncio.run(run(url, f"INSERT INTO messages ({columns}, price_amount, price_currency, "
                             f"price_estimate, price_rate) VALUES ({values.format('e', 2)}, "
                             """0.25, 'NPR', 2, '{"country":"NP"}')"""))
        command.downgrade(config, "0010")
        assert asyncio.run(run(url, "SELECT message_id, price_amount FROM messages ORDER BY 1")) \
            == [("e", None), ("r", Decimal("0.5"))]
        assert asyncio.run(run(url, "SELECT currency, messages, amount FROM billing_rollup "
                                    "ORDER BY currency")) == [
            ("EUR", 1, Decimal("1.0")), (None, 1, Decimal("0"))]
        command.upgrade(config, "head")
        command.check(config)


def test_countries_and_network_names_upgrade_and_downgrade_with_rows_in_place(
        server_url: str) -> None:
    """0014 gives every stored message its country from `to` and one name per network (a
    renamed one with a new seq), and rebuilds the rollup by country; going back drops the
    country from both and rebuilds it again."""
    async def run(url: str, sql: str) -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(url)
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()

    columns = "source, message_id, status, final, obs_hash, sent_at, seq, \"to\", operator"
    rows = [("dice", "n", 1, "+9779801912821", "NCell"),  # phonenumbers' spelling of Ncell
            ("ib", "c", 2, "+41793026727", "Swisscom"),
            ("ib", "x", 3, "98625000000", None),  # a national number of unknown region
            ("sinch", "s", 4, "+9779801912822", "42902"),  # Sinch says the MCC+MNC
            ("ib", "u", 5, "+41793026834", "NCell")]  # a Swiss network's name: not Nepal's
    values = ", ".join(
        f"('{source}', '{mid}', 'DELIVERED', true, 'h', '2026-11-01T10:00:00Z', {seq}, "
        f"'{to}', {repr(name) if name else 'NULL'})" for source, mid, seq, to, name in rows)
    with scratch_database(server_url, migrated=False) as url:
        config = Config()
        config.set_main_option("script_location", str(db.migrations_dir()))
        config.attributes["database_url"] = db.asyncpg_url(url)
        before = ScriptDirectory.from_config(config).get_revision("0014").down_revision
        assert isinstance(before, str)
        command.upgrade(config, before)
        asyncio.run(run(url, f"INSERT INTO messages ({columns}) VALUES {values}"))
        asyncio.run(run(url, "SELECT setval('messages_seq', 5)"))  # as the merge took them
        command.upgrade(config, "0014")
        found = asyncio.run(run(url, "SELECT message_id, country, operator, seq > 5 FROM "
                                     "messages ORDER BY message_id"))
        assert found == [("c", "CH", "Swisscom", False), ("n", "NP", "Ncell", True),
                         ("s", "NP", "Ncell", True), ("u", "CH", "NCell", False),
                         ("x", None, None, False)]
        rolled = ("SELECT {} operator, sum(messages)::int FROM billing_rollup "
                  "GROUP BY {} operator ORDER BY {} operator")
        assert asyncio.run(run(url, rolled.format(*["country,"] * 3))) == [
            ("CH", "NCell", 1), ("CH", "Swisscom", 1), ("NP", "Ncell", 2), (None, None, 1)]
        command.downgrade(config, before)
        assert asyncio.run(run(url, "SELECT count(*)::int FROM information_schema.columns "
                                    "WHERE column_name = 'country'")) == [(0,)]
        assert asyncio.run(run(url, rolled.format(*[""] * 3))) == [
            ("NCell", 1), ("Ncell", 2), ("Swisscom", 1), (None, 1)]
        command.upgrade(config, "head")
        command.check(config)


def test_rollback_runs_as_the_readme_writes_it(server_url: str) -> None:
    """Each `alembic … downgrade <rev>` of the README, run by a shell from the checkout with
    the placeholders filled in (and this test's venv for `.venv`), moves the schema down."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    documented = re.findall(r"`((?:DLR_DATABASE_URL=postgresql://… )?\.venv/bin/alembic "
                            r"[^`]*downgrade <rev>)`", readme)
    assert len(documented) == 2, documented
    revision = {"DLR_DATABASE_URL": "0011", "-x dburl": "0010"}

    async def at(url: str) -> str:
        conn = await asyncpg.connect(url)
        try:
            return str(await conn.fetchval("SELECT version_num FROM alembic_version"))
        finally:
            await conn.close()

    env = {k: v for k, v in os.environ.items() if k != "DLR_DATABASE_URL"}
    with scratch_database(server_url) as url:
        for command in documented:
            rev = next(r for key, r in revision.items() if key in command)
            line = (command.replace("postgresql://…", shlex.quote(url))
                    .replace(".venv/bin/alembic", shlex.quote(str(Path(sys.executable).parent
                                                                  / "alembic")))
                    .replace("<rev>", rev))
            done = subprocess.run(["sh", "-c", line], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=120, check=False)
            assert done.returncode == 0, done.stderr
            assert asyncio.run(at(url)) == rev
        missing = subprocess.run([str(Path(sys.executable).parent / "alembic"), "downgrade",
                                  "0009"], cwd=ROOT, env=env, capture_output=True, text=True,
                                 timeout=120, check=False)
        assert missing.returncode != 0
        assert missing.stderr.strip().splitlines()[-1].startswith(
            "no database URL: give -x dburl=postgresql://")
