"""Billing independent of the table's size: billing_rollup, kept per quarter hour by
statement triggers on messages from each change's old and new rows

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

# One message's contribution to billing (as store.billing sums it), by its rollup key.
CONTRIBUTION = """
    date_bin('15 minutes', sent_at, timestamptz 'epoch') AS bucket, source,
    price_currency AS currency, operator, status"""
PARTS = "coalesce(sms_count, 1)"
AMOUNT = f"coalesce(price_amount * {PARTS}, 0)"


def delta(rows: str, sign: str) -> str:
    return (f"SELECT {CONTRIBUTION}, {sign}1 AS messages, {sign}{PARTS} AS parts, "
            f"{sign}{AMOUNT} AS amount FROM {rows} WHERE sent_at IS NOT NULL")


def apply(parts: str) -> str:
    """Add the summed deltas to the writer's own slot, in key order (no deadlock between
    two writers that share a slot)."""
    return f"""
    INSERT INTO billing_rollup AS r
        (bucket, source, currency, operator, status, slot, messages, parts, amount)
    SELECT bucket, source, currency, operator, status, pg_backend_pid() % 16,
           sum(messages), sum(parts), sum(amount)
    FROM ({parts}) AS d
    GROUP BY bucket, source, currency, operator, status
    HAVING sum(messages) <> 0 OR sum(parts) <> 0 OR sum(amount) <> 0
    ORDER BY bucket, source, currency, operator, status
    ON CONFLICT (bucket, source, currency, operator, status, slot) DO UPDATE SET
        messages = r.messages + excluded.messages, parts = r.parts + excluded.parts,
        amount = r.amount + excluded.amount"""


FUNCTIONS = {
    "billing_rollup_inserted": apply(delta("new_rows", "+")),
    "billing_rollup_updated": apply(f"{delta('new_rows', '+')} UNION ALL {delta('old_rows', '-')}"),
    "billing_rollup_deleted": apply(delta("old_rows", "-")),
}
TRIGGERS = {  # trigger: (event, transition tables, function)
    "messages_billing_insert": ("INSERT", "NEW TABLE AS new_rows", "billing_rollup_inserted"),
    "messages_billing_update": ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows",
                                "billing_rollup_updated"),
    "messages_billing_delete": ("DELETE", "OLD TABLE AS old_rows", "billing_rollup_deleted"),
}


def upgrade() -> None:
    op.create_table(
        'billing_rollup',
        sa.Column('bucket', sa.DateTime(timezone=True), nullable=False),
        sa.Column('source', sa.Text(collation='C'), nullable=False),
        sa.Column('currency', sa.Text(collation='C'), nullable=True),
        sa.Column('operator', sa.Text(collation='C'), nullable=True),
        sa.Column('status', sa.Text(collation='C'), nullable=False),
        sa.Column('slot', sa.SmallInteger(), nullable=False),
        sa.Column('messages', sa.BigInteger(), nullable=False),
        sa.Column('parts', sa.BigInteger(), nullable=False),
        sa.Column('amount', sa.Numeric(), nullable=False),
    )
    op.create_index('uq_billing_rollup_key', 'billing_rollup',
                    ['bucket', 'source', 'currency', 'operator', 'status', 'slot'],
                    unique=True, postgresql_nulls_not_distinct=True)
    op.create_index('ix_messages_sent_at', 'messages', ['sent_at'])
    for name, body in FUNCTIONS.items():
        op.execute(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                   f"BEGIN {body}; RETURN NULL; END $$")
    for name, (event, tables, function) in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} AFTER {event} ON messages REFERENCING {tables} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()")
    # what is already merged: counted once, as if inserted now
    op.execute(apply(delta("messages", "+")).replace("pg_backend_pid() % 16", "0"))


def downgrade() -> None:
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON messages")
    for name in FUNCTIONS:
        op.execute(f"DROP FUNCTION {name}()")
    op.drop_index('ix_messages_sent_at', table_name='messages')
    op.drop_index('uq_billing_rollup_key', table_name='billing_rollup')
    op.drop_table('billing_rollup')
