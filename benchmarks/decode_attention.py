"""Benchmark: one decode step's attention over every layer's cache, each cache kind by each path that can read it.

The paths: SDPA over float32 (what `static` eager ran), inductor's fused loop (caches/fused.py, compiled once with
dynamic shapes), and kvbench's C++ kernel (kernels/decode_attention.cpp), over the codes as each kind stores them:
float32, int8 and fp8 with per-token scales, int4 (KIVI's layout), and a paged pool read through block tables.
Each layer has its own buffers (as in a model), so a step streams n_layer caches; paths alternate in rounds and
the median step is reported with its spread. A benchmark, not a test: it prints.

    python benchmarks/decode_attention.py --batch 4 --heads 12 --kv-heads 12 --positions 1000   # gpt2 b4 p1000
    python benchmarks/decode_attention.py --batch 1 --heads 9 --kv-heads 3 --positions 128      # smollm2 b1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from kvbench.caches import fused
from kvbench.caches.int4 import pack, quantize
from kvbench.caches.scaled import quantize_fp8, quantize_int8
from kvbench.kernels import decode_attention as kernel


def layers(args):
    B, Hkv, T, D, G = args.batch, args.kv_heads, args.positions, args.head_dim, args.group
    out = []
    for _ in range(args.layers):
        k, v = torch.randn(B, Hkv, T, D), torch.randn(B, Hkv, T, D)
        n, vg = T // G, min(G, D)
        kq, ks, kz = quantize(k[:, :, : n * G].reshape(B, Hkv, n, G, D), dim=-2)
        vq, vs, vz = quantize(v.reshape(B, Hkv, T, D // vg, vg), dim=-1)
        res = torch.zeros(B, Hkv, G, D)
        res[:, :, : T - n * G] = k[:, :, n * G :]
        int4 = (pack(kq.reshape(B, Hkv, n * G, D)), ks, kz, res, T - n * G, pack(vq.reshape(B, Hkv, T, D)), vs, vz)
        bt = 16
        blocks = -(-T // bt)
        pool_k = k.permute(1, 0, 2, 3).reshape(Hkv, B * T, D)  # each sequence's blocks one after another
        pool_k = torch.cat([pool_k, torch.zeros(Hkv, B * blocks * bt - B * T, D)], 1) if B * T % bt else pool_k
        out.append(dict(k=k, v=v, i8=(*quantize_int8(k), *quantize_int8(v)), f8=(*quantize_fp8(k), *quantize_fp8(v)),
                        int4=int4, pool=(pool_k, pool_k.clone())))  # fmt: skip
    return out


def paths(args, q):
    B, T, G = args.batch, args.positions, args.group
    bt, blocks = 16, -(-T // 16)
    table = torch.arange(B * blocks).reshape(B, blocks) if T % bt == 0 else None
    lengths = torch.full((B,), T)
    bias = None

    def int4_ref(layer):
        nonlocal bias
        kq, ks, kz, res, held, vq, vs, vz = layer["int4"]
        if bias is None:
            bias = torch.where(torch.arange(G) < held, 0.0, float("-inf"))
        return fused.run(fused.int4_attention, q, kq, ks, kz, res, bias, vq, vs, vz)

    gqa = args.kv_heads != args.heads
    p = {
        "fp32 sdpa": lambda layer: F.scaled_dot_product_attention(q, layer["k"], layer["v"], enable_gqa=gqa),
        "fp32 kernel": lambda layer: kernel.dense(q, layer["k"], layer["v"]),
        "int8 inductor": lambda layer: fused.run(
            fused.scaled_attention, q, layer["i8"][0], layer["i8"][1], layer["i8"][2], layer["i8"][3]
        ),
        "int8 kernel": lambda layer: kernel.dense(q, layer["i8"][0], layer["i8"][2], layer["i8"][1], layer["i8"][3]),
        "fp8 inductor": lambda layer: fused.run(
            fused.scaled_attention, q, layer["f8"][0], layer["f8"][1], layer["f8"][2], layer["f8"][3]
        ),
        "fp8 kernel": lambda layer: kernel.dense(q, layer["f8"][0], layer["f8"][2], layer["f8"][1], layer["f8"][3]),
        "int4 inductor": int4_ref,
        "int4 kernel": lambda layer: kernel.int4(q, *layer["int4"]),
    }
    if table is not None:
        p["paged kernel"] = lambda layer: kernel.paged(q, *layer["pool"], table, lengths, bt)
    return p


def main() -> None:
    a = argparse.ArgumentParser()
    a.add_argument("--batch", type=int, default=4)
    a.add_argument("--heads", type=int, default=12)
    a.add_argument("--kv-heads", type=int, default=12)
    a.add_argument("--positions", type=int, default=1008)
    a.add_argument("--head-dim", type=int, default=64)
    a.add_argument("--group", type=int, default=32)
    a.add_argument("--layers", type=int, default=12)
    a.add_argument("--rounds", type=int, default=15)
    a.add_argument("--threads", type=int, default=2)
    args = a.parse_args()
    torch.set_num_threads(args.threads)
    assert kernel.available()
    ls = layers(args)
    q = torch.randn(args.batch, args.heads, 1, args.head_dim)
    p = paths(args, q)
    times = {name: [] for name in p}
    with torch.no_grad():
        for f in p.values():  # warm-up (compiles inductor's kernels)
            for layer in ls:
                f(layer)
        for _ in range(args.rounds):
            for name, f in p.items():
                t0 = time.perf_counter()
                for layer in ls:
                    f(layer)
                times[name].append((time.perf_counter() - t0) * 1e3)
    print(f"B{args.batch} H{args.heads} Hkv{args.kv_heads} T{args.positions} D{args.head_dim}, {args.layers} layers, "
          f"{args.threads} threads: ms per step (median, min-max over {args.rounds} rounds)")  # fmt: skip
    for name, t in times.items():
        print(f"  {name:14s} {statistics.median(t):7.2f}  ({min(t):.2f}-{max(t):.2f})")


if __name__ == "__main__":
    main()
