"""`kvbench visualize`: an animated GIF of one attention head while a cached generation runs.

Each frame is one forward call (frame 0 the prefill, then one per decode step) and shows the
newest query q, the cached K and V growing one row per token, and the query's attention
weights over the cache (write-up 000's dashboard). Frames are drawn with Agg and assembled
with Pillow, so the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from pathlib import Path

from kvbench.cli import OneLineParser
from kvbench.presets import PRESETS

FIGSIZE, DPI = (8.0, 6.0), 80  # 640 x 480 pixels per frame


def parse(argv: list[str]) -> argparse.Namespace:
    p = OneLineParser(prog="kvbench visualize", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help=", ".join(PRESETS))
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--layer", type=int, default=0)
    p.add_argument("--head", type=int, default=0)
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--kv-mode", default="static", help="concat or static")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frame-ms", type=int, default=250)
    p.add_argument("--out", required=True, help="GIF path")
    return p.parse_args(argv)


def capture(model, prompt, new_tokens: int, kv_mode: str, layer: int, head: int) -> list[dict]:
    """q of the newest position, K, V and its attention weights for every forward call."""
    import torch

    from kvbench.generate import generate

    attn = model.transformer.h[layer].attn
    kv_head = head // (attn.n_head // attn.n_kv_head)
    frames: list[dict] = []

    def probe(q, k, v) -> None:
        qh = q[0, head, -1].float()
        kh, vh = k[0, kv_head].float(), v[0, kv_head].float()
        weights = torch.softmax(kh @ qh / math.sqrt(qh.numel()), dim=0)  # the newest query sees all keys
        frames.append(
            {"q": qh.cpu().numpy(), "k": kh.cpu().numpy(), "v": vh.cpu().numpy(), "att": weights.cpu().numpy()}
        )

    attn.probe = probe
    try:
        generate(model, prompt, new_tokens, kv_mode)
    finally:
        attn.probe = None
    return frames


def render(frames: list[dict], title: str, max_len: int, kv_bytes_per_token: int) -> list:
    """One PIL image per frame, all the same size."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    hd = frames[0]["q"].shape[0]
    lim = max(float(np.abs(f[key]).max()) for f in frames for key in ("q", "k", "v")) or 1.0
    att_max = max(float(f["att"].max()) for f in frames)  # random weights attend almost uniformly
    images = []
    for i, f in enumerate(frames):
        fig = Figure(figsize=FIGSIZE, dpi=DPI)
        FigureCanvasAgg(fig)
        grid = fig.add_gridspec(2, 3, height_ratios=[1, 5])
        t = f["k"].shape[0]
        pad = np.full((max_len, hd), np.nan)
        ax_q = fig.add_subplot(grid[0, :2])
        ax_q.imshow(f["q"][None, :], cmap="coolwarm", vmin=-lim, vmax=lim, aspect="auto")
        ax_q.set(title="q (newest token)", yticks=[], xlabel="head dim")
        for col, key in ((0, "k"), (1, "v")):
            ax = fig.add_subplot(grid[1, col])
            pad[:] = np.nan
            pad[:t] = f[key]
            ax.imshow(pad, cmap="coolwarm", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
            ax.set(title=f"{key.upper()} cache ({t} rows)", xlabel="head dim", ylabel="position")
        ax_a = fig.add_subplot(grid[:, 2])
        att = np.zeros(max_len)
        att[:t] = f["att"]
        ax_a.barh(np.arange(max_len), att, color="#1f77b4")
        ax_a.set(title="attention of q", xlim=(0, 1.05 * att_max), ylim=(max_len - 0.5, -0.5), xlabel="weight")
        phase = "prefill" if i == 0 else f"decode step {i}"
        fig.suptitle(f"{title}\n{phase}: cache holds {t} tokens, {t * kv_bytes_per_token / 1024:.1f} KiB")
        fig.subplots_adjust(left=0.07, right=0.97, top=0.84, bottom=0.09, wspace=0.35, hspace=0.5)
        fig.canvas.draw()
        images.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3]))
    return images


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    from kvbench.spec import CellSpec, UsageError

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
        out=args.out,
    )
    try:
        cfg, device = spec.check()
    except UsageError as e:
        return fail(str(e))
    if not 0 <= args.layer < cfg.n_layer:
        return fail(f"layer: {args.layer} is out of range 0..{cfg.n_layer - 1}")
    if not 0 <= args.head < cfg.n_head:
        return fail(f"head: {args.head} is out of range 0..{cfg.n_head - 1}")

    import torch

    from kvbench import checkpoint
    from kvbench.model import build_random
    from kvbench.spec import make_prompt

    model = (
        checkpoint.load(args.checkpoint, device, torch.float32)
        if args.checkpoint
        else build_random(cfg, device, torch.float32, args.seed)
    )
    prompt = make_prompt(spec, cfg.vocab_size)
    frames = capture(model, prompt, args.new_tokens, args.kv_mode, args.layer, args.head)
    title = f"{args.model} layer {args.layer} head {args.head} ({args.kv_mode} cache)"
    from kvbench.kv_cache import kv_cache_bytes

    per_token = kv_cache_bytes(1, 1, cfg.kv_heads, 1, cfg.head_dim, 4)  # this layer's K and V, fp32
    images = render(frames, title, args.prompt_len + args.new_tokens - 1, per_token)
    from kvbench.record import write_atomic_bytes

    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=args.frame_ms, loop=0)
    out = Path(args.out)
    write_atomic_bytes(out, buf.getvalue())
    print(f"kvbench visualize: {len(images)} frames -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
