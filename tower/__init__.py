"""gridtower's control tower: productions, jobs, the loops that move them, and the `tower` CLI.

Its rooms (a change belongs in the room that holds what it changes):

- model: the tables, the one state table, the counters, the database
- loops: `tower run` and the loops that move work; the pilots' claims and reports
- management: production requests, productions, approval, notifications, progress
- retries: outcome classes, retry policies, applying them, failure reports
- auth: the CA, roles and permissions, pilot credentials
- brokers: how jobs reach a site's pilots (the database queue, RabbitMQ)
- here: config (tower.yaml), runtime (the composition root), errors (the whole tree),
  home (`tower init`), the CLI

The tower imports `pilots`, `sites`, `transfer` and `catalog`, never `web`; only the CLI,
which starts the web server, does (see the README's Layout).
"""
