"""`python -m tower.cli`: the `tower` command."""

import sys

from tower.cli import main

sys.exit(main())
