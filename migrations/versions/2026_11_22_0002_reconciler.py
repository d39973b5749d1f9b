"""reconciler runs, leases, pull cursors, outbound registrations; inbox.url

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('leases',
    sa.Column('source', sa.Text(collation='C'), nullable=False),
    sa.Column('holder', sa.Text(collation='C'), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('source', name=op.f('pk_leases'))
    )
    op.create_table('runs',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('source', sa.Text(collation='C'), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('pages', sa.Integer(), server_default='0', nullable=False),
    sa.Column('reports', sa.Integer(), server_default='0', nullable=False),
    sa.Column('changed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('rejected', sa.Integer(), server_default='0', nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('detail', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs'))
    )
    op.create_index('ix_runs_source_started_at', 'runs', ['source', 'started_at'], unique=False)
    op.create_table('pull_cursors',
    sa.Column('source', sa.Text(collation='C'), nullable=False),
    sa.Column('name', sa.Text(collation='C'), nullable=False),
    sa.Column('value', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('source', 'name', name=op.f('pk_pull_cursors'))
    )
    op.add_column('inbox', sa.Column('url', sa.Text(), nullable=True))
    op.create_table('outbound',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('source', sa.Text(collation='C'), nullable=False),
    sa.Column('message_id', sa.Text(collation='C'), nullable=True),
    sa.Column('callback_data', sa.Text(collation='C'), nullable=True),
    sa.Column('bulk_id', sa.Text(collation='C'), nullable=True),
    sa.Column('to', sa.Text(collation='C'), nullable=True),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('registered_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('message_id IS NOT NULL OR callback_data IS NOT NULL', name=op.f('ck_outbound_identified')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbound'))
    )
    op.create_index('ix_outbound_sent_at', 'outbound', ['sent_at'], unique=False)
    op.create_index('uq_outbound_source_callback_data', 'outbound', ['source', 'callback_data'], unique=True, postgresql_where=sa.text('message_id IS NULL'))
    op.create_index('uq_outbound_source_message_id', 'outbound', ['source', 'message_id'], unique=True, postgresql_where=sa.text('message_id IS NOT NULL'))


def downgrade() -> None:
    op.drop_table('outbound')
    op.drop_column('inbox', 'url')
    op.drop_table('pull_cursors')
    op.drop_index('ix_runs_source_started_at', table_name='runs')
    op.drop_table('runs')
    op.drop_table('leases')
