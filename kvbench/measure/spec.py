"""A cell's settings: `CellSpec`, every field validated before anything heavy is built.

Bad input is a `UsageError`: one line naming the field and the allowed values, exit code 2.
The output path is proven writable here too, so a cell is never measured only to fail at the end.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from kvbench.caches.ragged import RAGGED_KV_MODES, min_length
from kvbench.core import env_vars
from kvbench.core.presets import (
    BLOCK_TOKENS,
    ENGINES,
    KV_GROUP_SIZE,
    KV_MODE_OPTIONS,
    KV_MODES,
    SLIDING_SINKS,
    SLIDING_WINDOW,
)
from kvbench.engines import registry as engines
from kvbench.measure.devices import DTYPES, resolve_device
from kvbench.models import checkpoint
from kvbench.models.family import Config
from kvbench.models.gpt2 import ATTENTION_IMPLS, PRESETS, preset


class UsageError(ValueError):
    """Bad input: reported as one line, exit code 2, before any heavy work."""


def _choose(field: str, value, allowed) -> None:
    if value not in allowed:
        raise UsageError(f"{field}: {value!r} is not one of {', '.join(map(str, allowed))}")


def _at_least(field: str, value: int, low: int) -> None:
    if not isinstance(value, int) or value < low:
        raise UsageError(f"{field}: {value!r} must be an integer >= {low}")


@dataclass
class CellSpec:
    model: str = "gpt2"
    kv_mode: str = "static"
    batch: int = 1
    prompt_len: int = 16
    new_tokens: int = 16
    dtype: str = "fp32"
    attention: str = "sdpa"
    device: str = "auto"
    seed: int = 0
    warmup: int = 1
    iters: int = 3
    check_steps: int = 16
    n_kv_head: int | None = None  # K/V heads (grouped-query attention); None: all heads, one K/V per query head
    block_size: int | None = None
    checkpoint: str | None = None
    prompt_file: str | None = None
    encoding: str = "gpt2"
    threads: int | None = None
    out: str | None = None
    engine: str = "kvbench"
    compile: bool = False
    window: int = SLIDING_WINDOW  # sliding: recent positions kept
    sinks: int = SLIDING_SINKS  # sliding: first positions kept (attention sinks)
    kv_group_size: int = KV_GROUP_SIZE  # static-int4: tokens (keys) or channels (values) per scale
    block_tokens: int = BLOCK_TOKENS  # paged: positions per block
    prompt_spread: float = 0.0  # ragged batch: prompt lengths spread from (1 - this) x prompt_len up to it
    shared_prefix: int = 0  # first prompt tokens every sequence of the batch shares

    def check(self) -> tuple[Config, torch.device]:
        """Validate every field and every environment setting; return the model config and device.

        Raises UsageError, before anything is built.
        """
        try:
            env_vars.check()
        except env_vars.SettingError as e:
            raise UsageError(str(e)) from None
        self.check_choices()
        self.check_counts()
        try:
            device = resolve_device(self.device)
        except ValueError as e:
            raise UsageError(str(e)) from None
        cfg = self.config()
        if self.prompt_len + self.new_tokens > cfg.block_size:
            raise UsageError(
                f"prompt_len + new_tokens: {self.prompt_len} + {self.new_tokens} = "
                f"{self.prompt_len + self.new_tokens} exceeds the model's block_size {cfg.block_size}"
            )
        window = getattr(cfg, "sliding_window", None)  # Mistral: kvbench computes full attention only
        if window is not None and self.prompt_len + self.new_tokens > window:
            raise UsageError(
                f"prompt_len + new_tokens: {self.prompt_len + self.new_tokens} exceeds the checkpoint's "
                f"sliding_window {window}; kvbench attends to every position, which this model does not"
            )
        if self.kv_mode == "static-int4" and cfg.head_dim % min(self.kv_group_size, cfg.head_dim):
            raise UsageError(
                f"kv_group_size: {self.kv_group_size} must divide head_dim {cfg.head_dim} or be at least it"
            )
        try:  # the engine's limits on the model's shape (llama.cpp's quantized caches: whole 32-value blocks)
            engines.engine_class(self.engine).check_shape(kv_mode=self.kv_mode, head_dim=cfg.head_dim)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if self.prompt_file is not None and not Path(self.prompt_file).is_file():
            what = "is a directory" if Path(self.prompt_file).is_dir() else "does not exist"
            raise UsageError(f"prompt_file: {self.prompt_file!r} {what}; give a text file")
        if self.out is not None:
            check_writable(Path(self.out))
        return cfg, device

    def check_choices(self) -> None:
        """The named choices: model, kv_mode, dtype, attention, engine, and what the engine runs."""
        if self.checkpoint is None:
            _choose("model", self.model, tuple(PRESETS))
        _choose("kv_mode", self.kv_mode, KV_MODES)
        _choose("dtype", self.dtype, tuple(DTYPES))
        _choose("attention", self.attention, ATTENTION_IMPLS)
        _choose("engine", self.engine, ENGINES)
        # An override equal to the preset's own K/V heads is the model itself: only one that would fake
        # grouped-query attention is an engine's to refuse.
        own = None if self.checkpoint is not None else PRESETS[self.model].kv_heads
        try:  # what this engine runs (kvbench/engines/): kv modes, attention, compile, its package
            engines.check(
                self.engine,
                kv_mode=self.kv_mode,
                n_kv_head=None if self.n_kv_head == own else self.n_kv_head,
                attention=self.attention,
                compile=self.compile,
            )
        except ValueError as e:
            raise UsageError(str(e)) from None

    def check_counts(self) -> None:
        _at_least("batch", self.batch, 1)
        _at_least("prompt_len", self.prompt_len, 1)
        _at_least("new_tokens", self.new_tokens, 2)  # one prefill token + at least one decode step
        _at_least("warmup", self.warmup, 0)
        _at_least("iters", self.iters, 1)
        _at_least("check_steps", self.check_steps, 0)
        _at_least("window", self.window, 1)
        _at_least("sinks", self.sinks, 0)
        _at_least("kv_group_size", self.kv_group_size, 2)
        _at_least("block_tokens", self.block_tokens, 1)
        self.check_ragged()
        for field in ("threads", "block_size", "n_kv_head"):
            if getattr(self, field) is not None:
                _at_least(field, getattr(self, field), 1)

    def check_ragged(self) -> None:
        """A ragged batch or a shared prefix (kvbench/caches/ragged.py): its range, and what runs it."""
        if not isinstance(self.prompt_spread, (int, float)) or not 0 <= self.prompt_spread < 1:
            raise UsageError(f"prompt_spread: {self.prompt_spread!r} must be a number in [0, 1)")
        shortest = min_length(self.batch, self.prompt_len, self.prompt_spread)
        if not isinstance(self.shared_prefix, int) or not 0 <= self.shared_prefix < shortest:
            raise UsageError(f"shared_prefix: {self.shared_prefix!r} must be an integer in [0, {shortest}) (shortest)")
        if self.prompt_spread == 0 and self.shared_prefix == 0:
            return
        # A peer engine passes: its cell's record says why it is not measured (kv_alloc.peer_ragged_reason).
        if self.kv_mode not in RAGGED_KV_MODES or self.compile:
            raise UsageError(f"prompt_spread, shared_prefix: run uncompiled, kv_mode {', '.join(RAGGED_KV_MODES)}")

    def config(self) -> Config:
        """The model's shape: the checkpoint's own, or the preset's with this cell's overrides."""
        if self.checkpoint is not None:
            if self.n_kv_head is not None or self.block_size is not None:
                raise UsageError("n_kv_head, block_size: only for random weights (a checkpoint fixes both)")
            try:
                return checkpoint.read_config(self.checkpoint)
            except checkpoint.CheckpointError as e:
                raise UsageError(str(e)) from None
        try:
            return preset(self.model, n_kv_head=self.n_kv_head, block_size=self.block_size)
        except ValueError as e:
            raise UsageError(str(e)) from None

    def as_record_cell(self, device: torch.device) -> dict:
        return {
            "model": self.model,
            "kv_mode": self.kv_mode,
            "batch": self.batch,
            "prompt_len": self.prompt_len,
            "new_tokens": self.new_tokens,
            "dtype": self.dtype,
            "attention": self.attention,
            "device": str(device),
            "prompt_source": f"file:{self.prompt_file}" if self.prompt_file else "random",
            "seed": self.seed,
            "warmup": self.warmup,
            "iters": self.iters,
            "engine": self.engine,
            "n_kv_head": self.n_kv_head,
            "block_size": self.block_size,
            "compile": self.compile,
            "checkpoint": self.checkpoint,
            "check_steps": min(self.check_steps, self.new_tokens),
            "threads": self.threads,
            **self.kv_options(),
            # A rectangular batch's record names neither, so it pairs with records made before they existed.
            **({"prompt_spread": self.prompt_spread} if self.prompt_spread else {}),
            **({"shared_prefix": self.shared_prefix} if self.shared_prefix else {}),
        }

    def kv_options(self) -> dict:
        """The cache settings this cell's kv mode uses, as make_cache takes them (the record's too)."""
        return {k: getattr(self, k) for k in KV_MODE_OPTIONS.get(self.kv_mode, ())}


def check_writable(out: Path, kind: str = ".json") -> None:
    """Prove the output (a record; `kind`: the suffix it takes) can be written where it goes: create
    (and remove) a file beside it.

    `os.access` is not proof: as root it says yes to read-only mounts and to /proc, and a cell
    would be measured in full only to fail at the end.
    """
    if out.is_dir():
        raise UsageError(f"out: {str(out)!r} is a directory; give a file path ending in {kind}")
    parent = out.parent
    while not parent.exists():  # the nearest existing ancestor must let us create the rest
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"out: {str(out)!r} is not writable ({str(parent)!r} is a file, not a folder)")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
        if out.exists():
            with open(out, "r+b"):
                pass
    except OSError as e:
        raise UsageError(f"out: {str(out)!r} is not writable ({e.strerror or e})") from None


def make_prompt(spec: CellSpec, vocab_size: int) -> torch.Tensor:
    """(batch, prompt_len) token ids, the same on every device for the same seed and source."""
    if spec.prompt_file is None:
        gen = torch.Generator().manual_seed(spec.seed)
        return torch.randint(0, vocab_size, (spec.batch, spec.prompt_len), generator=gen)
    from kvbench.models.tokenizer import load_encoding

    ids = load_encoding(spec.encoding).encode_ordinary(Path(spec.prompt_file).read_text())
    if not ids:
        raise UsageError(f"prompt_file: {spec.prompt_file!r} encodes to no tokens")
    ids = (ids * (spec.prompt_len // len(ids) + 1))[: spec.prompt_len]  # repeat a short text to length
    return torch.tensor(ids).unsqueeze(0).repeat(spec.batch, 1)
