# Snakemake script for rule aggregate: the record list can be thousands of paths, too long for a shell line.
import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (injected by Snakemake)

from kvbench.analysis.aggregate import aggregate  # noqa: E402

aggregate([Path(p) for p in snakemake.input.records], Path(snakemake.output.tables))  # noqa: F821
