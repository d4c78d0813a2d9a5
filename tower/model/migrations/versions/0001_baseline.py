"""The schema of the last gridtower before migrations (main at dfc9b16).

On a database gridtower made before it had migrations, only the tables it lacks are made,
as those releases made missing tables at start; `tower db upgrade` then checks that every
column of this revision is there before stamping it (tower/model/migrate.py).

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


#: The tables PostgreSQL vacuums often at this revision (tower/model/db.py's HOT_TABLES then;
#: a migration that adds one to HOT_TABLES sets it on that table itself).
HOT_TABLES = ("job", "attempt", "output", "queuemessage", "pilot", "jobtally", "activity")


def missing(table: str) -> bool:
    return not sa.inspect(op.get_bind()).has_table(table)


def upgrade() -> None:
    if missing("activity"):
        op.create_table('activity',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('production_id', sa.Integer(), nullable=False),
        sa.Column('site', sa.String(length=100), nullable=False),
        sa.Column('bucket', sa.BigInteger(), nullable=False),
        sa.Column('kind', sa.String(length=40), nullable=False),
        sa.Column('code', sa.Integer(), nullable=False),
        sa.Column('count', sa.BigInteger(), nullable=False),
        sa.Column('events', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id')
        )
        with op.batch_alter_table('activity', schema=None) as batch_op:
            batch_op.create_index('ix_activity_production_bucket', ['production_id', 'bucket'], unique=False)
            batch_op.create_index('ix_activity_site_bucket', ['site', 'bucket'], unique=False)
    if missing("factorydecision"):
        op.create_table('factorydecision',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('site', sa.String(length=100), nullable=False),
        sa.Column('queue', sa.String(length=100), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('demand', sa.Integer(), nullable=False),
        sa.Column('pending', sa.Integer(), nullable=False),
        sa.Column('running', sa.Integer(), nullable=False),
        sa.Column('draining', sa.Integer(), nullable=False),
        sa.Column('submit', sa.Integer(), nullable=False),
        sa.Column('cancel', sa.Integer(), nullable=False),
        sa.Column('note', sa.String(length=1000), nullable=False),
        sa.PrimaryKeyConstraint('id')
        )
        with op.batch_alter_table('factorydecision', schema=None) as batch_op:
            batch_op.create_index('ix_factorydecision_site_queue_id', ['site', 'queue', 'id'], unique=False)
    if missing("jobevent"):
        op.create_table('jobevent',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('job_id', sa.Integer(), nullable=False),
        sa.Column('production_id', sa.Integer(), nullable=False),
        sa.Column('from_state', sa.Enum('defined', 'assigned', 'queued', 'running', 'staging', 'done', 'failed', 'cancelled', 'held', name='jobstate', native_enum=False, length=20), nullable=False),
        sa.Column('to_state', sa.Enum('defined', 'assigned', 'queued', 'running', 'staging', 'done', 'failed', 'cancelled', 'held', name='jobstate', native_enum=False, length=20), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('reason', sa.String(length=500), nullable=False),
        sa.PrimaryKeyConstraint('id')
        )
        with op.batch_alter_table('jobevent', schema=None) as batch_op:
            batch_op.create_index('ix_jobevent_job_id_id', ['job_id', 'id'], unique=False)
    if missing("jobtally"):
        op.create_table('jobtally',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('production_id', sa.Integer(), nullable=False),
        sa.Column('state', sa.Enum('defined', 'assigned', 'queued', 'running', 'staging', 'done', 'failed', 'cancelled', 'held', name='jobstate', native_enum=False, length=20), nullable=False),
        sa.Column('jobs', sa.BigInteger(), nullable=False),
        sa.Column('events', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id')
        )
        with op.batch_alter_table('jobtally', schema=None) as batch_op:
            batch_op.create_index('ix_jobtally_production_state', ['production_id', 'state'], unique=False)
    if missing("notification"):
        op.create_table('notification',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('production_id', sa.Integer(), nullable=False),
        sa.Column('event', sa.String(length=40), nullable=False),
        sa.Column('occurrence', sa.String(length=100), nullable=False),
        sa.Column('target', sa.String(length=100), nullable=False),
        sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column('state', sa.String(length=20), nullable=False),
        sa.Column('tries', sa.Integer(), nullable=False),
        sa.Column('next_try_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('lease_owner', sa.String(length=64), nullable=True),
        sa.Column('last_error', sa.String(length=500), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('production_id', 'event', 'occurrence', 'target')
        )
        with op.batch_alter_table('notification', schema=None) as batch_op:
            batch_op.create_index('ix_notification_state_next_try', ['state', 'next_try_at'], unique=False)
    if missing("pilot"):
        op.create_table('pilot',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('site', sa.String(length=100), nullable=False),
        sa.Column('queue', sa.String(length=100), nullable=False),
        sa.Column('state', sa.Enum('submitted', 'running', 'draining', 'done', 'lost', name='pilotstate', native_enum=False, length=20), nullable=False),
        sa.Column('batch_id', sa.String(length=100), nullable=True),
        sa.Column('slots', sa.Integer(), nullable=False),
        sa.Column('walltime', sa.Integer(), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=True),
        sa.Column('log_path', sa.String(length=1000), nullable=True),
        sa.Column('message', sa.String(length=500), nullable=True),
        sa.Column('submitted_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('registered_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id')
        )
        with op.batch_alter_table('pilot', schema=None) as batch_op:
            batch_op.create_index('ix_pilot_site_state', ['site', 'state'], unique=False)
    if missing("presence"):
        op.create_table('presence',
        sa.Column('name', sa.String(length=20), nullable=False),
        sa.Column('since', sa.DateTime(timezone=True), nullable=False),
        sa.Column('seen', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name')
        )
    if missing("production"):
        op.create_table('production',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('parent', sa.String(length=200), nullable=True),
        sa.Column('state', sa.Enum('requested', 'rejected', 'trial', 'approval', 'active', 'paused', 'cancelled', name='productionstate', native_enum=False, length=20), nullable=False),
        sa.Column('priority', sa.Integer(), nullable=False),
        sa.Column('group', sa.String(length=100), nullable=False),
        sa.Column('trial_jobs', sa.Integer(), nullable=False),
        sa.Column('full_run', sa.Boolean(), nullable=False),
        sa.Column('requested_by', sa.String(length=300), nullable=True),
        sa.Column('decided_by', sa.String(length=300), nullable=True),
        sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('decision_note', sa.String(length=1000), nullable=True),
        sa.Column('trial_report', sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        sa.Column('queue', sa.String(length=100), nullable=False),
        sa.Column('events_total', sa.BigInteger(), nullable=False),
        sa.Column('events_per_job', sa.Integer(), nullable=False),
        sa.Column('dataset', sa.String(length=300), nullable=False),
        sa.Column('template_hash', sa.String(length=64), nullable=False),
        sa.Column('spec', sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column('origins', sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column('inputs', sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id')
        )
        with op.batch_alter_table('production', schema=None) as batch_op:
            batch_op.create_index(batch_op.f('ix_production_name'), ['name'], unique=True)
    if missing("queuemessage"):
        op.create_table('queuemessage',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('queue', sa.String(length=200), nullable=False),
        sa.Column('body', sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column('leased_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('lease_owner', sa.String(length=64), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id')
        )
        with op.batch_alter_table('queuemessage', schema=None) as batch_op:
            batch_op.create_index('ix_queuemessage_queue_lease', ['queue', 'leased_until', 'id'], unique=False)
    if missing("retrydecision"):
        op.create_table('retrydecision',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('job_id', sa.Integer(), nullable=False),
        sa.Column('production_id', sa.Integer(), nullable=False),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('actor', sa.String(length=200), nullable=False),
        sa.Column('policy', sa.String(length=100), nullable=True),
        sa.Column('rule', sa.String(length=100), nullable=True),
        sa.Column('outcome', sa.String(length=40), nullable=True),
        sa.Column('action', sa.String(length=40), nullable=False),
        sa.Column('passive', sa.Boolean(), nullable=False),
        sa.Column('delay', sa.Integer(), nullable=False),
        sa.Column('reason', sa.String(length=500), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id')
        )
        with op.batch_alter_table('retrydecision', schema=None) as batch_op:
            batch_op.create_index(batch_op.f('ix_retrydecision_job_id'), ['job_id'], unique=False)
            batch_op.create_index('ix_retrydecision_production_id', ['production_id', 'id'], unique=False)
    if missing("sitehealth"):
        op.create_table('sitehealth',
        sa.Column('site', sa.String(length=100), nullable=False),
        sa.Column('cooldown_until', sa.DateTime(timezone=True), nullable=False),
        sa.Column('reason', sa.String(length=1000), nullable=False),
        sa.Column('since', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('site')
        )
    if missing("sitequeue"):
        op.create_table('sitequeue',
        sa.Column('site', sa.String(length=100), nullable=False),
        sa.Column('queue', sa.String(length=100), nullable=False),
        sa.Column('last_error', sa.String(length=1000), nullable=True),
        sa.Column('last_error_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('site', 'queue')
        )
    if missing("stagein"):
        op.create_table('stagein',
        sa.Column('lfn', sa.String(length=1000), nullable=False),
        sa.Column('destination', sa.String(length=100), nullable=False),
        sa.Column('done', sa.Boolean(), nullable=False),
        sa.Column('tries', sa.Integer(), nullable=False),
        sa.Column('next_try_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_error', sa.String(length=500), nullable=True),
        sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('lfn', 'destination')
        )
    if missing("dataset"):
        op.create_table('dataset',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=300), nullable=False),
        sa.Column('production_id', sa.Integer(), nullable=True),
        sa.Column('meta', sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['production_id'], ['production.id'], ),
        sa.PrimaryKeyConstraint('id')
        )
        with op.batch_alter_table('dataset', schema=None) as batch_op:
            batch_op.create_index(batch_op.f('ix_dataset_name'), ['name'], unique=True)
    if missing("job"):
        op.create_table('job',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('production_id', sa.Integer(), nullable=False),
        sa.Column('index', sa.Integer(), nullable=False),
        sa.Column('seed', sa.BigInteger(), nullable=False),
        sa.Column('first_event', sa.BigInteger(), nullable=False),
        sa.Column('events', sa.Integer(), nullable=False),
        sa.Column('state', sa.Enum('defined', 'assigned', 'queued', 'running', 'staging', 'done', 'failed', 'cancelled', 'held', name='jobstate', native_enum=False, length=20), nullable=False),
        sa.Column('priority', sa.Integer(), nullable=False),
        sa.Column('site', sa.String(length=100), nullable=True),
        sa.Column('queue', sa.String(length=100), nullable=False),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('not_before', sa.DateTime(timezone=True), nullable=True),
        sa.Column('message', sa.String(length=500), nullable=True),
        sa.Column('walltime', sa.Integer(), nullable=True),
        sa.Column('memory', sa.Integer(), nullable=True),
        sa.Column('only_site', sa.String(length=100), nullable=True),
        sa.Column('avoid_sites', sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        sa.Column('budget_from', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['production_id'], ['production.id'], ),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('production_id', 'index')
        )
        with op.batch_alter_table('job', schema=None) as batch_op:
            batch_op.create_index('ix_job_grown_walltime', ['walltime'], unique=False, postgresql_where=sa.text('walltime IS NOT NULL'), sqlite_where=sa.text('walltime IS NOT NULL'))
            batch_op.create_index('ix_job_production_state', ['production_id', 'state'], unique=False)
            batch_op.create_index('ix_job_site_state', ['site', 'state'], unique=False)
            batch_op.create_index('ix_job_state_priority', ['state', 'priority', 'id'], unique=False)
    if missing("attempt"):
        op.create_table('attempt',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('job_id', sa.Integer(), nullable=False),
        sa.Column('number', sa.Integer(), nullable=False),
        sa.Column('pilot_id', sa.String(length=64), nullable=True),
        sa.Column('site', sa.String(length=100), nullable=False),
        sa.Column('outcome', sa.String(length=40), nullable=True),
        sa.Column('exit_code', sa.Integer(), nullable=True),
        sa.Column('signal', sa.Integer(), nullable=True),
        sa.Column('reason', sa.String(length=500), nullable=True),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('log_tail', sa.Text(), nullable=True),
        sa.Column('max_rss_mb', sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(['job_id'], ['job.id'], ),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('job_id', 'number')
        )
        with op.batch_alter_table('attempt', schema=None) as batch_op:
            batch_op.create_index(batch_op.f('ix_attempt_job_id'), ['job_id'], unique=False)
            batch_op.create_index(batch_op.f('ix_attempt_pilot_id'), ['pilot_id'], unique=False)
            batch_op.create_index('ix_attempt_running_heartbeat', ['ended_at', 'heartbeat_at'], unique=False)
    if missing("catalog_file"):
        op.create_table('catalog_file',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('dataset_id', sa.Integer(), nullable=False),
        sa.Column('lfn', sa.String(length=1000), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('adler32', sa.String(length=8), nullable=False),
        sa.Column('events', sa.Integer(), nullable=True),
        sa.Column('job_id', sa.Integer(), nullable=True),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('meta', sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['dataset_id'], ['dataset.id'], ),
        sa.ForeignKeyConstraint(['job_id'], ['job.id'], ),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('job_id', 'name'),
        sa.UniqueConstraint('lfn')
        )
        with op.batch_alter_table('catalog_file', schema=None) as batch_op:
            batch_op.create_index('ix_catalog_file_dataset_lfn', ['dataset_id', 'lfn'], unique=False)
            if op.get_bind().dialect.name == "postgresql":  # GIN: PostgreSQL's own
                batch_op.create_index('ix_catalog_file_meta', ['meta'], unique=False, postgresql_using='gin', postgresql_ops={'meta': 'jsonb_path_ops'})
    if missing("output"):
        op.create_table('output',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('job_id', sa.Integer(), nullable=False),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=False),
        sa.Column('source', sa.String(length=2000), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('adler32', sa.String(length=8), nullable=False),
        sa.Column('staged', sa.Boolean(), nullable=False),
        sa.Column('copied', sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        sa.Column('tries', sa.Integer(), nullable=False),
        sa.Column('next_try_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('lease_owner', sa.String(length=64), nullable=True),
        sa.Column('last_error', sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(['job_id'], ['job.id'], ),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('job_id', 'attempt', 'name')
        )
        with op.batch_alter_table('output', schema=None) as batch_op:
            batch_op.create_index(batch_op.f('ix_output_job_id'), ['job_id'], unique=False)
            batch_op.create_index(batch_op.f('ix_output_staged'), ['staged'], unique=False)
    if missing("replica"):
        op.create_table('replica',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('file_id', sa.Integer(), nullable=False),
        sa.Column('destination', sa.String(length=100), nullable=False),
        sa.Column('path', sa.String(length=1000), nullable=False),
        sa.Column('url', sa.String(length=2000), nullable=False),
        sa.Column('state', sa.Enum('good', 'bad', 'missing', name='replicastate', native_enum=False, length=20), nullable=False),
        sa.Column('checked_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('error', sa.String(length=500), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['file_id'], ['catalog_file.id'], ),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('file_id', 'destination')
        )

    if op.get_bind().dialect.name == "postgresql":
        for table in HOT_TABLES:
            op.execute(f"ALTER TABLE {table} SET (autovacuum_vacuum_scale_factor = 0.01, "
                       "autovacuum_analyze_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 1)")


def downgrade() -> None:
    for table in ("replica", "output", "catalog_file", "attempt", "job", "dataset", "stagein",
                  "sitequeue", "sitehealth", "retrydecision", "queuemessage", "production",
                  "presence", "pilot", "notification", "jobtally", "jobevent",
                  "factorydecision", "activity"):
        op.drop_table(table)
