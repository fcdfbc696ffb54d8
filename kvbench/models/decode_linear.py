"""A decode step's linear layers on the CPU at memory speed: oneDNN's inner product on packed weights.

A decode step multiplies `batch` rows by every weight matrix, each read from memory once per step,
so the step's time is how fast the weights stream. `F.linear` goes to MKL's GEMM, which repacks the
weight on every call once there is more than one row: on the 2-core CI CPU the block and head
matrices of gpt2 (494 MB) took 35 ms at batch 1 and 90 ms at batch 8 that way. oneDNN's inner
product on a weight packed once, at load, into its own blocked layout
(`torch.ops.mkldnn._reorder_linear_weight`) took 20 ms and 36 ms (the same run, 2 threads).

Packing replaces each weight with an opaque oneDNN tensor of the same shape, dtype and bytes (so
parameter counts, the byte floor and memory are unchanged), which only oneDNN's own ops read. A
weight shared with the token embedding (a tied head) stays a dense tensor, because the lookup reads
it too; oneDNN's inner product reads that dense one directly (gpt2's head: 4 ms at batch 1, 17 ms
at batch 8 against `F.linear`'s 13 and 36), without a second copy. The state dict stays dense, so
engines that export our weights see plain tensors.

Where kvbench's own small-batch kernel (kvbench/kernels/) is built for this CPU and measured faster for a
matrix's shape at the cell's batch (linear_choice.py), that matrix is packed for it instead
(`SmallBatchLinear`), in eager and compiled cells alike: a compiled graph calls it as one extern kernel.
The rest stay with oneDNN (eager) or inductor's own GEMM (compiled). Each measured module keeps its `choice`.
A tied head the kernel runs is packed once, and the token table looks its rows up in that layout
(`PackedEmbedding`): gpt2's head is 31% of the step's bytes, and oneDNN read it at 0.6-0.8 of the read
probe at batch 4-8 where the kernel reads it at ~1.0 (2-core Xeon, 2026-12-07).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from kvbench.kernels import small_batch_linear as kernel
from kvbench.models import linear_choice


def can_pack(weight: torch.Tensor) -> bool:
    """oneDNN packing applies: float32 on a CPU with oneDNN (other dtypes keep the library layout)."""
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()


class DecodeLinear(nn.Linear):
    """nn.Linear computed by oneDNN's inner product, on its packed weight or a shared dense one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.weight.is_mkldnn:  # what an export (transformers, CTranslate2, GGUF) reads: the plain matrix
            destination[prefix + "weight"] = self.weight.to_dense()


class SmallBatchLinear(nn.Linear):
    """nn.Linear computed by kvbench's small-batch kernel; its weight the same floats, flat in the kernel's layout."""

    choice: linear_choice.Choice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernel.linear(x, self.weight, self.bias, self.out_features)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = kernel.unpack(self.weight.detach(), self.out_features, self.in_features)


class PackedEmbedding(nn.Embedding):
    """A token table tied to a head that the kernel runs: rows looked up in the kernel's layout, no second copy."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return kernel.rows(self.weight, self.num_embeddings, self.embedding_dim, idx)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = kernel.unpack(self.weight.detach(), self.num_embeddings, self.embedding_dim)


def kernel_choices(rows: int | None, linears: list[nn.Linear]) -> dict:
    """(out, in) -> Choice for the matrices the kernel can take, measured at `rows` rows; {} where it cannot run."""
    if rows is None or rows > 8 or not linears or not kernel.available():
        return {}
    return linear_choice.choose([tuple(m.weight.shape) for m in linears if kernel.fits(m.weight)], rows)


@torch.no_grad()
def pack(model: nn.Module, rows: int | None = None, library: bool = True) -> list[linear_choice.Choice]:
    """Route every nn.Linear through the faster of kvbench's kernel (at `rows` rows) and oneDNN, packing each
    weight; library=False (a compiled cell): only the kernel's, the rest left to inductor. A head tied to the
    token table keeps one copy: packed for the kernel with the table reading it there, or dense for oneDNN.
    Returns the choices measured."""
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    shared = {id(m.weight) for m in tables}
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    choices = kernel_choices(rows, linears)
    for module in linears:
        weight = module.weight
        choice = choices.get(tuple(weight.shape))
        if choice is not None:
            module.choice = choice  # measured, whichever won: the record lists it
        if choice is not None and choice.kernel == "small-batch":
            module.weight = nn.Parameter(kernel.pack(weight), requires_grad=False)
            module.__class__ = SmallBatchLinear
            for table in tables:
                if table.weight is weight:  # tied: the table reads the packed copy, the dense one is freed
                    table.weight = module.weight
                    table.__class__ = PackedEmbedding
        elif not library:
            continue
        elif id(weight) in shared:  # a tied head: row-major for both the lookup and the inner product
            weight.data = weight.data.contiguous()
            module.__class__ = DecodeLinear
        else:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)
            module.weight = nn.Parameter(packed, requires_grad=False)
            module.__class__ = DecodeLinear
        if module.bias is not None:
            module.bias.requires_grad_(False)
    return list(choices.values())


def kernel_choices_of(model: nn.Module) -> list[dict]:
    """What each measured matrix shape runs on and the times that chose it, for the record (one entry per shape)."""
    seen = {}
    for module in model.modules():
        if (choice := getattr(module, "choice", None)) is not None:
            seen.setdefault(choice.shape, choice)
    return linear_choice.as_record(dict(enumerate(seen.values())))
