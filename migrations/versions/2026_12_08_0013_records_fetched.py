"""runs.records_fetched: the records (reports, messages, batches …) each pass's pages held,
pages seen before too, so that a provider's per-record charge per pass is on record

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('runs', sa.Column('records_fetched', sa.Integer(), server_default='0',
                                    nullable=False))


def downgrade() -> None:
    op.drop_column('runs', 'records_fetched')
