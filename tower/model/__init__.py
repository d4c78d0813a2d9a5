"""The domain model: the tables, the one state table that moves jobs, productions and
pilots, the counters kept as they move, and the database.

- models: the tower's tables (productions, jobs, attempts, pilots, events, outputs)
- states: the state machines; every status change of a job goes through here
- tally: counters kept as jobs move (per state, per five minutes)
- db: engines and sessions, SQLite and PostgreSQL; a new database made at head
- revision: the schema revision this code needs, checked on a bare DB-API cursor
- migrate, migrations/: Alembic's migrations, shipped here, and `tower db upgrade`
- jobs: reading jobs back (filtered lists, one job with its attempts)
- fleet: pilots in the database
- reads: the production summaries and the job tally in plain SQL over the driver's
  connection, without SQLAlchemy (a local `tower status`; the ORM's callers hand in theirs)
"""
