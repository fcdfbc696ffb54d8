"""Downstream analysis of kvbench cell records: tables, figures, bundle, publish.

Each stage is a module with a ``main(argv)`` so Snakemake rules and people can call it the
same way (``python -m kvbench.analysis.<stage> ...``).  Nothing here imports torch: the
analysis runs on any machine that has the records.
"""

from __future__ import annotations

__all__ = ["aggregate", "bundle", "explain", "figures", "publish"]
