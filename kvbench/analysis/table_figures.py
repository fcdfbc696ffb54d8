"""A table with figures and sentences of its own (the allocation table, the approximate caches' price): what both
modules share. `figures` gives kvbench figures' entries (each drawn from the sweep's frame, skipped in one line
where the table has nothing to draw); `main` is the standalone command that writes the table, its figures and its
sentences from a folder of records."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kvbench.analysis import command
from kvbench.analysis.facets import Skip


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no screen), imported when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class TableFigures:
    """name: the table's and command's name; table: frame -> table (raises `empty` where nothing applies);
    draws: figure name -> table -> figure; markdown, claims: the table's markdown and its sentences."""

    name: str
    table: Callable[[pd.DataFrame], pd.DataFrame]
    empty: type[Exception]
    draws: dict[str, Callable[[pd.DataFrame], object]]
    markdown: Callable[[pd.DataFrame], str]
    claims: Callable[[pd.DataFrame], list[str]]

    def figures(self) -> dict[str, Callable[[pd.DataFrame], object]]:
        """kvbench figures' entries: each draws from the sweep's frame; Skip (its one-line reason) where empty."""

        def drawn(draw):
            def figure(df: pd.DataFrame):
                try:
                    return draw(self.table(df))
                except self.empty as why:
                    raise Skip(str(why)) from None

            return figure

        return {name: drawn(draw) for name, draw in self.draws.items()}

    def write(self, records: Path, out: Path, csv_name: str) -> str:
        """The table as csv_name.csv, csv_name.md (the table and a sentence per line) and every figure, in `out`."""
        from kvbench.analysis import frame as fr

        t = self.table(fr.from_records(sorted(records.rglob("*.json"))))
        out.mkdir(parents=True, exist_ok=True)
        t.to_csv(out / f"{csv_name}.csv", index=False)
        for name, draw in self.draws.items():
            draw(t).savefig(out / f"{name}.png", bbox_inches="tight")
        (out / f"{csv_name}.md").write_text(
            self.markdown(t) + "\n\n" + "\n".join(f"- {c}" for c in self.claims(t)) + "\n"
        )
        return f"{self.name}: {len(t)} cells -> {out}"

    def main(self, argv: Sequence[str] | None, csv_name: str) -> int:
        """`python -m kvbench.analysis.<name> RECORDS_DIR OUT_DIR`: the table, its figures, its sentences."""
        p = argparse.ArgumentParser(prog=self.name, description=self.main.__doc__)
        p.add_argument("records", type=Path)
        p.add_argument("out", type=Path)
        args = p.parse_args(argv)
        return command.run(self.name, lambda: self.write(args.records, args.out, csv_name), self.empty, Skip)
