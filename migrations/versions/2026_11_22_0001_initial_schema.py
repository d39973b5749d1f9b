"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22

The raw inbox, merged messages with their change sequence, and the status history.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One global change sequence: every change to a merged row takes its next value.
    op.execute(sa.schema.CreateSequence(sa.Sequence("messages_seq")))
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
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inbox'))
    )
    op.create_index('ix_inbox_rejected', 'inbox', ['id'], unique=False, postgresql_where=sa.text("state != 'accepted'"))
    op.create_index('ix_inbox_source_received_at', 'inbox', ['source', 'received_at'], unique=False)
    op.create_table('message_history',
    sa.Column('source', sa.Text(collation='C'), nullable=False),
    sa.Column('message_id', sa.Text(collation='C'), nullable=False),
    sa.Column('obs_hash', sa.LargeBinary(), nullable=False),
    sa.Column('channel', sa.Text(collation='C'), nullable=False),
    sa.Column('status', sa.Text(collation='C'), nullable=False),
    sa.Column('status_id', sa.Integer(), nullable=True),
    sa.Column('status_name', sa.Text(), nullable=True),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('observed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('source', 'message_id', 'obs_hash', 'channel', name=op.f('pk_message_history'))
    )
    op.create_table('messages',
    sa.Column('source', sa.Text(collation='C'), nullable=False),
    sa.Column('message_id', sa.Text(collation='C'), nullable=False),
    sa.Column('status', sa.Text(collation='C'), nullable=False),
    sa.Column('final', sa.Boolean(), nullable=False),
    sa.Column('obs_hash', sa.LargeBinary(), nullable=False),
    sa.Column('status_id', sa.Integer(), nullable=True),
    sa.Column('status_name', sa.Text(), nullable=True),
    sa.Column('status_description', sa.Text(), nullable=True),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error_group_id', sa.Integer(), nullable=True),
    sa.Column('error_group_name', sa.Text(), nullable=True),
    sa.Column('error_id', sa.Integer(), nullable=True),
    sa.Column('error_name', sa.Text(), nullable=True),
    sa.Column('error_permanent', sa.Boolean(), nullable=True),
    sa.Column('to', sa.Text(collation='C'), nullable=True),
    sa.Column('bulk_id', sa.Text(collation='C'), nullable=True),
    sa.Column('sender', sa.Text(collation='C'), nullable=True),
    sa.Column('callback_data', sa.Text(collation='C'), nullable=True),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('sms_count', sa.Integer(), nullable=True),
    sa.Column('price_amount', sa.Numeric(), nullable=True),
    sa.Column('price_currency', sa.Text(collation='C'), nullable=True),
    sa.Column('mcc_mnc', sa.Text(collation='C'), nullable=True),
    sa.Column('operator', sa.Text(collation='C'), nullable=True),
    sa.Column('text', sa.Text(collation='C'), nullable=True),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('source', 'message_id', name=op.f('pk_messages'))
    )
    op.create_index('ix_messages_seq', 'messages', ['seq'], unique=False)
    op.create_index('ix_messages_source_bulk_id', 'messages', ['source', 'bulk_id'], unique=False)
    op.create_index('ix_messages_source_callback_data', 'messages', ['source', 'callback_data'], unique=False)
    op.create_index('ix_messages_to', 'messages', ['to'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_messages_to', table_name='messages')
    op.drop_index('ix_messages_source_callback_data', table_name='messages')
    op.drop_index('ix_messages_source_bulk_id', table_name='messages')
    op.drop_index('ix_messages_seq', table_name='messages')
    op.drop_table('messages')
    op.drop_table('message_history')
    op.drop_index('ix_inbox_source_received_at', table_name='inbox')
    op.drop_index('ix_inbox_rejected', table_name='inbox', postgresql_where=sa.text("state != 'accepted'"))
    op.drop_table('inbox')
    op.execute(sa.schema.DropSequence(sa.Sequence("messages_seq")))
