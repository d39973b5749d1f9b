"""Every message's country (ISO 3166 alpha-2 of `to`) in messages and as a billing_rollup
key; stored operator names made one per network

The country of a number is phonenumbers' region for it (service.rules.country): where
several regions share a calling code (+1, +7, +44...) it depends on the number's range, as
phonenumbers' metadata knows it, so it cannot be said in SQL. The upgrade reads each
distinct `to` once, in pages, and writes the country of its messages (a rewrite of every
row with an E.164 `to`: on a large table, plan for its time and space). Operator names
are then made one per network (service.rules.network_name: "NCell" from phonenumbers is
NETWORKS' "Ncell"), each renamed message with a new seq, so that the change feed passes
the new name on. The rollup's trigger functions are replaced (same names and triggers as
0008) and the rollup made again from messages, as 0011 did, in this migration's
transaction. Going back drops the country and keeps the names (they are names 0012 can
hold).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from service import rules

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

ORIGIN = ("CASE WHEN price_amount IS NULL THEN NULL WHEN price_estimate > 0 "
          "THEN 'rate_card' ELSE 'reported' END")
PARTS = "coalesce(sms_count, 1)"
AMOUNT = f"coalesce(price_amount * {PARTS}, 0)"
UNPRICED = "CASE WHEN price_amount IS NULL THEN 1 ELSE 0 END"
BUCKET = "date_bin('15 minutes', sent_at, timestamptz 'epoch')"
PAGE = 10_000  # distinct numbers read and written at a time


def keys(country: bool) -> str:
    return "bucket, source, currency, operator, status, origin" + (", country" if country else "")


def delta(rows: str, sign: str, country: bool) -> str:
    """One message's contribution to billing (as store.billing sums it), by its rollup key."""
    by = (f"{BUCKET} AS bucket, source, price_currency AS currency, operator, status, "
          f"{ORIGIN} AS origin" + (", country" if country else ""))
    return (f"SELECT {by}, {sign}1 AS messages, {sign}{PARTS} AS parts, {sign}{AMOUNT} AS amount, "
            f"{sign}{UNPRICED} AS unpriced FROM {rows} WHERE sent_at IS NOT NULL")


def apply(parts: str, country: bool, slot: str = "pg_backend_pid() % 16") -> str:
    """Add the summed deltas to the writer's own slot, in key order (no deadlock between
    two writers that share a slot)."""
    sums = ("messages", "parts", "amount", "unpriced")
    changed = " OR ".join(f"sum({s}) <> 0" for s in sums)
    added = ", ".join(f"{s} = r.{s} + excluded.{s}" for s in sums)
    return f"""
    INSERT INTO billing_rollup AS r ({keys(country)}, slot, {", ".join(sums)})
    SELECT {keys(country)}, {slot}, {", ".join(f"sum({s})" for s in sums)}
    FROM ({parts}) AS d
    GROUP BY {keys(country)}
    HAVING {changed}
    ORDER BY {keys(country)}
    ON CONFLICT ({keys(country)}, slot) DO UPDATE SET {added}"""


def functions(country: bool) -> dict[str, str]:
    return {
        "billing_rollup_inserted": apply(delta("new_rows", "+", country), country),
        "billing_rollup_updated": apply(f"{delta('new_rows', '+', country)} UNION ALL "
                                        f"{delta('old_rows', '-', country)}", country),
        "billing_rollup_deleted": apply(delta("old_rows", "-", country), country),
    }


def replace(country: bool) -> None:
    """The trigger functions for this schema, and the rollup made again from messages."""
    for name, body in functions(country).items():
        op.execute(f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                   f"BEGIN {body}; RETURN NULL; END $$")
    op.execute("LOCK TABLE messages IN SHARE MODE")
    op.execute("TRUNCATE billing_rollup")
    op.execute(apply(delta("messages", "+", country), country, slot="0"))


def rollup_key(country: bool) -> None:
    op.drop_index('uq_billing_rollup_key', table_name='billing_rollup')
    op.create_index('uq_billing_rollup_key', 'billing_rollup',
                    [*keys(country).split(", "), 'slot'],
                    unique=True, postgresql_nulls_not_distinct=True)


TEXTS = pg.ARRAY(sa.Text())
_NUMBERS = sa.text('SELECT DISTINCT "to" FROM messages WHERE "to" > :after AND "to" LIKE \'+%\' '
                   'ORDER BY "to" LIMIT :limit')
_SET_COUNTRY = sa.text(
    'UPDATE messages AS m SET country = v.country '
    'FROM unnest(CAST(:numbers AS text[]), CAST(:countries AS text[])) AS v("to", country) '
    'WHERE m."to" = v."to"'
).bindparams(sa.bindparam("numbers", type_=TEXTS), sa.bindparam("countries", type_=TEXTS))
_NAMES = sa.text("SELECT DISTINCT operator, country FROM messages WHERE operator IS NOT NULL")
_RENAME = sa.text(
    "UPDATE messages AS m SET operator = v.name, seq = nextval('messages_seq'), "
    "updated_at = now() "
    "FROM unnest(CAST(:operators AS text[]), CAST(:countries AS text[]), "
    "CAST(:names AS text[])) AS v(operator, country, name) "
    "WHERE m.operator = v.operator AND coalesce(m.country, '') = v.country"
).bindparams(*[sa.bindparam(n, type_=TEXTS) for n in ("operators", "countries", "names")])


def fill_countries(bind: sa.Connection) -> None:
    """Each distinct E.164 `to` once, in order, by pages: its messages get its country."""
    after = ""
    while numbers := bind.execute(_NUMBERS, {"after": after, "limit": PAGE}).scalars().all():
        found = [(n, c) for n in numbers if (c := rules.country(n)) is not None]
        if found:
            bind.execute(_SET_COUNTRY, {"numbers": [n for n, _ in found],
                                        "countries": [c for _, c in found]})
        after = numbers[-1]


def one_name_per_network(bind: sa.Connection) -> None:
    """Stored operator names as the merge names them now; each renamed row takes a new seq."""
    renamed = [(name, country or "", canonical) for name, country in bind.execute(_NAMES)
               if (canonical := rules.network_name(name, country)) != name]
    if renamed:
        bind.execute(_RENAME, {"operators": [r[0] for r in renamed],
                               "countries": [r[1] for r in renamed],
                               "names": [r[2] for r in renamed]})


def upgrade() -> None:
    op.add_column('messages', sa.Column('country', sa.Text(collation='C'), nullable=True))
    op.add_column('billing_rollup', sa.Column('country', sa.Text(collation='C'), nullable=True))
    rollup_key(country=True)
    # The rollup is made again below, so the rows rewritten here need not move it one by one
    # (and 0011's functions no longer fit its key).
    op.execute("ALTER TABLE messages DISABLE TRIGGER messages_billing_update")
    bind = op.get_bind()
    fill_countries(bind)
    one_name_per_network(bind)
    op.execute("ALTER TABLE messages ENABLE TRIGGER messages_billing_update")
    replace(country=True)


def downgrade() -> None:
    op.execute("TRUNCATE billing_rollup")  # its rows differ by country: made again below
    rollup_key(country=False)
    op.drop_column('billing_rollup', 'country')
    op.drop_column('messages', 'country')
    replace(country=False)
