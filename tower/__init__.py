"""gridtower's control tower: productions, jobs, the loops that move them, and the `tower` CLI."""
