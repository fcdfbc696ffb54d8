"""transformers' own caches behind kvbench's kv_mode names (engine hf), and what each holds in bytes.

    none         no cache (use_cache=False: every step recomputes)
    concat       DynamicCache: grows by torch.cat
    static       StaticCache: preallocated for the whole generation
    static-fp8   QuantizedCache, backend "fp8": float8_e4m3fn codes with one scale per layer's K (and V),
                 set from the prompt and then frozen; new tokens appended as codes, the whole layer
                 dequantized each step for attention
    static-int4  QuantizedCache, backend "quanto" (optimum-quanto), 4 bits: KIVI-like, K and V quantized in
                 groups of 64 channels with a full-precision residual of up to 128 tokens; when the residual
                 fills, the whole cache is dequantized and quantized again (transformers' QuantizedLayer)

The two quantized caches are transformers' implementations of the techniques kvbench's static-fp8 and
static-int4 implement, on the same weights, priced the same way (kvbench/measure/price.py): a row beside ours
for the speed and the price of each. optimum-quanto builds a small C++ extension on first use (tens of
seconds); `python -m kvbench.engines.hf_cache` builds it ahead (`make setup` does), and a cell's token check
and warm-up run before anything is timed.
"""

from __future__ import annotations

import importlib.util

import torch

QUANTIZED = {"static-fp8": ("fp8", {}), "static-int4": ("quanto", {"nbits": 4})}
QUANTO = "optimum-quanto==0.2.7"


def quanto_available() -> bool:
    return importlib.util.find_spec("optimum") is not None and importlib.util.find_spec("optimum.quanto") is not None


def fp8_available() -> bool:
    """This transformers' QuantizedCache has the fp8 backend (5.17, the GPU node's, does not)."""
    import transformers.cache_utils

    return hasattr(transformers.cache_utils, "Fp8QuantizedLayer")


def check_mode(kv_mode: str) -> None:
    """One line, before any heavy work, where the mode's backend is not installed."""
    backend = QUANTIZED.get(kv_mode, ("",))[0]
    if backend == "quanto" and not quanto_available():
        raise ValueError(
            f"kv_mode (engine hf): {kv_mode} is transformers' QuantizedCache with optimum-quanto, which is not "
            f"installed (pip install {QUANTO})"
        )
    if backend == "fp8" and not fp8_available():
        import transformers

        raise ValueError(
            f"kv_mode (engine hf): {kv_mode} is transformers' QuantizedCache with its fp8 backend, which is not "
            f"installed: transformers {transformers.__version__} has none (5.23 has)"
        )


def make_cache(hf, kv_mode: str, total: int):
    """transformers' cache for `kv_mode` holding up to `total` positions (None for `none`)."""
    from transformers import DynamicCache, QuantizedCache, StaticCache

    if kv_mode == "none":
        return None
    if kv_mode == "concat":
        return DynamicCache(config=hf.config)
    if kv_mode == "static":
        return StaticCache(config=hf.config, max_cache_len=total)
    if kv_mode in QUANTIZED:
        check_mode(kv_mode)
        backend, options = QUANTIZED[kv_mode]
        return QuantizedCache(backend, hf.config, **options)
    raise ValueError(f"kv_mode (engine hf): {kv_mode!r} is not one of none, concat, static, {', '.join(QUANTIZED)}")


def tensor_bytes(t) -> int:
    """Bytes a cache tensor holds: a plain tensor's, a (codes, scale) pair's, or a quanto tensor's parts."""
    if t is None:
        return 0
    if isinstance(t, tuple | list):
        return sum(tensor_bytes(x) for x in t)
    if hasattr(t, "__tensor_flatten__"):  # optimum-quanto's packed tensor: its codes, scales and shifts
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


class HFCacheBytes:
    """What a transformers cache holds, measured from its tensors like ours (`KVCache.nbytes`): the full-precision
    keys and values (a quantized cache's residual) and, for a quantized cache, its codes and parameters."""

    def __init__(self, cache):
        self.cache = cache

    def nbytes(self) -> int:
        return sum(
            tensor_bytes(getattr(layer, name, None))
            for layer in self.cache.layers
            for name in ("keys", "values", "_quantized_keys", "_quantized_values")
        )


def prepare() -> str:
    """Build optimum-quanto's CPU extension now (it builds on first use otherwise), where it is installed."""
    if not quanto_available():
        return f"hf_cache: optimum-quanto not installed: engine hf's static-int4 needs {QUANTO}"
    from optimum.quanto import MaxOptimizer, qint4, quantize_weight

    x = torch.randn(64, 64)
    scale, shift = MaxOptimizer()(x, qint4, 0, 64)
    quantize_weight(x, qint4, 0, scale, shift, 64).dequantize()
    return "hf_cache: optimum-quanto's CPU extension is built"


if __name__ == "__main__":
    print(prepare())
