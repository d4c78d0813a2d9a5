"""where placed jobs are in the job tally

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 00:35:48.417799

The job tally keeps the site and queue of the jobs placed at sites (assigned, queued,
running, staging), so a site's backlog and a production's jobs per site are read from it,
not counted over the jobs table. The rows of those states are recounted from the jobs
once: the tally is exact, so the recount replaces them without changing any total.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

PLACED = "('assigned', 'queued', 'running', 'staging')"


def upgrade() -> None:
    with op.batch_alter_table('jobtally', schema=None) as batch_op:
        batch_op.add_column(sa.Column('site', sa.String(length=100), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('queue', sa.String(length=100), nullable=False,
                                      server_default=''))
    op.execute(f"DELETE FROM jobtally WHERE state IN {PLACED}")
    op.execute("INSERT INTO jobtally (production_id, state, site, queue, jobs, events) "
               "SELECT production_id, state, COALESCE(site, ''), queue, COUNT(*), "
               f"SUM(events) FROM job WHERE state IN {PLACED} "
               "GROUP BY production_id, state, COALESCE(site, ''), queue")


def downgrade() -> None:
    with op.batch_alter_table('jobtally', schema=None) as batch_op:
        batch_op.drop_column('queue')
        batch_op.drop_column('site')
