"""`python -m kvbench.cli`: the `kvbench` command."""

import sys

from kvbench.cli.main import main

sys.exit(main())
