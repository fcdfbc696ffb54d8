"""`python -m kvbench.cli`: the `kvbench` command."""

import sys

from kvbench.cli.dispatch import main

sys.exit(main())
