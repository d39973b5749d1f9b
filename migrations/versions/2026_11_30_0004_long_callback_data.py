"""callbackData of up to 4000 characters stays indexable: messages indexed on its md5, and
outbound registrations keyed by a SHA-256 of it

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_messages_callback_data_source', table_name='messages')
    op.create_index('ix_messages_callback_data_md5', 'messages',
                    [sa.text('md5(callback_data)')], unique=False)
    op.add_column('outbound', sa.Column('callback_hash', sa.LargeBinary(), nullable=True))
    op.execute("UPDATE outbound SET callback_hash = sha256(convert_to(callback_data, 'UTF8'))"
               " WHERE callback_data IS NOT NULL")
    op.drop_index('uq_outbound_source_callback_data', table_name='outbound',
                  postgresql_where=sa.text('message_id IS NULL'))
    op.create_index('uq_outbound_source_callback_hash', 'outbound', ['source', 'callback_hash'],
                    unique=True, postgresql_where=sa.text('message_id IS NULL'))


def downgrade() -> None:
    op.drop_index('uq_outbound_source_callback_hash', table_name='outbound',
                  postgresql_where=sa.text('message_id IS NULL'))
    op.create_index('uq_outbound_source_callback_data', 'outbound', ['source', 'callback_data'],
                    unique=True, postgresql_where=sa.text('message_id IS NULL'))
    op.drop_column('outbound', 'callback_hash')
    op.drop_index('ix_messages_callback_data_md5', table_name='messages')
    op.create_index('ix_messages_callback_data_source', 'messages', ['callback_data', 'source'],
                    unique=False)
