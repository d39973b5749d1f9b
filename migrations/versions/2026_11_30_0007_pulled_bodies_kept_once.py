"""A pulled body fetched again unchanged is kept once: pull_bodies remembers the body last
kept per URL, inbox_sightings records each time it was seen again, and runs count the
bytes fetched and kept

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'pull_bodies',
        sa.Column('source', sa.Text(collation='C'), nullable=False),
        sa.Column('url_hash', sa.LargeBinary(), nullable=False),
        sa.Column('body_hash', sa.LargeBinary(), nullable=False),
        sa.Column('inbox_id', sa.BigInteger(), nullable=False),
        sa.Column('kept_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('etag', sa.Text(), nullable=True),
        sa.Column('last_modified', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('source', 'url_hash', name=op.f('pk_pull_bodies')),
    )
    op.create_table(
        'inbox_sightings',
        sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('inbox_id', sa.BigInteger(), nullable=False),
        sa.Column('source', sa.Text(collation='C'), nullable=False),
        sa.Column('run_id', sa.BigInteger(), nullable=True),
        sa.Column('not_modified', sa.Boolean(), nullable=False),
        sa.Column('seen_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_inbox_sightings')),
    )
    op.create_index('ix_inbox_sightings_inbox_id', 'inbox_sightings', ['inbox_id'])
    op.create_index('ix_inbox_sightings_seen_at', 'inbox_sightings', ['seen_at'])
    for name in ('bytes_fetched', 'bytes_kept'):
        op.add_column('runs', sa.Column(name, sa.BigInteger(), server_default='0',
                                        nullable=False))
    op.add_column('runs', sa.Column('resighted', sa.Integer(), server_default='0',
                                    nullable=False))


def downgrade() -> None:
    for name in ('resighted', 'bytes_kept', 'bytes_fetched'):
        op.drop_column('runs', name)
    op.drop_table('inbox_sightings')
    op.drop_table('pull_bodies')
