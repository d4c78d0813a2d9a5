"""matchmaker index in priority order

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 00:43:29.794121
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # the matchmaker orders by priority descending, then id: an index in that order lets
    # it read its batch's rows and stop, where (state, priority, id) made it sort them all
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_index('ix_job_state_priority')
        batch_op.create_index('ix_job_match_order',
                              ['state', sa.text('priority DESC'), 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_index('ix_job_match_order')
        batch_op.create_index('ix_job_state_priority', ['state', 'priority', 'id'],
                              unique=False)
