"""Engine `ct2`: CTranslate2's Generator on the same weights, converted from the hf engine's model.

CTranslate2 takes a model directory produced by one of its converters. This engine builds the
transformers model that engine hf runs (`to_hf`, our weights: GPT2LMHeadModel, or LlamaForCausalLM /
Qwen2ForCausalLM for the Llama family), converts it with CTranslate2's own `TransformersConverter`
(which reads the architecture from config.json and has a loader for each), and caches the result per weights hash under
`$KVBENCH_CACHE_DIR/ct2/<hash>` (default ~/.cache/kvbench), so a sweep converts once. CTranslate2
takes tokens as strings; random weights have no tokenizer, so the stand-in vocabulary is one
string per id: token id i is the string str(i) (`StandInVocabulary`).

Generation is greedy through `generate_tokens` (streaming): `on_token(i)` is called as step i's
tokens arrive, so the cell times it like every engine (token 0 = the prefill). No token ends a
generation early (`end_token=[]`), as with the other engines.

The cache is CTranslate2's own: for both families (grouped-query attention keeps fewer K/V heads
in it) its attention layer concatenates each step's K,V onto
the cached ones (src/layers/attention.cc, `ops::Concat` on the time axis), so the honest kv_mode
is `concat`. Its bytes are not reachable from Python: the record gives the formula only and says so.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from kvbench.core import disk_cache, env_vars
from kvbench.core.presets import ENGINE_KV_MODES
from kvbench.engines.base import Engine
from kvbench.engines.generate import GREEDY, Generation, Sampling
from kvbench.models.family import Model

PIN = "ctranslate2==4.8.5"  # requirements.txt
# CTranslate2's Llama converter carries rope_scaling's factor and low/high frequency factors but not
# original_max_position_embeddings, so its llama3 scaling assumes Llama 3's 8192 (a tiny-llama with
# 16 measured 2e-3 off in the logits, with 8192 4e-5).
CT2_LLAMA3_CONTEXT = 8192
COMPUTE_TYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def import_ctranslate2():
    try:
        import ctranslate2
    except ImportError as e:  # also when sys.modules["ctranslate2"] is None
        raise ValueError(
            f"engine: ct2 needs the ctranslate2 package, which is missing ({e}); install it with `pip install {PIN}`"
        ) from None
    return ctranslate2


def cache_root() -> Path:
    return env_vars.cache_dir() / "ct2"


def weights_hash(model: Model, compute_type: str, ct2_version: str) -> str:
    """sha256 over the config, each distinct weight tensor's values (tied ones once) and the converter version."""
    h = hashlib.sha256(repr((model.config, compute_type, ct2_version)).encode())
    seen: set[int] = set()
    for name, p in model.state_dict(keep_vars=True).items():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        h.update(name.encode())
        h.update(p.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


class StandInVocabulary:
    """What CTranslate2's converter reads from a tokenizer: one string per id, and the special tokens.

    GPT-2's single special token <|endoftext|> is its last id; the stand-in names the same id (for
    the Llama family too: generation is given its start tokens and never stops at one)."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.bos_token = self.eos_token = self.unk_token = str(vocab_size - 1)

    def get_vocab(self) -> dict[str, int]:
        return {str(i): i for i in range(self.vocab_size)}


def convert(model: Model, compute_type: str) -> Path:
    """The CTranslate2 model directory for these weights: converted once, then found by hash."""
    ctranslate2 = import_ctranslate2()
    from ctranslate2.converters import TransformersConverter

    from kvbench.engines.hf import to_hf

    target = cache_root() / weights_hash(model, compute_type, ctranslate2.__version__)
    target = disk_cache.verified(target, "CTranslate2 conversion")  # a damaged one is moved aside
    if (target / "model.bin").is_file():
        return target
    hf = to_hf(model).to(device="cpu", dtype=torch.float32)  # the converter reads CPU tensors
    vocabulary = StandInVocabulary(model.config.vocab_size)

    class FromMemory(TransformersConverter):
        """The converter's own loading hooks, answered with the model and vocabulary in memory."""

        def load_model(self, model_class, model_name_or_path, **kwargs):
            return hf

        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return vocabulary

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as tmp:
        hf.config.save_pretrained(tmp)  # the converter reads the architecture from config.json
        out = FromMemory(tmp).convert(os.path.join(tmp, "ct2"), quantization=compute_type)
        disk_cache.seal(Path(out))
        try:
            os.rename(out, target)  # atomic: a concurrent cell converting the same weights loses the race harmlessly
        except OSError:
            if not (target / "model.bin").is_file():
                raise
    return target


class CT2Engine(Engine):
    name = "ct2"
    kv_modes = ENGINE_KV_MODES["ct2"]  # CTranslate2 always caches, growing it by concatenation (module docstring)
    own_attention = "CTranslate2"
    owns_weights = True
    kv_cache_note = (
        "CTranslate2 manages its own cache (grown by concatenation each step); "
        "kv_cache_bytes_formula only, nothing measured"
    )
    # A ragged batch's record (status unsupported) says this, rather than a number made some other way.
    ragged_unsupported = (
        "prompt_spread, shared_prefix: engine ct2 is not measured on a ragged batch: CTranslate2 keeps its "
        "cache out of Python's reach, so the bytes it reserves and uses, what this setting compares, cannot be counted"
    )

    @classmethod
    def check(cls, *, kv_mode, n_kv_head, attention, compile):
        import_ctranslate2()
        super().check(kv_mode=kv_mode, n_kv_head=n_kv_head, attention=attention, compile=compile)
        if compile:
            raise ValueError("compile: engine ct2 has no compiled form (CTranslate2 is compiled C++ already)")

    def __init__(self, model: Model):
        ctranslate2 = import_ctranslate2()
        w = next(model.parameters())  # the token embedding: its dtype and device are the model's
        if w.dtype not in COMPUTE_TYPES:
            raise ValueError(f"dtype: engine ct2 runs {', '.join(map(str, COMPUTE_TYPES))}, not {w.dtype}")
        self.compute_type = COMPUTE_TYPES[w.dtype]
        scaling = dict(getattr(model.config, "rope_scaling", None) or {})
        if scaling and scaling["original_max_position_embeddings"] != CT2_LLAMA3_CONTEXT:
            raise ValueError(
                f"rope_scaling (engine ct2): original_max_position_embeddings "
                f"{scaling['original_max_position_embeddings']} is not {CT2_LLAMA3_CONTEXT}, the only one "
                f"CTranslate2's converter carries"
            )
        self.device = w.device
        self.vocab_size = model.config.vocab_size
        self.block_size = model.config.block_size
        self.path = convert(model, self.compute_type)
        # intra_threads = torch's threads: the same cores as the other engines (the cell's --threads)
        self.generator = ctranslate2.Generator(
            str(self.path),
            device=self.device.type,
            device_index=self.device.index or 0,
            compute_type=self.compute_type,
            inter_threads=1,
            intra_threads=torch.get_num_threads(),
        )

    def generate(
        self,
        prompt: torch.Tensor,
        new_tokens: int,
        kv_mode: str = "concat",
        *,
        sampling: Sampling = GREEDY,
        keep_logits: bool = False,
        on_token: Callable[[int], None] | None = None,
    ) -> Generation:
        if kv_mode not in self.kv_modes:
            raise ValueError(f"kv_mode (engine ct2): {kv_mode!r} is not one of {', '.join(self.kv_modes)}")
        if sampling.temperature > 0 or (sampling.vocab_limit or self.vocab_size) < self.vocab_size:
            raise ValueError("sampling: engine ct2 runs greedy decoding over the whole vocabulary only")
        if prompt.size(1) + new_tokens > self.block_size:
            raise ValueError(
                f"prompt_len + new_tokens = {prompt.size(1) + new_tokens} exceeds block_size {self.block_size}"
            )
        B = prompt.size(0)
        starts = [[str(t) for t in row] for row in prompt.tolist()]
        tokens = torch.empty((B, new_tokens), dtype=torch.long)
        arrived = [0] * new_tokens
        for r in self.generator.generate_tokens(starts, max_length=new_tokens, sampling_topk=1, end_token=[]):
            tokens[r.batch_id, r.step] = r.token_id
            arrived[r.step] += 1
            if arrived[r.step] == B and on_token is not None:  # every sequence has its token i
                on_token(r.step)
        if arrived != [B] * new_tokens:
            raise RuntimeError(f"engine ct2: expected {new_tokens} tokens per sequence, got {arrived}")
        tokens = tokens.to(prompt.device)
        kept = self.logits(prompt, tokens) if keep_logits else None
        return Generation(tokens=tokens, cache=None, logits=kept)

    def logits(self, prompt: torch.Tensor, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Per generated token, CTranslate2's (B, V) logits that chose it, for the cell's token check.

        From one `forward_batch` over prompt + generated tokens (a full forward, no cache): the
        streaming API returns token ids only. The tokens themselves come from the cached decode."""
        import numpy as np

        seq = torch.cat([prompt, tokens[:, :-1]], dim=1)
        out = self.generator.forward_batch([[str(t) for t in row] for row in seq.tolist()])
        if self.device.type == "cuda":
            logits = torch.as_tensor(out, device=self.device)
        else:
            logits = torch.from_numpy(np.asarray(out))
        P = prompt.size(1)
        return [logits[:, P - 1 + i].to(torch.float32, copy=True) for i in range(tokens.size(1))]


ENGINE = CT2Engine
