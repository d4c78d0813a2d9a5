"""gridtower's schema migrations (Alembic): `env.py` and one module per revision in
`versions/`, run by tower/model/migrate.py without an alembic.ini."""
