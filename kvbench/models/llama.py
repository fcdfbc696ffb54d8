"""A Llama-family decoder (Llama 2/3, Qwen2, Mistral, SmolLM2, TinyLlama) beside the GPT-2 of gpt2.py.

What differs from GPT-2: rotary positions (RoPE, with Llama 3's frequency scaling) instead of a
learned position table, RMSNorm instead of LayerNorm, a SwiGLU MLP, grouped-query attention with
fewer K/V heads than query heads, optional q/k/v bias (Qwen2), and a head tied or not. What is the
same: the caches, the attention from q, k, v on (kvbench/models/attention.py), the forward and init
(kvbench/models/decoder.py) and the one decode loop, so every kv mode, eager or compiled, runs this
model exactly as it runs GPT-2.

Parameter names are transformers' LlamaForCausalLM names, except that q/k/v and gate/up are each
one matrix here (`qkv_proj`, `gate_up_proj`): one matrix-vector product instead of three (two) per
decode step. `hf_state_dict` / `load_hf_state_dict` split and join them; `hf_config_dict` gives the
config.json that builds transformers' own model on the same weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from kvbench.core.presets import LlamaConfig
from kvbench.models.attention import CachedAttention, Context
from kvbench.models.decoder import Decoder
from kvbench.models.weights import seeded_init


def rope_frequencies(cfg: LlamaConfig) -> torch.Tensor:
    """(head_dim / 2,) float32 rotation rates, computed on the CPU in float32 as transformers does,
    so both models rotate by bit-identical angles.

    Llama 3's scaling slows the low frequencies (long wavelengths) by `factor`, keeps the high
    ones, and blends smoothly between two wavelengths: the model then reaches past the context
    it was trained on without retraining its short-range attention.
    """
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    if cfg.rope_scaling is None:
        return inv_freq
    s = dict(cfg.rope_scaling)
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_context = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    between = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    return torch.where(between, blended, scaled)


class Rotary:
    """cos/sin of every position fed this forward, computed once and applied in every layer."""

    def __init__(self, inv_freq: torch.Tensor, pos: torch.Tensor, dtype: torch.dtype):
        angles = pos.float().unsqueeze(-1) * inv_freq  # (T, hd/2) or a ragged batch's (B, T, hd/2), float32
        cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
        # Laid out for the whole head once per forward, so each layer's rotation is three operations
        # (an eager decode step is ~30 small operations per layer beside its matrix products).
        self.cos = torch.cat((cos, cos), dim=-1).unsqueeze(-2)  # (T, 1, hd): broadcast over heads
        self.sin = torch.cat((-sin, sin), dim=-1).unsqueeze(-2)
        self.half = inv_freq.numel()

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate each (x1[i], x2[i]) pair of x (B, T, heads, hd) by its position's angle (half-split pairs,
        the layout Llama checkpoints in transformers' format use): x1 cos - x2 sin, x2 cos + x1 sin."""
        return torch.addcmul(x * self.cos, x.roll(self.half, dims=-1), self.sin)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one call, the scale included
            return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)
        # Normalised in float32, scaled in the model's dtype: what the reference does in bf16/fp16.
        return self.weight * F.rms_norm(x.float(), (x.size(-1),), eps=self.eps).to(x.dtype)


