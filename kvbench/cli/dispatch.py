"""`kvbench <command>`: the dispatcher. `cell` is parsed here (its flags print in `kvbench --help`); every other
command's module parses its own arguments and imports nothing heavy until it runs."""

from __future__ import annotations

import sys
import time

from kvbench import __version__
from kvbench.cli.cell import add_cell_parser, cmd_cell
from kvbench.cli.ending import ending
from kvbench.cli.parser import OneLineParser
from kvbench.core import interrupt

# Commands whose module parses its own arguments (and imports nothing heavy until it runs).
DELEGATED = {
    "sample": (
        "kvbench.cli.sample",
        "text in, text out with tiktoken's gpt2 encoding or a checkpoint's tokenizer.json, any decode mode",
    ),
    "visualize": ("kvbench.cli.visualize", "animated GIF of q, K, V and attention while the cache grows"),
    "aggregate": ("kvbench.analysis.aggregate", "records -> tables (pandas)"),
    "figures": ("kvbench.analysis.figures", "tables -> seaborn figures"),
    "bundle": ("kvbench.analysis.bundle", "a sweep's outputs -> bundle.zip with a sha256 manifest"),
    "explain": (
        "kvbench.analysis.explain",
        "tables -> explanation.md: the formula, the speedups, the claims vs measured",
    ),
    "publish": ("kvbench.analysis.publish", "copy a bundle to results/published/<device>/<sweep>/"),
    "compare": ("kvbench.analysis.compare", "two runs side by side: B/A per cell, same/faster/slower"),
    "check-records": (
        "kvbench.core.record",
        "move damaged records aside to results/<sweep>/damaged/ (Snakemake re-measures them)",
    ),
}


def main(argv: list[str] | None = None) -> int:
    """Run a command; whatever stops it that it did not report itself (Ctrl-C, an OSError, a damaged
    archive or checkpoint, bad input) ends in one line and the documented exit code (kvbench.cli.ending)."""
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and (argv[0] in DELEGATED or argv[0] == "cell") else None
    try:
        return run_command(argv)
    except BaseException as e:
        ended = ending(command, e)
        if ended is None:  # a bug: its traceback is the report
            raise
        code, line = ended
        print(line, file=sys.stderr)
        return code


def run_command(argv: list[str]) -> int:
    if argv and argv[0] in DELEGATED:
        import importlib

        return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:]) or 0
    started = time.perf_counter()
    parser = OneLineParser(prog="kvbench", description="Measure what a KV cache does to GPT-2 inference.")
    parser.add_argument("--version", action="version", version=f"kvbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    add_cell_parser(sub)
    for name, (_, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    args = parser.parse_args(argv)
    interrupt.install()  # a Ctrl-C during the cell is never lost in a finalizer (core/interrupt.py)
    return cmd_cell(args, import_s=time.perf_counter() - started)  # the parser imported torch and kvbench.measure.cell
