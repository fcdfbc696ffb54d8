"""Engine `llamacpp`: llama.cpp through its Python bindings (llama-cpp-python) on the same weights.

llama.cpp runs GGUF files. This engine saves the transformers model that engine hf runs (`to_hf`,
our weights) as a model directory and converts it with llama.cpp's own converter
(convert_hf_to_gguf.py's `conversion` package and gguf-py, kept from the pinned llama-cpp-python
sdist by scripts/install-llamacpp.sh and checked against `CONVERTER_SHA256` before each use). The
GGUF is cached per weights hash under `$KVBENCH_CACHE_DIR/llamacpp/<hash>` with disk_cache's
manifest, so a sweep converts once and a damaged file is rebuilt.

Random weights have no tokenizer: the directory carries a stand-in one (token id i is the text
str(i), a byte-level BPE whose merges build each number from its digits). The converter identifies
a BPE's pre-tokenizer by hashing how it splits a test text and does not know this one; it is named
`gpt-2` through the converter's own model class (`get_vocab_base_pre`, the hook that returns the
name), never by editing the converter. At run time no tokenizer is used: token ids go in and out.

The cache is llama.cpp's own, preallocated for the context (n_ctx = batch x the cell's length, one
sequence id per batch row), so kv_mode `static` holds K/V in the weights' dtype; `static-int8` and
`static-int4` are its q8_0 and q4_0 cache types (blocks of 32 values with an fp16 scale). Every
step's logits come from llama.cpp's own `llama_decode` calls, which is what the token check and the
price (kvbench/measure/price.py) compare against our no-cache forward over the same tokens. Greedy
decoding; `on_token(i)` after token i is chosen (0 = the prefill), threads = the cell's --threads.
Flash attention is off as in the bindings' own `Llama` class, on only where llama.cpp requires it (a
quantized V cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from kvbench.core import disk_cache, env_vars
from kvbench.core.presets import ENGINE_KV_MODES
from kvbench.engines.base import Engine
from kvbench.engines.ct2 import weights_hash
from kvbench.engines.generate import GREEDY, Generation, Sampling
from kvbench.models.family import Model

PIN = "llama-cpp-python==0.3.36"  # pyproject.toml's llamacpp extra, scripts/install-llamacpp.sh
INSTALL = "make llamacpp"
# sha256 over (path, sha256) of every file of the converter copied from that sdist (`converter_digest`).
CONVERTER_SHA256 = "332e91717d61ee4239f5b94e6a084cd403ee42e3cedbd9998a22b0d2e6408ca3"
OUTTYPES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8, "bf16": 30}  # ggml.h's enum ggml_type
CACHE_TYPES = {"static-int8": "q8_0", "static-int4": "q4_0"}  # "static": the weights' own type
QUANT_BLOCK = 32  # values per q8_0/q4_0 block: a head's K/V row must be whole blocks
GGUF = "model.gguf"
GGML_LOG_LEVEL_ERROR = 4
FLASH_ATTN_DISABLED, FLASH_ATTN_ENABLED = 0, 1  # llama.h's enum llama_flash_attn_type


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError as e:  # also when sys.modules["llama_cpp"] is None
        raise ValueError(
            f"engine: llamacpp needs the llama_cpp package ({PIN}), which is missing ({e}); "
            f"install it with `{INSTALL}` (builds llama.cpp from source, minutes)"
        ) from None
    return llama_cpp


def converter_dir() -> Path:
    """Where the install step keeps llama.cpp's converter: inside the environment that holds the bindings."""
    return Path(sys.prefix) / "share" / "kvbench" / "llama.cpp-convert"


def converter_digest(folder: Path) -> str:
    """sha256 over every file's relative path and sha256 (bytecode caches left out)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(f"{path.relative_to(folder).as_posix()} {hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def checked_converter() -> Path:
    folder = converter_dir()
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise ValueError(f"engine llamacpp: llama.cpp's converter is missing from {folder}; install with `{INSTALL}`")
    if (digest := converter_digest(folder)) != CONVERTER_SHA256:
        raise ValueError(
            f"engine llamacpp: llama.cpp's converter in {folder} is not the one from {PIN} "
            f"(sha256 {digest[:12]}, expected {CONVERTER_SHA256[:12]}); reinstall it with `{INSTALL}`"
        )
    return folder


def cache_root() -> Path:
    return env_vars.cache_dir() / "llamacpp"


def stand_in_tokenizer(vocab_size: int) -> dict:
    """tokenizer.json of a byte-level BPE where id i is the text str(i), each number merged from its digits."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {str(i): i for i in range(vocab_size)}
    merges = [(str(i)[:-1], str(i)[-1]) for i in range(10, vocab_size)]
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return json.loads(tok.to_str())


