"""The command line: the dispatcher (main.py), the shared parser, one module per command."""

from kvbench.cli.dispatch import main

__all__ = ["main"]
