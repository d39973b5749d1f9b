"""A provider's report outranks a registration: messages.registered marks the descriptive
fields whose value only a registration gave

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows merged before this knew no rank: their values count as the provider's. A constant
    # default adds the column without rewriting the table.
    op.add_column('messages', sa.Column('registered', sa.SmallInteger(), server_default='0',
                                        nullable=False))


def downgrade() -> None:
    op.drop_column('messages', 'registered')