def write_model_dir(model: Model, folder: Path, dtype: torch.dtype) -> None:
    """transformers' model of our weights (safetensors + config.json) and the stand-in tokenizer's files."""
    from kvbench.engines.hf import to_hf

    hf = to_hf(model).to(device="cpu", dtype=dtype)  # the converter reads CPU tensors
    hf.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    if "n_positions" in config:  # GPT-2's converter reads the context as n_ctx (hub GPT-2 configs carry both)
        config.setdefault("n_ctx", config["n_positions"])
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    (folder / "tokenizer.json").write_text(json.dumps(stand_in_tokenizer(model.config.vocab_size)))
    # GPT-2's one special token <|endoftext|> is its last id; the stand-in names that id for every role, so
    # no tokenizer class adds a token of its own beyond the model's vocabulary (Qwen2's would)
    special = dict.fromkeys(("bos_token", "eos_token", "unk_token", "pad_token"), str(model.config.vocab_size - 1))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **special}))


def convert(model: Model, outtype: str) -> Path:
    """The GGUF file for these weights: converted once by llama.cpp's converter, then found by hash."""
    llama_cpp = import_llama_cpp()
    target = cache_root() / weights_hash(model, outtype, f"llama-cpp-python {llama_cpp.__version__}")
    target = disk_cache.verified(target, "llama.cpp GGUF")  # a damaged one is moved aside and rebuilt
    if (target / GGUF).is_file():
        return target / GGUF
    converter = checked_converter()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as tmp:
        src, out = Path(tmp) / "hf", Path(tmp) / "gguf"
        out.mkdir()
        write_model_dir(model, src, next(model.parameters()).dtype)
        cmd = [sys.executable, "-m", __name__, str(converter), str(src), outtype, str(out / GGUF)]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, check=False
        )
        if proc.returncode != 0 or not (out / GGUF).is_file():
            last = " | ".join(line.strip() for line in proc.stderr.strip().splitlines()[-3:])  # where, and why
            raise RuntimeError(f"engine llamacpp: llama.cpp's converter failed (exit {proc.returncode}): {last}")
        disk_cache.seal(out)
        try:
            os.rename(out, target)  # atomic: a concurrent cell converting the same weights loses the race harmlessly
        except OSError:
            if not (target / GGUF).is_file():
                raise
    return target / GGUF


def run_converter(converter: Path, model_dir: Path, outtype: str, outfile: Path) -> None:
    """llama.cpp's converter on `model_dir` (in its own process: it configures logging and sys.path)."""
    sys.path[:0] = [str(converter), str(converter / "gguf-py")]  # as convert_hf_to_gguf.py itself does
    import gguf
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    base = get_model_class(get_model_architecture(ModelBase.load_hparams(model_dir, False), ModelType.TEXT))

    class StandInVocabulary(base):
        model_arch = base.model_arch  # the converter asks each of its classes to name its architecture

        def get_vocab_base_pre(self, tokenizer) -> str:
            return "gpt-2"  # the stand-in tokenizer splits text as GPT-2's does; its hash is unknown to the converter

    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}
    ftype["bf16"] = gguf.LlamaFileType.MOSTLY_BF16
    with torch.inference_mode():
        StandInVocabulary(model_dir, ftype[outtype], outfile).write()


def _errors_only(level: int, text: bytes, _user_data) -> None:
    """llama.cpp's log: its errors to stderr, its progress chatter dropped (a cell's stderr stays readable)."""
    if level == GGML_LOG_LEVEL_ERROR and text:
        sys.stderr.write(text.decode(errors="replace"))


_log_callback: list = []  # the C callback, kept alive for as long as llama.cpp may call it


