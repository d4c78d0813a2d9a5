"""What the monitor last read of each site's batch system (siteread)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 00:35:20.774158
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('siteread',
    sa.Column('site', sa.String(length=100), nullable=False),
    sa.Column('credential', sa.String(length=1000), nullable=True),
    sa.Column('read_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error', sa.String(length=1000), nullable=True),
    sa.Column('error_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('site')
    )


def downgrade() -> None:
    op.drop_table('siteread')
