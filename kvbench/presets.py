"""Model shapes: GPT-2's configuration and the named presets, importable without torch.

The Snakefile validates sweeps against these (block size, head counts) when it parses,
so this module must stay free of heavy imports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

# The choices a cell and a sweep accept; the modules that implement them import these names.
KV_MODES = ("none", "concat", "static", "static-int8")
ATTENTION_IMPLS = ("sdpa", "math")
# kvbench: ours; hf: transformers' GPT-2 and ct2: CTranslate2, both on the same weights (kvbench/engines/)
ENGINES = ("kvbench", "hf", "ct2")
# The kv modes each engine runs: transformers' GPT-2 has no int8 cache; CTranslate2 has one cache, its
# own, which grows by concatenation (kvbench/engines/ct2.py).
ENGINE_KV_MODES = {"kvbench": KV_MODES, "hf": ("none", "concat", "static"), "ct2": ("concat",)}
DTYPE_NAMES = ("fp32", "bf16", "fp16")
INT8_SCALE_BYTES = 4  # static-int8: one fp32 absmax scale per (token, head)


def kv_cache_bytes(
    n_layer: int, batch: int, n_kv_head: int, tokens: int, head_dim: int, element_bytes: int, kv_mode: str = "static"
) -> int:
    """2 (K and V) x layers x batch x kv heads x tokens x head dim x bytes per element.

    static-int8 stores 1 byte per element plus one fp32 scale per token and head.
    """
    per_vector = head_dim + INT8_SCALE_BYTES if kv_mode == "static-int8" else head_dim * element_bytes
    return 2 * n_layer * batch * n_kv_head * tokens * per_vector


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_kv_head: int | None = None  # None: same as n_head (plain multi-head attention)
    bias: bool = True

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def validate(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_kv_head: {self.kv_heads} must divide n_head ({self.n_head})")

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, GPTConfig] = {
    # `tiny` keeps the GPT-2 vocabulary so tokenizer paths stay real, but is small enough for tests.
    "tiny": GPTConfig(block_size=64, vocab_size=50257, n_layer=2, n_head=4, n_embd=64),
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),
}


def preset(name: str, **overrides) -> GPTConfig:
    if name not in PRESETS:
        raise ValueError(f"model: {name!r} is not one of {', '.join(PRESETS)}")
    cfg = replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
    cfg.validate()
    return cfg
