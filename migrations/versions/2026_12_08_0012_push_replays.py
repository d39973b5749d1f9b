"""push_replays: signed pushes already kept, by their scheme's unique key, until their
window ends, so a replay is recognised and not kept again (service/api/webhooks.py); and
an index of the messages left at an intermediate status, which the reconciler closes once
their window has passed

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'push_replays',
        sa.Column('source', sa.Text(collation='C'), nullable=False),
        sa.Column('key', sa.LargeBinary(), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('source', 'key', name=op.f('pk_push_replays')),
    )
    op.create_index(op.f('ix_push_replays_expires_at'), 'push_replays', ['expires_at'])
    op.create_index('ix_messages_intermediate', 'messages', ['source'],
                    postgresql_where=sa.text("NOT final AND status <> 'PENDING'"))


def downgrade() -> None:
    op.drop_index('ix_messages_intermediate', table_name='messages')
    op.drop_index(op.f('ix_push_replays_expires_at'), table_name='push_replays')
    op.drop_table('push_replays')
