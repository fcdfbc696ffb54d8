"""Engine `hf`: Hugging Face transformers' own model on the same weights, through the same cell.

GPT-2 runs as transformers' GPT2LMHeadModel; the Llama family as the class its config.json names
(LlamaForCausalLM, or Qwen2ForCausalLM where q/k/v carry a bias), built from kvbench's
`llama.hf_config_dict` and filled with `llama.hf_state_dict`. Either runs with its own caches —
kv_mode `none` (use_cache=False, recompute), `concat` (its default DynamicCache, which grows by
torch.cat), `static` (its StaticCache, preallocated, K/V heads only) and `static-fp8` / `static-int4`
(its QuantizedCache: hf_cache.py says which backend each is) — in the shared decode
loop with the same `on_token` timestamps as ours, so every engine's numbers come out of one
measurement code path. Caches are built and
passed the way transformers' current API asks (`DynamicCache(config=...)`,
`StaticCache(config=..., max_cache_len=...)`, `past_key_values=` a Cache object, explicit
`cache_position`), so a cell logs no deprecation warning (tests/test_hf_engine.py checks).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kvbench.core.presets import ENGINE_KV_MODES
from kvbench.engines.base import Engine, Runner, compile_mode
from kvbench.engines.generate import GREEDY, Generation, Sampling, check_length, decode_loop
from kvbench.engines.hf_cache import QUANTIZED, HFCacheBytes, check_mode, make_cache
from kvbench.models.checkpoint import CONV1D_WEIGHTS
from kvbench.models.family import Model
from kvbench.models.gpt2 import GPT

HF_KV_MODES = ENGINE_KV_MODES["hf"]
HF_ATTENTION = {"sdpa": "sdpa", "math": "eager"}  # our attention implementation -> transformers' name


def to_hf(model: Model):
    """transformers' own model of `model`'s family holding exactly its weights, same device and dtype."""
    return llama_to_hf(model) if model.config.family == "llama" else gpt2_to_hf(model)


def llama_to_hf(model):
    """transformers' Llama-family model (the architecture `hf_config_dict` names) on `model`'s weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from kvbench.models.llama import hf_config_dict, hf_state_dict

    settings = hf_config_dict(model.config)
    cfg = AutoConfig.for_model(settings.pop("model_type"), **settings)
    cfg._attn_implementation = HF_ATTENTION[model.model.layers[0].self_attn.attention]
    w = model.model.embed_tokens.weight
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(cfg)
    # assign: transformers' parameters become hf_state_dict's fresh tensors (one copy of the weights
    # beside ours, not two, which matters for an 8B model on a GPU).
    missing, unexpected = hf.to(dtype=w.dtype).load_state_dict(hf_state_dict(model), strict=False, assign=True)
    if unexpected or missing:
        raise ValueError(f"engine hf: weights do not map: missing {missing[:3]}, unexpected {unexpected[:3]}")
    # The rotary frequencies are a buffer derived from the config, not a weight: computed here (in
    # fp32 whatever the weights' dtype, as transformers does) on the weights' device.
    hf.model.rotary_emb = type(hf.model.rotary_emb)(hf.config).to(w.device)
    hf.tie_weights()
    return hf.eval()


def gpt2_to_hf(model: GPT):
    """A transformers GPT2LMHeadModel holding exactly `model`'s weights, same device and dtype."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    if c.kv_heads != c.n_head:
        raise ValueError("engine hf: transformers' GPT-2 has no grouped-query attention (n_kv_head must be n_head)")
    impl = HF_ATTENTION[model.transformer.h[0].attn.attention]
    w = model.transformer.wte.weight
    cfg = GPT2Config(
        vocab_size=c.vocab_size,
        n_positions=c.block_size,
        n_embd=c.n_embd,
        n_layer=c.n_layer,
        n_head=c.n_head,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
        dtype=w.dtype,
    )
    cfg._attn_implementation = impl
    with torch.device("meta"):
        hf = GPT2LMHeadModel(cfg)
    hf = hf.to(dtype=w.dtype).to_empty(device=w.device)
    state = {k: (v.t() if k.endswith(CONV1D_WEIGHTS) else v) for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    # The causal-mask buffers are not weights; anything else missing would be a real mismatch.
    if unexpected or any(not k.endswith((".attn.bias", ".attn.masked_bias")) for k in missing):
        raise ValueError(f"engine hf: weights do not map: missing {missing[:3]}, unexpected {unexpected[:3]}")
    hf.tie_weights()
    return hf.eval()


def positions(hf) -> int:
    """The longest sequence transformers' model takes: GPT-2's position table, a Llama's max positions."""
    return getattr(hf.config, "n_positions", None) or hf.config.max_position_embeddings


