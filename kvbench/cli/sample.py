"""`kvbench sample`: text in, text out, like nanoGPT's sample.py, in any decode mode (the loop is generate.py).

Prints each sample, then the mean time per sample and tokens/s (write-up 003 timed whole
samples this way). A prompt that leaves no room below the block size is refused, and one
that fills it part-way is cut short with a warning (write-up 000's safety check).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from kvbench.cli.parser import OneLineParser, number
from kvbench.core.presets import KV_MODES, PRESETS


def parse(argv: list[str]) -> argparse.Namespace:
    p = OneLineParser(prog="kvbench sample", description="Sample text from a model in any decode mode.")
    p.add_argument("--start", "--prompt", default="\n", help="prompt text, or FILE:<path> to read it from a file")
    p.add_argument("--num-samples", type=number(int, 1), default=1)
    p.add_argument("--max-new-tokens", type=number(int, 1), default=64)
    # Sampling divides the logits by it: a negative one would invert them, so 0 (greedy) is the least.
    p.add_argument("--temperature", type=number(float, 0, "0 = greedy"), default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=number(int, 1), default=200)
    p.add_argument("--kv-mode", default="static", help=", ".join(KV_MODES))
    p.add_argument("--model", default="gpt2", help=f"random-weight preset ({', '.join(PRESETS)}) when no --checkpoint")
    p.add_argument("--checkpoint", default=None, help="transformers model directory, nanoGPT ckpt.pt, or hf:<name>")
    p.add_argument(
        "--encoding",
        default=None,
        help="tiktoken encoding name or a local .tiktoken file (default: the checkpoint directory's "
        "tokenizer.json when it has one, else gpt2)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--seed", type=int, default=1337)
    return p.parse_args(argv)


def fail(msg: str) -> int:
    print(f"kvbench sample: error: {msg}", file=sys.stderr)
    return 2


def check_args(args: argparse.Namespace) -> str | None:
    """The first bad option as one line, or None."""
    if args.kv_mode not in KV_MODES:  # the numbers are checked as they are parsed (parser.number)
        return f"kv_mode: {args.kv_mode!r} is not one of {', '.join(KV_MODES)}"
    return None


def prompt_ids(args: argparse.Namespace, enc, vocab_size: int, block_size: int) -> tuple[list[int], int]:
    """The prompt's token ids and how many new tokens fit after it; ValueError names what is wrong."""
    text = args.start
    if text.startswith("FILE:"):
        try:
            with open(text[5:], encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ValueError(f"start: cannot read {text[5:]!r} ({e.strerror})") from None
    ids = enc.encode(text)
    if not ids:
        raise ValueError("start: the prompt encodes to no tokens")
    if max(ids) >= vocab_size:
        raise ValueError(f"encoding: token id {max(ids)} is outside the model's vocabulary of {vocab_size}")
    room = block_size - len(ids)
    if room < 1:
        raise ValueError(f"start: the prompt is {len(ids)} tokens; the model's block_size {block_size} leaves no room")
    if args.max_new_tokens > room:
        print(
            f"kvbench sample: warning: {len(ids)} prompt + {args.max_new_tokens} new tokens exceed block_size "
            f"{block_size}; stopping after {room} new tokens",
            file=sys.stderr,
        )
    return ids, min(args.max_new_tokens, room)


def sample(args: argparse.Namespace, cfg, device, enc, ids: list[int], new_tokens: int) -> None:
    """Build the model, warm it up, then print each sample and the mean time per sample."""
    import torch

    from kvbench.engines.generate import Sampling, generate
    from kvbench.measure.devices import DTYPES, synchronize
    from kvbench.models import checkpoint
    from kvbench.models.family import build_random, prepare_for_decoding

    dtype = DTYPES[args.dtype]
    if args.checkpoint:
        model = checkpoint.load(args.checkpoint, device, dtype)
    else:
        model = build_random(cfg, device, dtype, args.seed)
    prepare_for_decoding(model, pack=True)
    prompt = torch.tensor([ids], device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, generator=gen, vocab_limit=enc.n_vocab)
    generate(model, prompt, min(new_tokens, 4), args.kv_mode)  # warm-up, untimed
    times = []
    for _ in range(args.num_samples):
        synchronize(device)
        t0 = time.perf_counter()
        out = generate(model, prompt, new_tokens, args.kv_mode, sampling=sampling)
        synchronize(device)
        times.append(time.perf_counter() - t0)
        print(enc.decode(ids + out.tokens[0].tolist()))
        print("---------------")
    mean = statistics.mean(times)
    print(
        f"kv_mode {args.kv_mode}: {mean:.3f} s per sample (mean of {len(times)}), {new_tokens / mean:.1f} tokens/s",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    from kvbench.measure.spec import CellSpec, UsageError
    from kvbench.models.tokenizer import EncodingError, for_model

    if (bad := check_args(args)) is not None:
        return fail(bad)
    spec = CellSpec(
        model=args.model,
        kv_mode=args.kv_mode,
        dtype=args.dtype,
        device=args.device,
        checkpoint=args.checkpoint,
        prompt_len=1,
        new_tokens=2,
    )
    try:
        cfg, device = spec.check()
        enc = for_model(args.checkpoint, args.encoding)
        ids, new_tokens = prompt_ids(args, enc, cfg.vocab_size, cfg.block_size)
    except (UsageError, EncodingError, ValueError) as e:
        return fail(str(e))
    sample(args, cfg, device, enc, ids, new_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
