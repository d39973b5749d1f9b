"""Rate cards: messages say whether their price was reported or estimated (and by which
rate); billing_rollup keeps the price's origin as a key and counts unpriced messages

The rollup's trigger functions are replaced (same names and triggers as 0008) and the
rollup is made again from messages, in this migration's transaction.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

ORIGIN = ("CASE WHEN price_amount IS NULL THEN NULL WHEN price_estimate > 0 "
          "THEN 'rate_card' ELSE 'reported' END")
PARTS = "coalesce(sms_count, 1)"
AMOUNT = f"coalesce(price_amount * {PARTS}, 0)"
UNPRICED = "CASE WHEN price_amount IS NULL THEN 1 ELSE 0 END"
BUCKET = "date_bin('15 minutes', sent_at, timestamptz 'epoch')"


def delta(rows: str, sign: str, origin: bool = True) -> str:
    """One message's contribution to billing (as store.billing sums it), by its rollup key."""
    keys = f"{BUCKET} AS bucket, source, price_currency AS currency, operator, status"
    if not origin:  # 0008's
        return (f"SELECT {keys}, {sign}1 AS messages, {sign}{PARTS} AS parts, "
                f"{sign}{AMOUNT} AS amount FROM {rows} WHERE sent_at IS NOT NULL")
    return (f"SELECT {keys}, {ORIGIN} AS origin, {sign}1 AS messages, {sign}{PARTS} AS parts, "
            f"{sign}{AMOUNT} AS amount, {sign}{UNPRICED} AS unpriced "
            f"FROM {rows} WHERE sent_at IS NOT NULL")


def apply(parts: str, slot: str = "pg_backend_pid() % 16", origin: bool = True) -> str:
    """Add the summed deltas to the writer's own slot, in key order (no deadlock between
    two writers that share a slot)."""
    keys = "bucket, source, currency, operator, status" + (", origin" if origin else "")
    sums = "messages, parts, amount" + (", unpriced" if origin else "")
    changed = " OR ".join(f"sum({s}) <> 0" for s in sums.split(", "))
    added = ", ".join(f"{s} = r.{s} + excluded.{s}" for s in sums.split(", "))
    return f"""
    INSERT INTO billing_rollup AS r ({keys}, slot, {sums})
    SELECT {keys}, {slot}, {", ".join(f"sum({s})" for s in sums.split(", "))}
    FROM ({parts}) AS d
    GROUP BY {keys}
    HAVING {changed}
    ORDER BY {keys}
    ON CONFLICT ({keys}, slot) DO UPDATE SET {added}"""


def functions(origin: bool) -> dict[str, str]:
    return {
        "billing_rollup_inserted": apply(delta("new_rows", "+", origin), origin=origin),
        "billing_rollup_updated": apply(f"{delta('new_rows', '+', origin)} UNION ALL "
                                        f"{delta('old_rows', '-', origin)}", origin=origin),
        "billing_rollup_deleted": apply(delta("old_rows", "-", origin), origin=origin),
    }


def replace(origin: bool) -> None:
    """The trigger functions for this schema, and the rollup made again from messages."""
    for name, body in functions(origin).items():
        op.execute(f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                   f"BEGIN {body}; RETURN NULL; END $$")
    op.execute("LOCK TABLE messages IN SHARE MODE")
    op.execute("TRUNCATE billing_rollup")
    op.execute(apply(delta("messages", "+", origin), slot="0", origin=origin))


def upgrade() -> None:
    # Constant defaults: no table rewrite; what was merged before is a reported price.
    op.add_column('messages', sa.Column('price_estimate', sa.SmallInteger(),
                                        server_default='0', nullable=False))
    op.add_column('messages', sa.Column('price_rate', sa.Text(collation='C'), nullable=True))
    op.add_column('billing_rollup', sa.Column('origin', sa.Text(collation='C'), nullable=True))
    op.add_column('billing_rollup', sa.Column('unpriced', sa.BigInteger(), server_default='0',
                                              nullable=False))
    op.drop_index('uq_billing_rollup_key', table_name='billing_rollup')
    op.create_index('uq_billing_rollup_key', 'billing_rollup',
                    ['bucket', 'source', 'currency', 'operator', 'status', 'origin', 'slot'],
                    unique=True, postgresql_nulls_not_distinct=True)
    replace(origin=True)


def downgrade() -> None:
    # Estimates and counted parts are not values 0008 knows of: they go, so that nothing
    # estimated passes as reported.
    op.execute("UPDATE messages SET price_amount = NULL, price_currency = NULL, "
               "price_estimate = 0, price_rate = NULL WHERE price_estimate > 0")
    op.execute("UPDATE messages SET sms_count = NULL, registered = registered & ~16 "
               "WHERE registered & 16 <> 0")
    op.drop_index('uq_billing_rollup_key', table_name='billing_rollup')
    op.drop_column('billing_rollup', 'unpriced')
    op.drop_column('billing_rollup', 'origin')
    op.create_index('uq_billing_rollup_key', 'billing_rollup',
                    ['bucket', 'source', 'currency', 'operator', 'status', 'slot'],
                    unique=True, postgresql_nulls_not_distinct=True)
    op.drop_column('messages', 'price_rate')
    op.drop_column('messages', 'price_estimate')
    replace(origin=False)
