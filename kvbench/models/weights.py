"""How a model's weights come to be and how they are laid out, for every model family.

Built empty on the meta device (no default init), then filled by a seeded init or a checkpoint,
then optionally re-laid out for decoding on the CPU. Nothing here knows a family's architecture.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn


@contextmanager
def skip_default_init() -> Iterator[None]:
    """Module constructors skip their default init (`reset_parameters`) inside this block.

    Every caller overwrites the weights anyway (seeded init or a checkpoint), so the default
    init is wasted work, and on the meta device it is worse than that: `normal_` on a meta
    tensor imports torch._dynamo (2+ s of a cell's start-up) for numbers that are never made.
    """
    saved = {cls: cls.reset_parameters for cls in (nn.Linear, nn.Embedding, nn.LayerNorm)}
    try:
        for cls in saved:
            cls.reset_parameters = lambda self: None
        yield
    finally:
        for cls, fn in saved.items():
            cls.reset_parameters = fn


def seeded_init(model: nn.Module, seed: int, for_decoding: bool) -> nn.Module:
    """Fill an empty model with its family's seeded random init (`model.init_weights`) on its own device.

    for_decoding: lay the weights out for decoding first (`prepare_for_decoding`), so they are
    initialised in place rather than copied into that layout afterwards.
    """
    device = next(model.parameters()).device
    if for_decoding:
        prepare_for_decoding(model, keep_values=False)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    model.init_weights(gen)
    return model.eval()


@torch.no_grad()
def store_wide_weights_input_major(model: nn.Module, keep_values: bool = True) -> None:
    """Lay out each widening weight (out_features > in_features) (in, out)-contiguous, keeping
    nn.Linear's (out, in) shape, values and weight tying; only the strides change.

    A batch-1 decode step is matrix-vector products. On the 2-core CI CPU, oneDNN/MKL stream a
    widening matrix (QKV, MLP up-projection, the 50257-row LM head) 20-60% faster stored (in, out)
    (the head: 14 -> 8.6 ms), while the narrowing ones (attention and MLP down-projections) are
    ~10-20% faster left row-major: measured over cold weights, so each layer's is read from memory.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.out_features > module.in_features:
            w = module.weight.data
            if w.t().is_contiguous():
                continue  # laid out already
            module.weight.data = (
                w.t().contiguous().t()
                if keep_values
                else torch.empty_strided(w.shape, (1, w.size(0)), dtype=w.dtype, device=w.device)
            )


def prepare_for_decoding(
    model: nn.Module, keep_values: bool = True, pack: bool = False, kernel_rows: int | None = None
) -> str:
    """Choose how the weights are laid out and multiplied for decoding on the model's device; returns
    the choice's name for the record.

    pack, on a float32 CPU: every linear layer through oneDNN's inner product on weights packed once
    in its own layout (kvbench/models/decode_linear.py), which streams them near memory speed at batch 1
    to 8. The caller packs only an eager kvbench model: torch.compile does its own packing
    (inductor's freezing), and the other engines export our weights.
    kernel_rows, on a float32 CPU (kvbench's own cells, eager or compiled): the decode batch at which each
    matrix's shape is timed with kvbench's small-batch kernel against oneDNN (models/linear_choice.py); the
    matrices it wins are packed for it ("small-batch+..." names the rest's layout). None: not used (a peer).
    CPU otherwise: widening matrices input-major (measured faster for the libraries' batch-1
    matrix-vector products, see `store_wide_weights_input_major`).
    GPU: PyTorch's own (out, in) layout, left alone because no GPU layout was measured here.
    keep_values=False: the weights are about to be initialised, so nothing is copied.
    """
    from kvbench.models import decode_linear

    weight = next(model.parameters())
    if weight.device.type != "cpu":
        return "torch"
    packable = keep_values and decode_linear.can_pack(weight)
    rows = kernel_rows if packable else None
    if pack and packable:
        layout, chosen = "onednn-packed", decode_linear.pack(model, rows)
    else:
        store_wide_weights_input_major(model, keep_values)
        layout, chosen = "wide-input-major", decode_linear.pack(model, rows, library=False) if rows else []
    return f"small-batch+{layout}" if any(c.kernel == "small-batch" for c in chosen) else layout
