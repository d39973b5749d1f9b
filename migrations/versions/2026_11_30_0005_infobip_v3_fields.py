"""What Infobip's v3 reports add: the status's advised action, the error's description, and
the platform entity, application and campaign reference of a message

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

COLUMNS = ('status_action', 'error_description', 'entity_id', 'application_id',
           'campaign_reference_id')


def upgrade() -> None:
    # nullable columns without a default: no table rewrite
    op.add_column('messages', sa.Column('status_action', sa.Text(), nullable=True))
    op.add_column('messages', sa.Column('error_description', sa.Text(), nullable=True))
    for name in COLUMNS[2:]:
        op.add_column('messages', sa.Column(name, sa.Text(collation='C'), nullable=True))


def downgrade() -> None:
    for name in reversed(COLUMNS):
        op.drop_column('messages', name)
