"""Production management: what a production manager submits, decides, reads
and hears.

- specs: production requests (schema, inheritance, checks, job splitting)
- productions: productions in the database (submission, lookup, counts)
- chains: productions split by input files, chains fed as files are cataloged, the
  checks of a chain at submit, its steps' progress
- sheets: request sheets (a CSV, one production a row)
- approval: approving and rejecting requests and trials
- overrides: KEY=VALUE settings from the command line
- notify: notifications recorded and delivered, by webhook and e-mail;
  notification_settings: their section of tower.yaml
- progress: progress bars and pace
- why: `tower why JOB`, told from what was recorded
- catalog_verify: `catalog verify` through the runtime's backends
"""
