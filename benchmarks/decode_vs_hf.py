"""Benchmark: kvbench's decode against Hugging Face transformers' GPT-2 on the same weights, in one run.

Each engine x cache x compile combination is one `kvbench cell` process (same measurement code,
same weights, same prompt); the table gives decode ms/token (median, min-max) and the ratios the
speed targets are stated in. A benchmark, not a test: it prints, it does not pass or fail.

    python benchmarks/decode_vs_hf.py --model gpt2 --dtype fp32 --device cpu          # CPU target
    python benchmarks/decode_vs_hf.py --model gpt2-xl --dtype bf16 --device cuda       # GPU targets
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
)


def run_cell(args: argparse.Namespace, engine: str, kv_mode: str, compiled: bool, out: Path) -> dict:
    cmd = [sys.executable, "-m", "kvbench.cli", "cell", "--model", args.model, "--engine", engine,
           "--kv-mode", kv_mode, "--dtype", args.dtype, "--device", args.device, "--batch", str(args.batch),
           "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens),
           "--warmup", str(args.warmup), "--iters", str(args.iters), "--check-steps", "8", "--out", str(out)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if compiled:
        cmd.append("--compile")
    subprocess.run(cmd, check=False)
    return json.loads(out.read_text()) if out.exists() else {"status": "missing", "error": "no record"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gpt2")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-compile", action="store_true", help="eager variants only")
    p.add_argument("--records", default=None, help="keep the records in this folder (default: a temp dir)")
    args = p.parse_args(argv)

    out_dir = Path(args.records or tempfile.mkdtemp(prefix="kvbench-vs-hf-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for label, engine, kv_mode, compiled in VARIANTS:
        if compiled and args.skip_compile:
            continue
        out = out_dir / f"{engine}-{kv_mode}{'-compile' if compiled else ''}.json"
        results[label] = run_cell(args, engine, kv_mode, compiled, out)

    def ms(label: str) -> float | None:
        rec = results.get(label, {})
        return rec["latency"]["decode_ms_per_token"]["median"] if rec.get("status") == "ok" else None

    print(f"\n{args.model} {args.dtype} batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens "
          f"on {next(iter(results.values())).get('environment', {}).get('device_name')}; records in {out_dir}\n")
    print("| variant | decode ms/token (median, min-max) | prefill ms | fraction of floor | matches none | compile s |")
    print("|---|---|---|---|---|---|")
    for label, rec in results.items():
        if rec.get("status") != "ok":
            print(f"| {label} | {rec.get('status')}: {rec.get('error')} | | | | |")
            continue
        lat, an = rec["latency"], rec["analytic"]
        d = lat["decode_ms_per_token"]
        compile_s = f"{lat['compile_s']:.1f}" if lat.get("compile_s") else ""
        print(f"| {label} | {d['median']:.2f} ({d['min']:.2f}-{d['max']:.2f}) | {lat['prefill_ms']['median']:.1f} "
              f"| {an['fraction_of_floor']:.2f} | {rec['check']['matches_reference']} | {compile_s} |")
    print()
    ours = [x for x in (ms("kvbench static"), ms("kvbench static + compile")) if x is not None]
    best = min(ours) if ours else None
    for ref in ("hf default (DynamicCache)", "hf static", "hf static + compile"):
        if best is not None and ms(ref):
            print(f"kvbench static (best of eager/compiled, {best:.2f} ms) / {ref} ({ms(ref):.2f} ms) = {best / ms(ref):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