class LlamaAttention(CachedAttention):
    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__(layer_idx)
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        q_out = self.n_head * self.head_dim
        self.qkv_proj = nn.Linear(config.n_embd, q_out + 2 * self.n_kv_head * self.head_dim, config.attention_bias)
        self.o_proj = nn.Linear(q_out, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        B, T, _ = x.shape
        H, Hkv = self.n_head, self.n_kv_head
        qkv = self.qkv_proj(x).view(B, T, H + 2 * Hkv, self.head_dim)
        qk = ctx.rotate(qkv[:, :, : H + Hkv])  # q and k rotated together: one pass over both
        q = qk[:, :, :H].transpose(1, 2)
        k = qk[:, :, H:].transpose(1, 2)
        v = qkv[:, :, H + Hkv :].transpose(1, 2)
        return self.o_proj(self.attend(q, k, v, ctx))


class SwiGLU(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.n_embd, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class LlamaBlock(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), ctx)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(Decoder):
    # transformers' Llama init draws every matrix from N(0, 0.02); the output projections are scaled
    # as GPT-2's are, so activations stay O(1) through deep random stacks.
    residual_projections = ("o_proj.weight", "down_proj.weight")

    def __init__(self, config: LlamaConfig):
        super().__init__()
        if config.family != "llama":
            raise ValueError(
                f"Llama: a {config.family} config builds with kvbench.models.family.build_random, not Llama"
            )
        config.validate()
        self.config = config
        self.model = nn.ModuleDict(
            dict(
                embed_tokens=nn.Embedding(config.vocab_size, config.n_embd),
                layers=nn.ModuleList([LlamaBlock(config, i) for i in range(config.n_layer)]),
                norm=RMSNorm(config.n_embd, config.rms_norm_eps),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Derived from the config, never loaded: filled by `fill_buffers` once the model has a device.
        self.register_buffer("inv_freq", torch.empty(config.head_dim // 2), persistent=False)
        self.tie_weights()

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    @property
    def final_norm(self) -> nn.Module:
        return self.model.norm

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def fill_buffers(self) -> None:
        self.inv_freq = rope_frequencies(self.config).to(self.inv_freq.device)

    def embed(self, idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(idx)  # positions enter as rotations of q and k instead

    def rotate(self, pos: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        return Rotary(self.inv_freq, pos, self.model.embed_tokens.weight.dtype).apply  # the stream's dtype

    def context_limit(self) -> tuple[int, str]:
        window = self.config.sliding_window
        if window is not None and window < self.config.block_size:
            return window, "sliding_window"
        return self.config.block_size, "block_size"


def empty_llama(config: LlamaConfig, device: torch.device | str, dtype: torch.dtype) -> Llama:
    """A Llama with uninitialised weights on `device` in `dtype`, its rotary table filled (Decoder.empty)."""
    return Llama.empty(config, device, dtype)


def build_random(
    config: LlamaConfig, device: torch.device | str, dtype: torch.dtype, seed: int, for_decoding: bool = False
) -> Llama:
    """A Llama with seeded random weights, directly on `device` in `dtype`."""
    return seeded_init(empty_llama(config, device, dtype), seed, for_decoding)


# transformers' names for the pieces of our fused matrices, in the order they are stacked.
FUSED = {"self_attn.qkv_proj": ("q_proj", "k_proj", "v_proj"), "mlp.gate_up_proj": ("gate_proj", "up_proj")}


def _split_sizes(cfg: LlamaConfig, fused: str) -> list[int]:
    if fused == "self_attn.qkv_proj":
        return [cfg.n_head * cfg.head_dim] + [cfg.kv_heads * cfg.head_dim] * 2
    return [cfg.intermediate_size] * 2


def hf_state_dict(model: Llama) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names (q/k/v and gate/up split), contiguous, sharing no storage."""
    out = {}
    for name, t in model.state_dict().items():
        fused = next((f for f in FUSED if f"{f}." in name), None)
        if fused is None:
            out[name] = t.contiguous().clone()
            continue
        prefix, suffix = name.split(f"{fused}.")
        parent = fused.split(".")[0]
        for part, piece in zip(FUSED[fused], t.split(_split_sizes(model.config, fused), dim=0)):
            out[f"{prefix}{parent}.{part}.{suffix}"] = piece.contiguous().clone()
    return out


def load_hf_state_dict(model: Llama, sd: dict[str, torch.Tensor]) -> None:
    """Load transformers-named weights (q/k/v and gate/up separate) into our fused layout.

    Raises ValueError naming the first missing or extra weight.
    """
    sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}  # old checkpoints' derived table
    if model.config.tie_word_embeddings:
        sd.setdefault("lm_head.weight", sd.get("model.embed_tokens.weight"))
    ours = {}
    for name in model.state_dict():
        fused = next((f for f in FUSED if f"{f}." in name), None)
        if fused is None:
            ours[name] = sd.pop(name, None)
            continue
        prefix, suffix = name.split(f"{fused}.")
        parent = fused.split(".")[0]
        pieces = [sd.pop(f"{prefix}{parent}.{part}.{suffix}", None) for part in FUSED[fused]]
        ours[name] = None if any(p is None for p in pieces) else torch.cat(pieces, dim=0)
    missing = [k for k, v in ours.items() if v is None]
    extra = list(sd)
    if missing or extra:
        raise ValueError(f"missing {missing[:1]}, unexpected {extra[:1]}")
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if ours[name].shape != p.shape:
                raise ValueError(f"{name} has shape {tuple(ours[name].shape)}, the config says {tuple(p.shape)}")
            p.copy_(ours[name])  # in place: keeps our layout and weight tying


def hf_config_dict(cfg: LlamaConfig) -> dict:
    """config.json for transformers' own model of these shapes: Qwen2 where q/k/v carry a bias
    (transformers' Llama would put one on o_proj too), Llama otherwise."""
    qwen2 = cfg.attention_bias
    out = {
        "architectures": ["Qwen2ForCausalLM" if qwen2 else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen2 else "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None if cfg.rope_scaling is None else {"rope_type": "llama3", **dict(cfg.rope_scaling)},
        "tie_word_embeddings": cfg.tie_word_embeddings,
    }
    if not qwen2:
        out.update(attention_bias=False, mlp_bias=False)
    return out
