"""Model shapes: the GPT-2 and Llama-family configurations and the named presets, importable without torch.

The Snakefile validates sweeps against these (block size, head counts) when it parses,
so this module must stay free of heavy imports. Both configurations answer the same questions
(n_layer, n_head, kv_heads, head_dim, n_embd, block_size, vocab_size, family, matmul_params), which
is all the caches, the decode loop, the roofline and the record need to know about a model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

# The choices a cell and a sweep accept; the modules that implement them import these names.
KV_MODES = ("none", "concat", "static", "static-int8", "static-int4", "static-fp8", "sliding", "paged")
# The modes that trade accuracy for memory: their records carry the price (kvbench/measure/price.py).
APPROX_KV_MODES = ("static-int8", "static-int4", "static-fp8", "sliding")
# The settings each kv mode takes (its cache class declares the same as `settings`, a test keeps them equal):
# a cell's flags and record carry a mode's own settings only.
KV_MODE_OPTIONS = {"sliding": ("window", "sinks"), "static-int4": ("kv_group_size",), "paged": ("block_tokens",)}
# Their settings' defaults: KIVI's group size, StreamingLLM's four sinks, and a window.
KV_GROUP_SIZE = 32
SLIDING_WINDOW = 256
SLIDING_SINKS = 4
BLOCK_TOKENS = 16  # paged: positions per block (vLLM's default)
ATTENTION_IMPLS = ("sdpa", "math")
# kvbench: ours; hf: transformers' GPT-2, ct2: CTranslate2 and llamacpp: llama.cpp, all on the same weights
# (kvbench/engines/)
ENGINES = ("kvbench", "hf", "ct2", "llamacpp")
# The kv modes each engine runs: transformers' GPT-2 has no int8 cache; CTranslate2 has one cache, its
# own, which grows by concatenation (kvbench/engines/ct2.py); llama.cpp preallocates its cache, in the
# weights' type or its q8_0/q4_0 types (kvbench/engines/llamacpp.py).
ENGINE_KV_MODES = {
    "kvbench": KV_MODES,
    "hf": ("none", "concat", "static", "static-fp8", "static-int4"),  # the last two: QuantizedCache (hf_cache.py)
    "ct2": ("concat",),
    "llamacpp": ("static", "static-int8", "static-int4"),
}
# The peers run the model's own K/V heads: an n_kv_head override (grouped-query attention faked on
# random weights) is engine kvbench's alone.
OWN_KV_HEADS_ENGINES = ("hf", "ct2", "llamacpp")
# The engines with a compiled form (`--compile`): ours and transformers' through torch.compile. CTranslate2 and
# llama.cpp are compiled C++ already, so a sweep's `compile` setting leaves their cells as they are.
COMPILED_ENGINES = ("kvbench", "hf")
INT8_SCALE_BYTES = 4  # static-int8 and static-fp8: one fp32 absmax scale per (token, head)
INT4_SCALE_BYTES = 2  # static-int4: an fp16 scale and an fp16 zero point per group, as KIVI keeps them
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}  # bytes per element of each dtype a cell accepts


def kv_cache_bytes(
    n_layer: int,
    batch: int,
    n_kv_head: int,
    tokens: int,
    head_dim: int,
    element_bytes: int,
    kv_mode: str = "static",
    *,
    kv_group_size: int = KV_GROUP_SIZE,
    window: int = SLIDING_WINDOW,
    sinks: int = SLIDING_SINKS,
) -> int:
    """Bytes a cache of `tokens` positions holds: layers x batch x kv heads x (K bytes + V bytes) per head.

    static/concat: head dim x bytes per element for each of K and V. static-int8 and static-fp8: 1 byte
    per element plus one fp32 scale per token and head. static-int4 (kvbench/caches/int4.py): 4-bit
    codes packed two per byte; keys quantized per channel over groups of `kv_group_size` tokens (the tail
    group in full precision until it fills), values per token over groups of channels, each group with
    an fp16 scale and zero point. sliding: static's bytes for at most `sinks + window` positions.
    """
    per_head = 2 * tokens * head_dim * element_bytes
    if kv_mode in ("static-int8", "static-fp8"):
        per_head = 2 * tokens * (head_dim + INT8_SCALE_BYTES)
    elif kv_mode == "static-int4":
        per_head = int4_head_bytes(tokens, head_dim, element_bytes, kv_group_size)
    elif kv_mode == "sliding":
        per_head = 2 * min(tokens, sinks + window) * head_dim * element_bytes
    return n_layer * batch * n_kv_head * per_head


def int4_head_bytes(tokens: int, head_dim: int, element_bytes: int, group_size: int) -> int:
    """static-int4's bytes for one layer, sequence and K/V head (see kv_cache_bytes)."""
    full = tokens // group_size  # key groups quantized; the rest wait in a full-precision residual
    value_groups = head_dim // min(group_size, head_dim)
    keys = full * group_size * head_dim // 2 + 2 * full * head_dim * INT4_SCALE_BYTES
    keys += min(group_size, tokens) * head_dim * element_bytes
    values = tokens * head_dim // 2 + 2 * tokens * value_groups * INT4_SCALE_BYTES
    return keys + values


