"""The command line: the dispatcher (main.py), the shared parser, one module per command."""

from kvbench.cli.main import main

__all__ = ["main"]
