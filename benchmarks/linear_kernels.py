"""Benchmark: each CPU matrix-product path over a model's decode matrices, in GB/s against the read probe.

A decode step streams every weight matrix once per token, so a kernel is as good as the fraction of the
read bandwidth it reaches on the step's own matrices. This times, at each batch, one pass over all of a
preset's linear layers (every block's matrices and the head, as many copies as the model has, so they
stream from memory as in a step) with:

    mkl        F.linear on the plain matrices (MKL's sgemm/sgemv)
    onednn     oneDNN's inner product on weights packed once (kvbench's eager path before its kernel)
    kernel     kvbench's small-batch kernel (kvbench/kernels/small_batch_linear.cpp)
    inductor   the same layers compiled by inductor with frozen weights and its C++ GEMM template
               (kvbench's compiled path for the matrices the kernel does not take); --inductor

in alternating rounds, beside the read probe (a sum over 1 GiB) measured in the same rounds. A
benchmark, not a test: it prints, it does not pass or fail.

    python benchmarks/linear_kernels.py --model gpt2 --batch 1 2 4 8
    python benchmarks/linear_kernels.py --model smollm2-135m --batch 1 4 --inductor
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from kvbench.core.presets import preset
from kvbench.kernels import small_batch_linear as kernel
from kvbench.models.family import build_random


def matrices(model_name: str) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Every linear layer's (weight, bias) of the preset, the head included, as the model holds them."""
    model = build_random(preset(model_name), "cpu", torch.float32, seed=0)
    return [(m.weight.detach().contiguous(), m.bias) for m in model.modules() if isinstance(m, nn.Linear)]


def variants(layers, batch: int, with_inductor: bool) -> dict:
    xs = {k: torch.randn(batch, k) for k in {w.size(1) for w, _ in layers}}
    onednn = [torch.ops.mkldnn._reorder_linear_weight(w, None) for w, _ in layers]
    out = {
        "mkl": lambda: [F.linear(xs[w.size(1)], w, b) for w, b in layers],
        "onednn": lambda: [
            torch.ops.mkldnn._linear_pointwise(xs[w.size(1)], p, b, "none", [], "") for (w, b), p in zip(layers, onednn)
        ],
    }
    if kernel.available():
        packed = [kernel.pack(w) for w, _ in layers]
        out["kernel"] = lambda: [kernel.linear(xs[w.size(1)], p, b, w.size(0)) for (w, b), p in zip(layers, packed)]
    if with_inductor:
        out["inductor"] = compiled(layers, xs)
    return out


def compiled(layers, xs):
    import torch._inductor.config as inductor

    from kvbench.engines.kvbench import CPU_INDUCTOR_OPTIONS

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.linears = nn.ModuleList()
            for w, b in layers:
                lin = nn.Linear(w.size(1), w.size(0), bias=b is not None)
                lin.weight.data, lin.bias = w, None if b is None else nn.Parameter(b.detach())
                self.linears.append(lin)

        def forward(self, inputs: dict):
            return [lin(inputs[lin.in_features]).sum() for lin in self.linears]

    with torch.no_grad(), inductor.patch(CPU_INDUCTOR_OPTIONS):
        fn = torch.compile(Stack().eval())
        fn(xs)
    return lambda: fn(xs)


def best_and_median(fn, reps: int) -> tuple[float, float]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--inductor", action="store_true", help="also the inductor-compiled layers (a compile per batch)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    layers = matrices(args.model)
    nbytes = sum(w.numel() * 4 for w, _ in layers)
    probe = torch.ones(1 << 28)  # 1 GiB
    print(f"{args.model}: {len(layers)} matrices, {nbytes / 1e6:.0f} MB, {args.threads} threads")
    print("| batch | path | ms per pass, median (best) | GB/s (best) | of the read probe |")
    print("|---|---|---|---|---|")
    for batch in args.batch:
        paths = variants(layers, batch, args.inductor)
        for fn in paths.values():
            fn()  # warm-up
        times: dict = {name: [] for name in paths}
        reads = []
        for _ in range(args.rounds):
            reads.append(probe.numel() * 4 / best_and_median(probe.sum, 3)[0])
            for name, fn in paths.items():
                times[name].append(best_and_median(fn, 5))
        read = max(reads)
        for name, kept in times.items():
            best, median = min(t[0] for t in kept), statistics.median(t[1] for t in kept)
            rate = nbytes / best
            print(
                f"| {batch} | {name} | {median * 1e3:.2f} ({best * 1e3:.2f}) | {rate / 1e9:.1f} | {rate / read:.2f} |"
            )
        print(f"| {batch} | read probe | | {read / 1e9:.1f} | 1.00 |")


if __name__ == "__main__":
    main()
