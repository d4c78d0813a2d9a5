"""Sites: the admins' description of each batch resource, and one module per batch system.

- config: sites.yaml; batch: the `BatchSystem` seam and its registry; local, slurm,
  condor (commanded: what the command-line ones share); runner and ssh: running commands
- schema: the settings base every layer reads YAML with (`Strict`, `build`, `read_yaml`)
- registry: backends resolved by name, for every seam
- errors: the base of gridtower's exception tree, and the backends' errors
"""
