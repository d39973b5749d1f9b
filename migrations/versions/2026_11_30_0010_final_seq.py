"""messages.final_seq: the seq of the change that made a message final, so that each write
can count the messages it made final exactly once (service/store.py)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: no table rewrite. Messages already final keep null, so a later
    # report of theirs is never counted as making them final.
    op.add_column('messages', sa.Column('final_seq', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column('messages', 'final_seq')