def hf_forward(fn, cache, batch: int, device: torch.device) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """`forward(ids, start)` for the shared decode loop over transformers' model call `fn`."""

    def forward(ids: torch.Tensor, start: int) -> torch.Tensor:
        if cache is None:
            return fn(ids, use_cache=False, logits_to_keep=1).logits
        positions = torch.arange(start, start + ids.size(1), device=device)
        return fn(
            ids,
            past_key_values=cache,
            use_cache=True,
            position_ids=positions.unsqueeze(0).expand(batch, -1),
            cache_position=positions,
            logits_to_keep=1,
        ).logits

    return forward


@torch.inference_mode()
def hf_generate(
    hf,
    prompt: torch.Tensor,
    new_tokens: int,
    kv_mode: str,
    *,
    sampling: Sampling = GREEDY,
    keep_logits: bool = False,
    on_token: Callable[[int], None] | None = None,
) -> Generation:
    total = check_length(prompt, new_tokens, positions(hf))
    cache = make_cache(hf, kv_mode, total - 1)  # the last token is chosen, never cached
    forward = hf_forward(hf, cache, prompt.size(0), prompt.device)
    tokens, kept = decode_loop(forward, prompt, new_tokens, cache is None, sampling, keep_logits, on_token)
    return Generation(tokens=tokens, cache=None if cache is None else HFCacheBytes(cache), logits=kept)


class HFCompiledStatic:
    """transformers' model with its StaticCache and its forward compiled for decoding, the way its docs
    recommend (prefill eager, the static-shape step compiled); one cache per cell, reset each generation."""

    def __init__(self, hf, prompt: torch.Tensor, max_len: int):
        from transformers import StaticCache

        self.hf = hf
        self.cache = StaticCache(config=hf.config, max_cache_len=max_len)
        with torch.no_grad():  # materialise the cache's tensors eagerly (they mark their static addresses)
            hf(prompt[:, :1], past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.cache.reset()
        self.step = torch.compile(hf.forward, mode=compile_mode(prompt.device), dynamic=False)
        # the step's token through one buffer: a slice of the loop's sequence has strides that differ
        # with new_tokens, which would recompile the step
        self.ids = torch.zeros((prompt.size(0), 1), dtype=torch.long, device=prompt.device)

    @torch.no_grad()
    def __call__(
        self,
        prompt: torch.Tensor,
        new_tokens: int,
        kv_mode: str = "static",
        *,
        sampling: Sampling = GREEDY,
        keep_logits: bool = False,
        on_token: Callable[[int], None] | None = None,
    ) -> Generation:
        check_length(prompt, new_tokens, positions(self.hf))
        self.cache.reset()
        eager = hf_forward(self.hf, self.cache, prompt.size(0), prompt.device)
        compiled = hf_forward(self.step, self.cache, prompt.size(0), prompt.device)

        def forward(ids: torch.Tensor, start: int) -> torch.Tensor:
            return eager(ids, start) if start == 0 else compiled(self.ids.copy_(ids), start)

        tokens, kept = decode_loop(forward, prompt, new_tokens, False, sampling, keep_logits, on_token)
        return Generation(tokens=tokens, cache=HFCacheBytes(self.cache), logits=kept)


class HFEngine(Engine):
    name = "hf"
    kv_modes = HF_KV_MODES
    # A ragged batch's record (status unsupported) says this, rather than a number made some other way.
    ragged_unsupported = (
        "prompt_spread, shared_prefix: engine hf is not measured on a ragged batch: its generation feeds "
        "transformers' model a rectangular batch without an attention mask or per-sequence positions, so "
        "the pads would be read as prompt; its DynamicCache and StaticCache are rectangular tensors "
        "(batch x the longest sequence), the reservation kvbench's concat and static measure"
    )
    owns_weights = True  # its own copy in its native layout (GPT-2: contiguous (in, out) Conv1D; Llama: q/k/v split)

    @classmethod
    def check(cls, *, kv_mode, n_kv_head, attention, compile):
        super().check(kv_mode=kv_mode, n_kv_head=n_kv_head, attention=attention, compile=compile)
        check_mode(kv_mode)
        if compile and kv_mode in QUANTIZED:
            raise ValueError(
                f"compile (engine hf): {kv_mode} is transformers' QuantizedCache, which its generation does not "
                "compile (it grows and re-quantizes in Python); run it without --compile"
            )

    def __init__(self, model: Model):
        self.hf = self.module = to_hf(model)

    def generate(self, prompt, new_tokens, kv_mode, *, sampling=GREEDY, keep_logits=False, on_token=None):
        return hf_generate(
            self.hf, prompt, new_tokens, kv_mode, sampling=sampling, keep_logits=keep_logits, on_token=on_token
        )

    def compiled_runner(self, kv_mode: str, prompt: torch.Tensor, new_tokens: int) -> Runner:
        if kv_mode == "static":
            return HFCompiledStatic(self.hf, prompt, prompt.size(1) + new_tokens - 1)
        compiled = torch.compile(self.hf, dynamic=True)
        return lambda *a, **kw: hf_generate(compiled, *a, **kw)


ENGINE = HFEngine
