"""`kvbench cell`: its arguments and the command that measures one cell and writes its record."""

from __future__ import annotations

import argparse
import sys

from kvbench.core.presets import KV_MODE_OPTIONS


def add_cell_parser(sub) -> None:
    from kvbench.core.presets import PRESETS
    from kvbench.measure.spec import CellSpec

    d = CellSpec()
    p = sub.add_parser(
        "cell",
        help="measure one cell and write one JSON record",
        description="Measure one cell: prefill and decode latency, memory, energy, the token check. "
        "Writes one schema-valid JSON record atomically to --out (or prints it). "
        "Exit 0 for status ok/oom/unsupported, 1 for error, 2 for bad input.",
    )
    p.add_argument(
        "--model",
        default=None,
        help=f"preset: {', '.join(PRESETS)} (default {d.model}); with --checkpoint, a label for the record "
        f"(default: the checkpoint's name)",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="real weights: a local Hugging Face directory (GPT-2 or the Llama family), a nanoGPT ckpt.pt, or "
        "hf:<hub name> (needs internet)",
    )
    p.add_argument(
        "--kv-mode",
        default=d.kv_mode,
        help="none (recompute everything each step), concat (torch.cat cache), static (preallocated, written in "
        "place), paged (blocks taken from a pool as sequences grow); approximate: static-int8, static-int4 (KIVI "
        "groups), static-fp8 (e4m3), sliding (sinks + window)",
    )
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--prompt-len", type=int, default=d.prompt_len)
    p.add_argument(
        "--new-tokens", type=int, default=d.new_tokens, help="tokens generated (1 by prefill + decode steps)"
    )
    p.add_argument("--dtype", default=d.dtype, help="fp32, bf16, fp16")
    p.add_argument("--attention", default=d.attention, help="sdpa (fused) or math (explicit softmax)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:<index>")
    p.add_argument("--seed", type=int, default=d.seed, help="weights and random prompt seed")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed generations first")
    p.add_argument("--iters", type=int, default=d.iters, help="timed generations, each from a fresh cache")
    p.add_argument(
        "--check-steps", type=int, default=d.check_steps, help="tokens compared against the 'none' mode (0 = no check)"
    )
    add_kv_mode_options(p, d)
    p.add_argument(
        "--prompt-spread", type=float, default=d.prompt_spread, help="ragged batch: shortest (1 - this) x longest"
    )
    p.add_argument("--shared-prefix", type=int, default=d.shared_prefix, help="first tokens every sequence shares")
    add_engine_and_output_arguments(p, d)


def add_kv_mode_options(p: argparse.ArgumentParser, d) -> None:
    """Each kv mode's own settings (MODE_OPTIONS): no default in the namespace, so one given can be told apart."""
    helps = {
        "window": "sliding: recent positions the cache keeps",
        "sinks": "sliding: first positions it keeps (attention sinks)",
        "kv_group_size": "static-int4: values per scale",
        "block_tokens": "paged: positions per block",
    }
    for name, text in helps.items():
        flag = f"--{name.replace('_', '-')}"
        p.add_argument(flag, type=int, default=argparse.SUPPRESS, help=f"{text} (default {getattr(d, name)})")


def add_engine_and_output_arguments(p: argparse.ArgumentParser, d) -> None:
    """`kvbench cell`'s engine, model-shape overrides, prompt source, threads and --out (defaults from `d`)."""
    p.add_argument(
        "--engine",
        default=d.engine,
        help="kvbench (this model), hf (transformers' own model of the family, GPT2LMHeadModel or "
        "LlamaForCausalLM/Qwen2ForCausalLM, on the same weights, its own caches: none, concat = DynamicCache, "
        "static = StaticCache), ct2 (CTranslate2 on the same weights, its own growing cache: concat) or llamacpp "
        "(llama.cpp on the same weights converted to GGUF, its preallocated cache: static, and q8_0/q4_0 as "
        "static-int8/static-int4; needs `make llamacpp`)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=d.compile,
        help="torch.compile the model (dynamic shapes); compile time is recorded apart as latency.compile_s",
    )
    p.add_argument(
        "--n-kv-head",
        type=int,
        default=None,
        help="grouped-query attention: K/V heads (random weights; default: all heads)",
    )
    p.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="positions of a random-weight model (default: the preset's, 1024 for GPT-2)",
    )
    p.add_argument("--prompt-file", default=None, help="text file encoded with tiktoken instead of a random prefix")
    p.add_argument("--encoding", default=d.encoding, help="tiktoken encoding name or a local .tiktoken file")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="record path (.json); written atomically. Default: print to stdout")


# Each kv mode's own options and the mode that uses them (core/presets.KV_MODE_OPTIONS). Parsed with no default
# (argparse.SUPPRESS): one not given is absent, so one given can be told from it, even typed as the default.
MODE_OPTIONS = {option: mode for mode, options in KV_MODE_OPTIONS.items() for option in options}


def unused_options(spec, given) -> list[str]:
    """A line for each kv mode option given that the cell's kv mode does not use. Said, not refused (a sweep
    passes each cell only its own mode's options: core/sweep.cell_flags)."""
    used = spec.kv_options()
    return [
        f"--{k.replace('_', '-')} applies to kv_mode {mode} only; ignored for {spec.kv_mode}"
        for k, mode in MODE_OPTIONS.items()
        if k in given and k not in used
    ]


def cmd_cell(args: argparse.Namespace, import_s: float | None = None) -> int:
    import json
    from pathlib import Path

    from kvbench.core.record import write_atomic
    from kvbench.measure.cell import run_cell
    from kvbench.measure.spec import CellSpec

    fields = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    if fields["model"] is None:
        fields["model"] = Path(args.checkpoint.rstrip("/")).name if args.checkpoint else CellSpec.model
    spec = CellSpec(**fields)  # a kv mode option not given is absent from `fields`: CellSpec's default
    for line in unused_options(spec, fields):
        print(f"kvbench cell: warning: {line}", file=sys.stderr)
    record = run_cell(spec, import_s)  # bad input raises UsageError: one line, exit 2 (kvbench.cli.ending)
    if spec.out is not None:
        try:  # e.g. the disk filled: write_atomic has removed its temp file, so no partial record is left
            write_atomic(Path(spec.out), record)
        except OSError as e:
            print(f"kvbench cell: error: out: cannot write {spec.out!r}: {e.strerror or e}", file=sys.stderr)
            return 1
    if spec.out is None:
        print(json.dumps(record, indent=2))
    status = record["status"]
    c = record["cell"]
    summary = (
        f"kvbench cell {c['engine']} {c['model']} {c['dtype']} {c['kv_mode']}{' compiled' if c['compile'] else ''} "
        f"b{c['batch']} p{c['prompt_len']} n{c['new_tokens']}{f' t{t}' if (t := c.get('threads')) else ''}: {status}"
    )
    if status == "ok":
        lat = record["latency"]
        summary += (
            f", decode {lat['decode_ms_per_token']['median']:.3f} ms/token, "
            f"prefill {lat['prefill_ms']['median']:.2f} ms, matches none: {record['check']['matches_reference']}"
        )
    elif record["error"]:
        summary += f": {record['error']}"
    print(summary, file=sys.stderr)  # the last line of the cell's log: the workflow echoes it as progress
    return 1 if status == "error" else 0
