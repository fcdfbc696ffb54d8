"""The parser every command shares: bad input is one line naming the field, exit code 2."""

from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """Bad input is one line naming the field, exit code 2 (argparse alone prints usage too)."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")
