"""`kvbench visualize`: capture one attention head while a cached generation runs, then draw
it as an animated GIF (kvbench.analysis.attention_gif, write-up 000's dashboard).

Each frame is one forward call (frame 0 the prefill, then one per decode step): the newest query
q, the cached K and V of the head's K/V group, and the query's attention weights over the cache.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from kvbench.cli.parser import OneLineParser, number
from kvbench.core.presets import PRESETS


def parse(argv: list[str]):
    p = OneLineParser(prog="kvbench visualize", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help=", ".join(PRESETS))
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--layer", type=number(int, 0), default=0)
    p.add_argument("--head", type=number(int, 0), default=0)
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--kv-mode", default="static", help="concat or static")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frame-ms", type=number(int, 1), default=250, help="milliseconds each frame shows")
    p.add_argument("--out", required=True, help="GIF path (.gif)")
    return p.parse_args(argv)


def capture(model, prompt, new_tokens: int, kv_mode: str, layer: int, head: int) -> list[dict]:
    """q of the newest position, K, V and its attention weights (numpy) for every forward call."""
    import torch

    from kvbench.engines.generate import generate

    attn = model.attention_layer(layer)
    kv_head = head // (attn.n_head // attn.n_kv_head)
    frames: list[dict] = []

    def probe(q, k, v) -> None:
        qh = q[0, head, -1].float()
        kh, vh = k[0, kv_head].float(), v[0, kv_head].float()
        weights = torch.softmax(kh @ qh / math.sqrt(qh.numel()), dim=0)  # the newest query sees all keys
        frames.append({name: t.cpu().numpy() for name, t in (("q", qh), ("k", kh), ("v", vh), ("att", weights))})

    attn.probe = probe
    try:
        generate(model, prompt, new_tokens, kv_mode)
    finally:
        attn.probe = None
    return frames


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    from kvbench.measure.spec import CellSpec, UsageError, check_writable

    def fail(msg: str) -> int:
        print(f"kvbench visualize: error: {msg}", file=sys.stderr)
        return 2

    if args.kv_mode not in ("concat", "static"):
        return fail(f"kv_mode: {args.kv_mode!r} is not one of concat, static (the GIF shows a cache)")
    spec = CellSpec(
        model=args.model,
        checkpoint=args.checkpoint,
        kv_mode=args.kv_mode,
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        device="cpu",
        seed=args.seed,
    )
    try:
        cfg, device = spec.check()
        check_writable(Path(args.out), ".gif")
    except UsageError as e:
        return fail(str(e))
    if not 0 <= args.layer < cfg.n_layer:
        return fail(f"layer: {args.layer} is out of range 0..{cfg.n_layer - 1}")
    if not 0 <= args.head < cfg.n_head:
        return fail(f"head: {args.head} is out of range 0..{cfg.n_head - 1}")

    import torch

    from kvbench.analysis.attention_gif import write_gif
    from kvbench.core.presets import kv_cache_bytes
    from kvbench.measure.spec import make_prompt
    from kvbench.models import checkpoint
    from kvbench.models.family import build_random

    model = (
        checkpoint.load(args.checkpoint, device, torch.float32)
        if args.checkpoint
        else build_random(cfg, device, torch.float32, args.seed)
    )
    frames = capture(model, make_prompt(spec, cfg.vocab_size), args.new_tokens, args.kv_mode, args.layer, args.head)
    title = f"{args.model} layer {args.layer} head {args.head} ({args.kv_mode} cache)"
    per_token = kv_cache_bytes(1, 1, cfg.kv_heads, 1, cfg.head_dim, 4)  # this layer's K and V, fp32
    out = Path(args.out)
    write_gif(out, frames, title, args.prompt_len + args.new_tokens - 1, per_token, args.frame_ms)
    print(f"kvbench visualize: {len(frames)} frames -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