def kv_bytes_per_token(
    n_layer: int, n_kv_head: int, head_dim: int, element_bytes: int, kv_mode: str, kv_group_size: int = KV_GROUP_SIZE
) -> float:
    """What one more cached position costs (one sequence): static-int4's residual is a fixed cost, not a
    per-token one, so its marginal cost is the packed codes plus the groups' scales and zero points."""
    if kv_mode != "static-int4":
        return kv_cache_bytes(n_layer, 1, n_kv_head, 1, head_dim, element_bytes, kv_mode)
    g = kv_group_size
    scales = 2 * INT4_SCALE_BYTES * (head_dim / g + head_dim // min(g, head_dim))
    return n_layer * n_kv_head * (head_dim + scales)


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_kv_head: int | None = None  # None: same as n_head (plain multi-head attention)
    bias: bool = True

    family: ClassVar[str] = "gpt2"

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

    @property
    def matmul_params(self) -> int:
        """Weights a decode step multiplies by: attention (QKV, out), the 4x MLP, the LM head."""
        C, kv = self.n_embd, self.kv_heads * self.head_dim
        return self.n_layer * (C * (C + 2 * kv) + C * C + 8 * C * C) + C * self.vocab_size


@dataclass(frozen=True)
class LlamaConfig:
    """A Llama-family decoder (Llama, Qwen2, Mistral, SmolLM2, TinyLlama) in config.json's terms.

    Field names follow GPTConfig where the concept is the same (n_layer, n_head, n_embd, block_size =
    max_position_embeddings), so the rest of kvbench reads either configuration the same way.
    """

    block_size: int = 2048
    vocab_size: int = 32000
    n_layer: int = 22
    n_head: int = 32
    n_embd: int = 2048
    n_kv_head: int | None = None  # None: same as n_head
    intermediate_size: int = 5632
    head_size: int | None = None  # config.json's head_dim where it is not n_embd // n_head (Mistral Nemo)
    rope_theta: float = 10000.0
    # config.json's llama3 rope_scaling as sorted (key, value) pairs (hashable, so the config stays
    # frozen): factor, low_freq_factor, high_freq_factor, original_max_position_embeddings.
    rope_scaling: tuple[tuple[str, float], ...] | None = None
    rms_norm_eps: float = 1e-5
    attention_bias: bool = False  # Qwen2: bias on q, k and v (not on o_proj)
    tie_word_embeddings: bool = False
    sliding_window: int | None = None  # Mistral: attention sees only this many past positions

    family: ClassVar[str] = "llama"

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embd // self.n_head

    @property
    def matmul_params(self) -> int:
        """Weights a decode step multiplies by: q/k/v/o, the three SwiGLU matrices, the LM head."""
        C, q, kv = self.n_embd, self.n_head * self.head_dim, self.kv_heads * self.head_dim
        return self.n_layer * (C * (q + 2 * kv) + q * C + 3 * C * self.intermediate_size) + C * self.vocab_size

    def validate(self) -> None:
        if self.head_size is None and self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_kv_head: {self.kv_heads} must divide n_head ({self.n_head})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim: {self.head_dim} must be even (rotary positions rotate pairs)")


def llama3_scaling(factor: float, original_max_position_embeddings: int) -> tuple[tuple[str, float], ...]:
    """Llama 3.1/3.2's rope_scaling with Meta's published low/high frequency factors (1 and 4)."""
    return tuple(
        sorted(
            {
                "factor": factor,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": original_max_position_embeddings,
            }.items()
        )
    )


# The Llama-family shapes are the published config.json values of each model (hidden size, layers,
# heads, K/V heads, MLP width, vocabulary, rope_theta and scaling, norm epsilon, head tying).
PRESETS: dict[str, GPTConfig | LlamaConfig] = {
    # `tiny` keeps the GPT-2 vocabulary so tokenizer paths stay real, but is small enough for tests.
    "tiny": GPTConfig(block_size=64, vocab_size=50257, n_layer=2, n_head=4, n_embd=64),
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),
    # `tiny-llama`: real GQA (4 query heads per K/V head), bias and llama3 scaling off, for tests.
    "tiny-llama": LlamaConfig(
        block_size=128, vocab_size=512, n_layer=2, n_head=8, n_kv_head=2, n_embd=64, intermediate_size=160
    ),
    "smollm2-135m": LlamaConfig(
        block_size=8192,
        vocab_size=49152,
        n_layer=30,
        n_head=9,
        n_kv_head=3,
        n_embd=576,
        intermediate_size=1536,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    ),
    "smollm2-360m": LlamaConfig(
        block_size=8192,
        vocab_size=49152,
        n_layer=32,
        n_head=15,
        n_kv_head=5,
        n_embd=960,
        intermediate_size=2560,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    ),
    "qwen2.5-0.5b": LlamaConfig(
        block_size=32768,
        vocab_size=151936,
        n_layer=24,
        n_head=14,
        n_kv_head=2,
        n_embd=896,
        intermediate_size=4864,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        attention_bias=True,
        tie_word_embeddings=True,
    ),
    "llama-3.2-1b": LlamaConfig(
        block_size=131072,
        vocab_size=128256,
        n_layer=16,
        n_head=32,
        n_kv_head=8,
        n_embd=2048,
        intermediate_size=8192,
        rope_theta=500000.0,
        rope_scaling=llama3_scaling(32.0, 8192),
        tie_word_embeddings=True,
    ),
    # 24 query heads: 1, 2, 3, 8 (its own) and 24 K/V heads all divide them (the gqa sweep)
    "llama-3.2-3b": LlamaConfig(
        block_size=131072,
        vocab_size=128256,
        n_layer=28,
        n_head=24,
        n_kv_head=8,
        n_embd=3072,
        intermediate_size=8192,
        rope_theta=500000.0,
        rope_scaling=llama3_scaling(32.0, 8192),
        tie_word_embeddings=True,
    ),
    "tinyllama-1.1b": LlamaConfig(
        block_size=2048,
        vocab_size=32000,
        n_layer=22,
        n_head=32,
        n_kv_head=4,
        n_embd=2048,
        intermediate_size=5632,
        rope_theta=10000.0,
    ),
    "llama-3.1-8b": LlamaConfig(
        block_size=131072,
        vocab_size=128256,
        n_layer=32,
        n_head=32,
        n_kv_head=8,
        n_embd=4096,
        intermediate_size=14336,
        rope_theta=500000.0,
        rope_scaling=llama3_scaling(8.0, 8192),
    ),
}


def preset(name: str, **overrides) -> GPTConfig | LlamaConfig:
    if name not in PRESETS:
        raise ValueError(f"model: {name!r} is not one of {', '.join(PRESETS)}")
    cfg = replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
    cfg.validate()
    return cfg
