"""Captured attention frames -> an animated GIF (write-up 000's dashboard; `kvbench visualize`
captures them). Each frame shows the newest query q, the K and V cache growing one row per
token, and the query's attention weights over the cache. Frames are drawn with Agg and
assembled with Pillow, so the same frames give the same bytes.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from kvbench.core.record import write_atomic_bytes  # noqa: E402

FIGSIZE, DPI = (8.0, 6.0), 80  # 640 x 480 pixels per frame


def frame_image(f: dict, i: int, title: str, max_len: int, kv_bytes_per_token: int, lim: float, att_max: float):
    """One frame as a PIL image; every frame the same size, scales shared across frames."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 3, height_ratios=[1, 5])
    t, hd = f["k"].shape
    ax_q = fig.add_subplot(grid[0, :2])
    ax_q.imshow(f["q"][None, :], cmap="coolwarm", vmin=-lim, vmax=lim, aspect="auto")
    ax_q.set(title="q (newest token)", yticks=[], xlabel="head dim")
    for col, key in ((0, "k"), (1, "v")):
        pad = np.full((max_len, hd), np.nan)  # rows not yet cached stay blank
        pad[:t] = f[key]
        ax = fig.add_subplot(grid[1, col])
        ax.imshow(pad, cmap="coolwarm", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
        ax.set(title=f"{key.upper()} cache ({t} rows)", xlabel="head dim", ylabel="position")
    att = np.zeros(max_len)
    att[:t] = f["att"]
    ax_a = fig.add_subplot(grid[:, 2])
    ax_a.barh(np.arange(max_len), att, color="#1f77b4")
    ax_a.set(title="attention of q", xlim=(0, 1.05 * att_max), ylim=(max_len - 0.5, -0.5), xlabel="weight")
    phase = "prefill" if i == 0 else f"decode step {i}"
    fig.suptitle(f"{title}\n{phase}: cache holds {t} tokens, {t * kv_bytes_per_token / 1024:.1f} KiB")
    fig.subplots_adjust(left=0.07, right=0.97, top=0.84, bottom=0.09, wspace=0.35, hspace=0.5)
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])


def write_gif(out: Path, frames: list[dict], title: str, max_len: int, kv_bytes_per_token: int, frame_ms: int) -> None:
    lim = max(float(np.abs(f[key]).max()) for f in frames for key in ("q", "k", "v")) or 1.0
    att_max = max(float(f["att"].max()) for f in frames)  # random weights attend almost uniformly
    images = [frame_image(f, i, title, max_len, kv_bytes_per_token, lim, att_max) for i, f in enumerate(frames)]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    write_atomic_bytes(Path(out), buf.getvalue())
