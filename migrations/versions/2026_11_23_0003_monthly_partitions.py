"""inbox and message_history partitioned by month, each with a DEFAULT partition;
messages' secondary indexes no longer led by source

The rows move into the new tables' DEFAULT partitions; `dlr-reconciler migrate` (and the
reconciler, hourly) then gives each month its own partition (service/retention.py).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

INBOX_COLUMNS = "id, source, channel, received_at, content_type, body, state, accepted, rejected, reason, url"
HISTORY_COLUMNS = "source, message_id, obs_hash, channel, status, status_id, status_name, done_at, observed_at"


def _set_aside(table: str, indexes: tuple[str, ...]) -> None:
    """Rename `table` to `<table>_old`, freeing its constraint, index and sequence names."""
    op.execute(f"ALTER TABLE {table} RENAME TO {table}_old")
    op.execute(f"ALTER TABLE {table}_old DROP CONSTRAINT pk_{table}")
    for index in indexes:
        op.execute(f"DROP INDEX {index}")


def _inbox_table(partitioned: bool) -> None:
    op.create_table('inbox',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('source', sa.Text(collation='C'), nullable=False),
    sa.Column('channel', sa.Text(collation='C'), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('content_type', sa.Text(), nullable=True),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('state', sa.Text(collation='C'), nullable=False),
    sa.Column('accepted', sa.Integer(), nullable=False),
    sa.Column('rejected', sa.Integer(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('url', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', *(['received_at'] if partitioned else []), name=op.f('pk_inbox')),
    **({'postgresql_partition_by': 'RANGE (received_at)'} if partitioned else {}),
    )
    op.create_index('ix_inbox_rejected', 'inbox', ['id'], unique=False, postgresql_where=sa.text("state != 'accepted'"))
    op.create_index('ix_inbox_source_received_at', 'inbox', ['source', 'received_at'], unique=False)


def _history_table(partitioned: bool) -> None:
    op.create_table('message_history',
    sa.Column('source', sa.Text(collation='C'), nullable=False),
    sa.Column('message_id', sa.Text(collation='C'), nullable=False),
    sa.Column('obs_hash', sa.LargeBinary(), nullable=False),
    sa.Column('channel', sa.Text(collation='C'), nullable=False),
    *([sa.Column('sent_month', sa.DateTime(timezone=True), nullable=False)] if partitioned else []),
    sa.Column('status', sa.Text(collation='C'), nullable=False),
    sa.Column('status_id', sa.Integer(), nullable=True),
    sa.Column('status_name', sa.Text(), nullable=True),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('observed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('source', 'message_id', 'obs_hash', 'channel',
                            *(['sent_month'] if partitioned else []), name=op.f('pk_message_history')),
    **({'postgresql_partition_by': 'RANGE (sent_month)'} if partitioned else {}),
    )


def _restart_identity() -> None:
    op.execute("SELECT setval(pg_get_serial_sequence('inbox', 'id'), max(id)) FROM inbox HAVING max(id) IS NOT NULL")


def upgrade() -> None:
    _set_aside('inbox', ('ix_inbox_rejected', 'ix_inbox_source_received_at'))
    op.execute("ALTER TABLE inbox_old ALTER COLUMN id DROP IDENTITY")
    _inbox_table(partitioned=True)
    op.execute("CREATE TABLE inbox_default PARTITION OF inbox DEFAULT")
    op.execute(f"INSERT INTO inbox ({INBOX_COLUMNS}) SELECT {INBOX_COLUMNS} FROM inbox_old")
    _restart_identity()
    op.drop_table('inbox_old')

    _set_aside('message_history', ())
    _history_table(partitioned=True)
    op.execute("CREATE TABLE message_history_default PARTITION OF message_history DEFAULT")
    op.execute(f"""
        INSERT INTO message_history ({HISTORY_COLUMNS}, sent_month)
        SELECT h.*, date_trunc('month', coalesce(m.sent_at, h.done_at, h.observed_at), 'UTC')
        FROM message_history_old h
        LEFT JOIN messages m ON m.source = h.source AND m.message_id = h.message_id""")
    op.drop_table('message_history_old')

    _index_messages(source_first=False)


def _index_messages(source_first: bool) -> None:
    """(source, x) indexes compete with the primary key for look-ups by id; (x, source) not."""
    for column in ('bulk_id', 'callback_data'):
        wanted, unwanted = ['source', column], [column, 'source']
        if not source_first:
            wanted, unwanted = unwanted, wanted
        op.drop_index(f"ix_messages_{'_'.join(unwanted)}", table_name='messages')
        op.create_index(f"ix_messages_{'_'.join(wanted)}", 'messages', wanted, unique=False)


def downgrade() -> None:
    _index_messages(source_first=True)

    _set_aside('inbox', ('ix_inbox_rejected', 'ix_inbox_source_received_at'))
    op.execute("ALTER TABLE inbox_old ALTER COLUMN id DROP IDENTITY")
    _inbox_table(partitioned=False)
    op.execute(f"INSERT INTO inbox ({INBOX_COLUMNS}) SELECT {INBOX_COLUMNS} FROM inbox_old")
    _restart_identity()
    op.execute("DROP TABLE inbox_old CASCADE")

    _set_aside('message_history', ())
    _history_table(partitioned=False)
    op.execute(f"INSERT INTO message_history ({HISTORY_COLUMNS}) SELECT {HISTORY_COLUMNS} "
               "FROM message_history_old ON CONFLICT DO NOTHING")
    op.execute("DROP TABLE message_history_old CASCADE")
