"""reconciler runs, leases, pull cursors; the URL a pulled body came from

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

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


def downgrade() -> None:
    op.drop_column('inbox', 'url')
    op.drop_table('pull_cursors')
    op.drop_index('ix_runs_source_started_at', table_name='runs')
    op.drop_table('runs')
    op.drop_table('leases')
