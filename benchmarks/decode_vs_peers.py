"""Benchmark: kvbench's decode against its peers on the same weights, in one run, with the floor beside them.

Each variant is one `kvbench cell` process (same measurement code, same weights, same prompt):
kvbench's static cache eager and compiled, transformers' own model of the family (GPT2LMHeadModel,
LlamaForCausalLM, Qwen2ForCausalLM) with its default DynamicCache, its StaticCache and its StaticCache
compiled, and CTranslate2 (its own growing cache). `--model` names any preset, GPT-2 or Llama family. The table gives
decode ms/token (median over the cell's iterations, min-max), the ratio to CTranslate2 and the
fraction of the floor, per prompt length and batch, and a row for the floor itself: the cell's
decode-step bytes (weights + KV read) over the best read bandwidth the cells measured
(`analytic.bandwidth_source` says which). A benchmark, not a test: it prints, it does not pass or fail.

    python benchmarks/decode_vs_peers.py --device cpu --threads 2 --batch 1 2 4 8        # CPU targets
    python benchmarks/decode_vs_peers.py --model smollm2-135m --device cpu --threads 2  # Llama family, CPU
    python benchmarks/decode_vs_peers.py --model gpt2-xl --dtype bf16 --device cuda      # GPU targets
    python benchmarks/decode_vs_peers.py --engines kvbench llamacpp --rounds 3          # alternating runs

With `--rounds N` every variant runs N times in turn (the machine's drift spread over all of them) and the
table gives each the round with the median time, and every round's median in brackets.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# (label, engine, kv_mode, compile)
VARIANTS = (
    ("kvbench static", "kvbench", "static", False),
    ("kvbench static + compile", "kvbench", "static", True),
    ("hf default (DynamicCache)", "hf", "concat", False),
    ("hf static", "hf", "static", False),
    ("hf static + compile", "hf", "static", True),
    ("llamacpp (llama.cpp, its own static cache)", "llamacpp", "static", False),
    ("ct2 (CTranslate2, its own cache)", "ct2", "concat", False),
)
CT2 = VARIANTS[-1][0]
OURS = ("kvbench static", "kvbench static + compile")


def run_cell(
    args: argparse.Namespace, prompt_len: int, batch: int, engine: str, kv_mode: str, compiled: bool, out: Path
) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "kvbench.cli",
        "cell",
        "--model",
        args.model,
        "--engine",
        engine,
        "--kv-mode",
        kv_mode,
        "--dtype",
        args.dtype,
        "--device",
        args.device,
        "--batch",
        str(batch),
        "--prompt-len",
        str(prompt_len),
        "--new-tokens",
        str(args.new_tokens),
        "--warmup",
        str(args.warmup),
        "--iters",
        str(args.iters),
        "--check-steps",
        "8",
        "--out",
        str(out),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if compiled:
        cmd.append("--compile")
    subprocess.run(cmd, check=False)
    return json.loads(out.read_text()) if out.exists() else {"status": "missing", "error": "no record"}


def median_round(records: list[dict]) -> dict:
    """The round whose decode median is the median of the rounds' (the lower middle for an even count), with every
    round's median kept beside it (`rounds_ms`) for the table."""
    timed = sorted((decode_ms(r), i) for i, r in enumerate(records) if decode_ms(r) is not None)
    if not timed:
        return records[-1]
    chosen = dict(records[timed[(len(timed) - 1) // 2][1]])
    if len(records) > 1:
        chosen["rounds_ms"] = [round(decode_ms(r), 2) if decode_ms(r) else None for r in records]
    return chosen


def decode_ms(rec: dict) -> float | None:
    return rec["latency"]["decode_ms_per_token"]["median"] if rec.get("status") == "ok" else None


def table(args: argparse.Namespace, prompt_len: int, batch: int, results: dict[str, dict], out_dir: Path) -> None:
    ok = [r for r in results.values() if r.get("status") == "ok"]
    env = ok[0]["environment"] if ok else {}
    print(
        f"\n{args.model} {args.dtype} batch {batch}, prompt {prompt_len}, {args.new_tokens} new tokens, "
        f"{args.threads or 'default'} threads on {env.get('device_name')}; records in {out_dir}\n"
    )
    print(
        "| variant | decode ms/token median (min-max) | / ct2 | fraction of floor | prefill ms | matches none "
        "| compile s |"
    )
    print("|---|---|---|---|---|---|---|")
    ct2 = decode_ms(results.get(CT2, {}))
    # Every cell has the same shapes, so the same bytes per step; the floor divides them by the best read
    # bandwidth any of these cells saw (each record keeps its own probe's), so the fractions compare.
    floor_an = floor_analytic(results)
    for label, rec in results.items():
        if rec.get("status") != "ok":
            print(f"| {label} | {rec.get('status')}: {rec.get('error')} | | | | | |")
            continue
        lat, d = rec["latency"], rec["latency"]["decode_ms_per_token"]
        ratio = f"{d['median'] / ct2:.2f}" if ct2 else ""
        fraction = floor_an["floor_ms_per_token"] / d["median"]
        compile_s = f"{lat['compile_s']:.1f}" if lat.get("compile_s") else ""
        spread = (
            f"rounds {', '.join(map(str, rec['rounds_ms']))}"
            if "rounds_ms" in rec
            else f"{d['min']:.2f}-{d['max']:.2f}"
        )
        print(
            f"| {label} | {d['median']:.2f} ({spread}) | {ratio} | {fraction:.2f} "
            f"| {lat['prefill_ms']['median']:.1f} | {rec['check']['matches_reference']} | {compile_s} |"
        )
    if floor_an:
        an, floor = floor_an, floor_an["floor_ms_per_token"]
        print(
            f"| floor: {an['decode_bytes_per_token'] / 1e6:.0f} MB read at {an['bandwidth_bytes_per_s'] / 1e9:.1f} "
            f"GB/s ({an['bandwidth_source']}) | {floor:.2f} | {f'{floor / ct2:.2f}' if ct2 else ''} | 1.00 | | | |"
        )
    ours = {label: decode_ms(results[label]) for label in OURS if decode_ms(results.get(label, {}))}
    if ours and ct2:
        best = min(ours, key=ours.get)
        print(
            f"\nkvbench static, best of eager/compiled ({best}, {ours[best]:.2f} ms) / ct2 ({ct2:.2f} ms) "
            f"= {ours[best] / ct2:.2f}x"
        )


def by_batch(summary: dict[tuple[int, int], dict[str, dict]]) -> None:
    """One line per variant and prompt length: decode ms/token and its fraction of the floor at each batch."""
    batches = sorted({b for _, b in summary})
    print("\n| variant | prompt | " + " | ".join(f"batch {b}: ms (of floor)" for b in batches) + " |")
    print("|---|---|" + "---|" * len(batches))
    for prompt_len in sorted({p for p, _ in summary}):
        rows = {p_b: r for p_b, r in summary.items() if p_b[0] == prompt_len}
        floors = {b: floor_ms(r) for (_, b), r in rows.items()}
        for label in dict.fromkeys(label for r in rows.values() for label in r):
            cells = []
            for b in batches:
                ms = decode_ms(rows.get((prompt_len, b), {}).get(label, {}))
                cells.append(f"{ms:.2f} ({floors[b] / ms:.2f})" if ms and floors.get(b) else "")
            print(f"| {label} | {prompt_len} | " + " | ".join(cells) + " |")
        floor_cells = [f"{floors[b]:.2f}" if floors.get(b) else "" for b in batches]
        print(f"| floor | {prompt_len} | " + " | ".join(floor_cells) + " |")


def floor_analytic(results: dict[str, dict]) -> dict | None:
    """The analytic section of one (prompt, batch) whose floor counts: every cell has the same step bytes, and
    this one's probe saw the best read bandwidth of them all."""
    ok = [r for r in results.values() if r.get("status") == "ok"]
    return max(ok, key=lambda r: r["analytic"]["bandwidth_bytes_per_s"])["analytic"] if ok else None


def floor_ms(results: dict[str, dict]) -> float | None:
    an = floor_analytic(results)
    return an["floor_ms_per_token"] if an else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", default="gpt2", help="a preset: gpt2, ..., smollm2-135m, llama-3.1-8b (kvbench.core.presets)"
    )
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--prompt-len", type=int, nargs="+", default=[128])
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-compile", action="store_true", help="eager variants only")
    p.add_argument("--engines", nargs="+", default=None, help="only these engines' variants (default: all)")
    p.add_argument("--eager-ours", action=argparse.BooleanOptionalAction, default=True, help="kvbench's eager step too")
    p.add_argument("--records", default=None, help="keep the records in this folder (default: a temp dir)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the variants this many times in turn (ABAB...); each reports the round with its median time",
    )
    p.add_argument(
        "--table-only", action="store_true", help="print the tables from the records in --records (those there)"
    )
    args = p.parse_args(argv)

    out_dir = Path(args.records or tempfile.mkdtemp(prefix="kvbench-vs-peers-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[tuple[int, int], dict[str, dict]] = {}
    for prompt_len in args.prompt_len:
        for batch in args.batch:
            rounds: dict[str, list[dict]] = {}
            for r in range(1 if args.table_only else args.rounds):
                for label, engine, kv_mode, compiled in VARIANTS:
                    if (compiled and args.skip_compile) or (args.engines and engine not in args.engines):
                        continue
                    if engine == "kvbench" and not compiled and not args.eager_ours:
                        continue
                    name = f"p{prompt_len}-b{batch}-{engine}-{kv_mode}{'-compile' if compiled else ''}"
                    out = out_dir / (f"{name}.json" if args.rounds == 1 else f"{name}-r{r}.json")
                    if args.table_only:  # the variants run into this folder, in one run or several, rounds or not
                        plain = out_dir / f"{name}.json"
                        found = [plain] if plain.exists() else sorted(out_dir.glob(f"{name}-r*.json"))
                        rounds[label] = [json.loads(f.read_text()) for f in found]
                    else:
                        rounds.setdefault(label, []).append(
                            run_cell(args, prompt_len, batch, engine, kv_mode, compiled, out)
                        )
            results = {label: median_round(recs) for label, recs in rounds.items() if recs}
            table(args, prompt_len, batch, results, out_dir)
            summary[prompt_len, batch] = results
    by_batch(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
