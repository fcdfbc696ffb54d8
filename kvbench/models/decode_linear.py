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
"""

from __future__ import annotations

import torch
import torch.nn as nn


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


@torch.no_grad()
def pack(model: nn.Module) -> None:
    """Route every nn.Linear through oneDNN, packing each weight the module does not share."""
    shared = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for module in model.modules():
        if type(module) is not nn.Linear:
            continue
        weight = module.weight
        if id(weight) in shared:  # a tied head: row-major for both the lookup and the inner product
            weight.data = weight.data.contiguous()
        else:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)
            module.weight = nn.Parameter(packed, requires_grad=False)
        if module.bias is not None:
            module.bias.requires_grad_(False)
        module.__class__ = DecodeLinear
