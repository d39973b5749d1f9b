"""A message's parts seen by their own ids (messages.part_ids), so that one delivery receipt
per part (Vonage) merges into one message with its part count

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: added without rewriting the table.
    op.add_column('messages', sa.Column('part_ids', sa.Text(collation='C'), nullable=True))


def downgrade() -> None:
    op.drop_column('messages', 'part_ids')