def quiet(llama_cpp) -> None:
    if not _log_callback:
        _log_callback.append(llama_cpp.llama_log_callback(_errors_only))
        llama_cpp.llama_log_set(_log_callback[0], None)


class Context:
    """One llama.cpp context (its preallocated cache for `batch` sequences of `length` positions) and a batch."""

    def __init__(self, llama_cpp, model, batch: int, length: int, cache_type: str, threads: int):
        p = llama_cpp.llama_context_default_params()
        p.n_ctx = batch * length  # one cache for every sequence, each its `length` positions
        p.n_batch = p.n_ctx  # the whole prefill (every row's prompt) is one llama_decode call
        p.n_seq_max = batch
        p.n_threads = p.n_threads_batch = threads
        p.type_k = p.type_v = GGML_TYPES[cache_type]
        # As the bindings' own Llama class runs it: flash attention off (on this CPU it measured 46 ms/token
        # off, 68-96 auto, gpt2 fp32), except where llama.cpp requires it: a quantized V cache.
        p.flash_attn_type = FLASH_ATTN_ENABLED if cache_type in CACHE_TYPES.values() else FLASH_ATTN_DISABLED
        p.no_perf = True
        self.llama_cpp, self.batch, self.length, self.cache_type = llama_cpp, batch, length, cache_type
        self.ctx = llama_cpp.llama_init_from_model(model, p)
        if not self.ctx:
            raise RuntimeError(
                f"engine llamacpp: llama.cpp could not create a context (batch {batch}, {length} positions, "
                f"cache {cache_type})"
            )
        self.tokens = llama_cpp.llama_batch_init(p.n_batch, 0, 1)  # one sequence id per token
        n = p.n_batch
        self.token = np.ctypeslib.as_array(self.tokens.token, shape=(n,))
        self.pos = np.ctypeslib.as_array(self.tokens.pos, shape=(n,))
        self.logits = np.ctypeslib.as_array(self.tokens.logits, shape=(n,))
        np.ctypeslib.as_array(self.tokens.n_seq_id, shape=(n,))[:] = 1
        self.seq = [self.tokens.seq_id[i] for i in range(n)]

    def fits(self, batch: int, length: int, cache_type: str) -> bool:
        return (batch, cache_type) == (self.batch, self.cache_type) and length <= self.length

    def decode(self, ids: np.ndarray, start: int, vocab: int) -> np.ndarray:
        """Run ids (B, S) at positions start.. (row b is sequence b); the (B, V) logits of each row's last position."""
        B, S = ids.shape
        n = B * S
        self.token[:n] = ids.reshape(-1)
        self.pos[:n] = np.tile(np.arange(start, start + S, dtype=np.int32), B)
        self.logits[:n] = 0
        self.logits[S - 1 : n : S] = 1
        for i in range(n):
            self.seq[i][0] = i // S
        self.tokens.n_tokens = n
        if (rc := self.llama_cpp.llama_decode(self.ctx, self.tokens)) != 0:
            raise RuntimeError(f"engine llamacpp: llama_decode returned {rc} at position {start}")
        return np.ctypeslib.as_array(self.llama_cpp.llama_get_logits(self.ctx), shape=(B, vocab))

    def clear(self) -> None:
        self.llama_cpp.llama_memory_clear(self.llama_cpp.llama_get_memory(self.ctx), True)

    def close(self) -> None:
        self.llama_cpp.llama_batch_free(self.tokens)
        self.llama_cpp.llama_free(self.ctx)


