"""The catalog: datasets, files with checksums and metadata, and where their replicas live.

- models: its tables; columns: the column types its tables and the tower's share
- files: registering and reading files and replicas; queries: metadata conditions
- lineage: the files each file was made from, and the walk up and down from one
- verify: replicas checked at their destinations
- errors: not found, conflict; timeutil: time as stored (aware UTC)
"""
