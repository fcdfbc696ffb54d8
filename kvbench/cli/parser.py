"""The parser every command shares: bad input is one line naming the field, exit code 2.

Numbers are checked where they are parsed: `float` accepts "nan" and "inf", which no setting of
kvbench can use (a NaN temperature samples garbage, a NaN spread passes every `<` test it is given),
so every float option refuses them, and `number` adds the bound an option needs.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


class OneLineParser(argparse.ArgumentParser):
    """Bad input is one line naming the field, exit code 2 (argparse alone prints usage too)."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")

    def add_argument(self, *args, **kwargs):
        if kwargs.get("type") is float:  # the next command's float option is finite without asking
            kwargs["type"] = number(float)
        return super().add_argument(*args, **kwargs)


def number(kind: type = float, low: float | None = None, what: str = "") -> Callable[[str], float | int]:
    """An argparse type: a finite `kind` (int or float), at least `low` where given.

    `what` says what the bound means (e.g. "0 = greedy"), for the one line a bad value gets.
    """

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if low is not None and value < low:
            bound = f"must be >= {low}" + (f" ({what})" if what else "")
            raise argparse.ArgumentTypeError(f"{text!r} {bound}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid <type> value" messages
    return parse
