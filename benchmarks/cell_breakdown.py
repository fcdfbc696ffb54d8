"""Benchmark: where a cell's wall time goes, and its fixed cost beyond `import torch`.

Runs `python -c "import torch"` and a `kvbench cell` alternately, `--rounds` times each, as
separate processes (as a sweep runs them), and reads each record's `environment.phases_s`:

    import   torch and kvbench, as the cell measured it
    build    validate, environment, weights, prompt
    check    the token check (this cell's tokens vs one no-cache forward)
    warmup   warm-up generations (on a CPU the first one also tracks the memory peaks)
    timed    the timed generations
    probe    read/copy bandwidth and matmul probe (measured by the first cell of a run on a host,
             read from the host's cache by the others)
    rest     what the record cannot see: interpreter start-up, writing the record, exit

fixed cost = wall - `import torch` wall - warmup - timed: what a cell costs beyond its measurement.
The first cell of a run measures the probe, the others reuse it (as in a sweep), so the table has
a row for each. A benchmark, not a test: it prints, it does not pass or fail.

    python benchmarks/cell_breakdown.py --model tiny
    python benchmarks/cell_breakdown.py --model gpt2 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kvbench.core import env_vars

PHASES = ("import", "build", "check", "warmup", "timed", "probe")


def wall(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} ({min(values):.2f}-{max(values):.2f})"


def cell_command(args: argparse.Namespace, out: Path) -> list[str]:
    """The `kvbench cell` a round runs: eager, on the CPU, one warm-up and two timed generations."""
    flags = {
        "--model": args.model,
        "--kv-mode": args.kv_mode,
        "--prompt-len": args.prompt_len,
        "--new-tokens": args.new_tokens,
        "--device": "cpu",
        "--warmup": 1,
        "--iters": 2,
        "--out": out,
        **({"--threads": args.threads} if args.threads else {}),
    }
    return [sys.executable, "-m", "kvbench.cli", "cell", *(str(x) for kv in flags.items() for x in kv)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--kv-mode", default="static")
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        # A run of its own: its own probe cache, and a start time, as Snakemake gives its cells.
        env = {**os.environ, env_vars.CACHE_DIR: tmp, env_vars.PROBE_SINCE: str(time.time())}
        out = Path(tmp) / "cell.json"
        cell = cell_command(args, out)
        rows: dict[str, list[dict]] = {"first cell (probe measured)": [], "later cells (probe reused)": []}
        torch_walls: list[float] = []
        for r in range(args.rounds + 1):  # round 0: the run's first cell, which measures the probe
            torch_walls.append(wall([sys.executable, "-c", "import torch"], env))
            w = wall(cell, env)
            phases = json.loads(out.read_text())["environment"]["phases_s"]
            row = {**{k: phases.get(k) or 0.0 for k in PHASES}, "wall": w}
            row["rest"] = w - sum(row[k] for k in PHASES)
            rows["first cell (probe measured)" if r == 0 else "later cells (probe reused)"].append(row)

    base = statistics.median(torch_walls)
    print(
        f"kvbench cell {args.model} {args.kv_mode} p{args.prompt_len} n{args.new_tokens}, CPU, "
        f"{args.rounds} rounds; `python -c 'import torch'`: {summary(torch_walls)} s\n"
    )
    cols = (*PHASES, "rest", "wall")
    print("| cell | " + " | ".join(cols) + " | fixed cost beyond import torch |")
    print("|---|" + "---|" * (len(cols) + 1))
    for label, runs in rows.items():
        fixed = [r["wall"] - base - r["warmup"] - r["timed"] for r in runs]
        cells = [summary([r[c] for r in runs]) for c in cols]
        print(f"| {label} | " + " | ".join(cells) + f" | {summary(fixed)} |")
    print("\nseconds: median (min-max); fixed cost = wall - median `import torch` - warmup - timed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
