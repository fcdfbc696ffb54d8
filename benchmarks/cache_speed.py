"""Benchmark: every cache kind's decode and prefill against `static`'s, eager and compiled, in one run.

Each variant is one `kvbench cell` process (same weights, prompt and measurement code). The variants run in
rounds, every kind once per round in turn, so a machine that slows down meanwhile slows them all; the table
gives each round's decode ms/token (median over the cell's iterations) and its ratio to `static` of the same
round and compile setting, the prefill ratio, the fraction of the mode's own floor (its own bytes:
analytic.decode_bytes_per_token), the attention path the cache took (latency.kv_attention_path), and the price
(tokens equal to the exact model's for exact kinds; agreement and KL, teacher-forced, for approximate ones).
A benchmark, not a test: it prints, it does not pass or fail.

    python benchmarks/cache_speed.py --batch 4 --prompt-len 1000 --threads 2            # issue 35's shape
    python benchmarks/cache_speed.py --model smollm2-135m --batch 4 --prompt-len 1000 --threads 2
    python benchmarks/cache_speed.py --batch 1 --prompt-len 128 --threads 2 --rounds 3
    python benchmarks/cache_speed.py --batch 4 --prompt-len 1000 --threads 2 --peers   # the peers' caches beside
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = ("static", "static-int8", "static-fp8", "static-int4", "sliding", "paged")
# The peers' caches of the same techniques (eager: neither compiles them): llama.cpp's f32, q8_0 and q4_0
# (engines/llamacpp.py); transformers' StaticCache and QuantizedCache, fp8 and 4-bit quanto (engines/hf_cache.py)
PEER_MODES = {"llamacpp": ("static", "static-int8", "static-int4"), "hf": ("static", "static-fp8", "static-int4")}


def run_cell(args: argparse.Namespace, engine: str, kv_mode: str, compiled: bool, out: Path) -> dict:
    cmd = [sys.executable, "-m", "kvbench.cli", "cell", "--engine", engine, "--model", args.model, "--kv-mode", kv_mode]
    cmd += ["--dtype", args.dtype, "--device", args.device, "--batch", str(args.batch)]
    cmd += ["--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens)]
    cmd += ["--warmup", str(args.warmup), "--iters", str(args.iters), "--check-steps", str(args.check_steps)]
    cmd += ["--out", str(out)] + (["--threads", str(args.threads)] if args.threads else [])
    cmd += ["--compile"] if compiled else []
    cmd += ["--block-size", str(args.block_size)] if args.block_size else []
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text()) if out.exists() else {"status": "missing", "error": "no record"}


def price(rec: dict) -> str:
    c = rec.get("check") or {}
    if rec["cell"]["kv_mode"] in ("static", "paged", "concat"):
        return "tokens = none's" if c.get("matches_reference") else f"tokens differ at {c.get('first_mismatch_step')}"
    return f"agree {c.get('agreement_rate', float('nan')):.3f}, KL {c.get('kl_mean') or 0:.2e}"


def table(args: argparse.Namespace, rounds: list[dict[tuple[str, bool], dict]]) -> None:
    print(f"\n{args.model} {args.dtype} batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
          f"{args.threads or 'default'} threads\n")  # fmt: skip
    print("| engine | kv mode | compiled | round | decode ms/token (min-max) | / its static | prefill / static "
          "| of own floor | attention path | price |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for engine, mode, compiled in rounds[0]:
        for i, results in enumerate(rounds, 1):
            rec, base = results[engine, mode, compiled], results.get((engine, "static", compiled), {})
            if rec.get("status") != "ok":
                print(f"| {engine} | {mode} | {compiled} | {i} | {rec.get('status')}: {(rec.get('error') or '')[:80]} "
                      "|||||||")  # fmt: skip
                continue
            lat, d = rec["latency"], rec["latency"]["decode_ms_per_token"]
            ok = base.get("status") == "ok"
            ratio = f"{d['median'] / base['latency']['decode_ms_per_token']['median']:.2f}" if ok else ""
            pre = lat["prefill_ms"]["median"] / base["latency"]["prefill_ms"]["median"] if ok else float("nan")
            print(f"| {engine} | {mode} | {compiled} | {i} | {d['median']:.2f} ({d['min']:.2f}-{d['max']:.2f}) "
                  f"| {ratio} | {pre:.2f} | {rec['analytic']['fraction_of_floor']:.2f} "
                  f"| {lat.get('kv_attention_path')} | {price(rec)} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gpt2")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=1000)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--block-size", type=int, default=None, help="positions the model holds (GPT-2: 1024)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--check-steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--modes", nargs="+", default=list(MODES))
    p.add_argument("--compile", choices=("no", "yes", "both"), default="both")
    p.add_argument("--records", default=None, help="keep the records in this folder (default: a temp dir)")
    p.add_argument(
        "--peers", action="store_true", help="llama.cpp's and transformers' caches too (PEER_MODES), same weights"
    )
    args = p.parse_args(argv)
    out_dir = Path(args.records or tempfile.mkdtemp(prefix="kvbench-cache-speed-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"no": (False,), "yes": (True,), "both": (False, True)}[args.compile]
    variants = [("kvbench", m, c) for c in settings for m in dict.fromkeys(["static", *args.modes])]
    variants += [(e, m, False) for e, modes in PEER_MODES.items() for m in modes] if args.peers else []
    rounds = []
    for r in range(args.rounds):
        rounds.append({(e, m, c): run_cell(args, e, m, c, out_dir / f"r{r}-{e}-{m}{'-compile' if c else ''}.json")
                       for e, m, c in variants})  # fmt: skip
    table(args, rounds)
    print(f"\nrecords: {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