class LlamaCppEngine(Engine):
    name = "llamacpp"
    kv_modes = ENGINE_KV_MODES["llamacpp"]  # llama.cpp preallocates its cache: static, and its q8_0/q4_0 types
    own_attention = "llama.cpp"
    owns_weights = True
    kv_cache_note = (
        "llama.cpp manages its own cache, preallocated for the context (q8_0/q4_0: blocks of 32 values "
        "and an fp16 scale); kv_cache_bytes_formula only, nothing measured"
    )

    @classmethod
    def check(cls, *, kv_mode, n_kv_head, attention, compile):
        import_llama_cpp()
        super().check(kv_mode=kv_mode, n_kv_head=n_kv_head, attention=attention, compile=compile)
        if compile:
            raise ValueError("compile: engine llamacpp has no compiled form (llama.cpp is compiled C++ already)")

    @classmethod
    def check_shape(cls, *, kv_mode, head_dim):
        if kv_mode in CACHE_TYPES and head_dim % QUANT_BLOCK:
            raise ValueError(
                f"kv_mode (engine llamacpp): {kv_mode} is llama.cpp's {CACHE_TYPES[kv_mode]} cache, whose blocks of "
                f"{QUANT_BLOCK} values must divide head_dim; this model's is {head_dim}"
            )

    def __init__(self, model: Model):
        llama_cpp = self.llama_cpp = import_llama_cpp()
        w = next(model.parameters())  # the token embedding: its dtype and device are the model's
        if w.dtype not in OUTTYPES:
            raise ValueError(f"dtype: engine llamacpp runs {', '.join(map(str, OUTTYPES))}, not {w.dtype}")
        if w.device.type != "cpu" and not llama_cpp.llama_supports_gpu_offload():
            raise ValueError(
                f"device: this llama-cpp-python build runs on the CPU only; rebuild it where CUDA is present "
                f"with `{INSTALL}`"
            )
        self.outtype = OUTTYPES[w.dtype]
        self.vocab_size, self.block_size = model.config.vocab_size, model.config.block_size
        self.head_dim = model.config.head_dim
        self.path = convert(model, self.outtype)
        quiet(llama_cpp)
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = -1 if w.device.type == "cuda" else 0  # every layer where our weights are
        self.model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        if not self.model:
            raise RuntimeError(f"engine llamacpp: llama.cpp could not load {self.path}")
        self.threads = torch.get_num_threads()  # the cell's --threads: the same cores as the other engines
        self.context: Context | None = None

    def session(self, batch: int, length: int, kv_mode: str) -> Context:
        """A context whose cache holds `batch` x `length` positions, emptied; built again only when it does not fit."""
        cache_type = CACHE_TYPES.get(kv_mode, self.outtype)
        if self.context is None or not self.context.fits(batch, length, cache_type):
            if self.context is not None:
                self.context, old = None, self.context
                old.close()
            self.context = Context(self.llama_cpp, self.model, batch, length, cache_type, self.threads)
        self.context.clear()
        return self.context

    def generate(
        self,
        prompt: torch.Tensor,
        new_tokens: int,
        kv_mode: str = "static",
        *,
        sampling: Sampling = GREEDY,
        keep_logits: bool = False,
        on_token: Callable[[int], None] | None = None,
    ) -> Generation:
        if kv_mode not in self.kv_modes:
            raise ValueError(f"kv_mode (engine llamacpp): {kv_mode!r} is not one of {', '.join(self.kv_modes)}")
        self.check_shape(kv_mode=kv_mode, head_dim=self.head_dim)
        if sampling.temperature > 0 or (sampling.vocab_limit or self.vocab_size) < self.vocab_size:
            raise ValueError("sampling: engine llamacpp runs greedy decoding over the whole vocabulary only")
        P = prompt.size(1)
        if P + new_tokens > self.block_size:
            raise ValueError(f"prompt_len + new_tokens = {P + new_tokens} exceeds block_size {self.block_size}")
        ctx = self.session(prompt.size(0), P + new_tokens - 1, kv_mode)  # the last token is chosen, never cached
        ids = prompt.cpu().numpy().astype(np.int32)
        tokens = np.empty((prompt.size(0), new_tokens), dtype=np.int64)
        kept: list[torch.Tensor] | None = [] if keep_logits else None
        for i in range(new_tokens):
            logits = ctx.decode(ids, 0 if i == 0 else P + i - 1, self.vocab_size)
            tokens[:, i] = logits.argmax(axis=1)
            if kept is not None:
                kept.append(torch.from_numpy(logits.copy()).to(prompt.device))
            if on_token is not None:
                on_token(i)
            ids = tokens[:, i : i + 1].astype(np.int32)
        return Generation(tokens=torch.from_numpy(tokens).to(prompt.device), cache=None, logits=kept)

    def __del__(self):
        if getattr(self, "context", None) is not None:
            self.context.close()
        if getattr(self, "model", None):
            self.llama_cpp.llama_model_free(self.model)


ENGINE = LlamaCppEngine

if __name__ == "__main__":  # the conversion's own process (`convert`)
    run_converter(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
