"""The engines by name: what runs a cell's generation. One module per engine, one small interface.

A cell builds its weights once (our model, either family: random or a checkpoint) and hands them to an engine:

    engine = engines.build(name, model)            # its own copy/conversion of the same weights
    run = engine.generate                          # or engine.compiled_runner(kv_mode, prompt, n)
    gen = run(prompt, n, kv_mode, keep_logits=..., on_token=timer.mark)

`generate` calls `on_token(i)` right after token i is chosen (0 = the prefill's token), which is
where the cell takes its timestamps, and returns a `Generation` whose `cache.nbytes()` measures
the cache from its tensors (None where the engine keeps it out of reach). `check` validates a
cell's settings for the engine before anything is built, with one-line messages.

    kvbench  this repository's GPT-2 (engines/kvbench.py)
    hf       Hugging Face transformers' GPT2LMHeadModel (engines/hf.py)
    ct2      CTranslate2's Generator, converted from the hf engine's model (engines/ct2.py)
    llamacpp llama.cpp (llama-cpp-python), the hf engine's model converted to GGUF (engines/llamacpp.py)
"""

from __future__ import annotations

import importlib

from kvbench.core.presets import ENGINES
from kvbench.engines.base import Engine
from kvbench.models.family import Model


def engine_class(name: str) -> type[Engine]:
    """The engine's class; imports only that engine's module (transformers, ctranslate2 stay unloaded otherwise)."""
    if name not in ENGINES:
        raise ValueError(f"engine: {name!r} is not one of {', '.join(ENGINES)}")
    return importlib.import_module(f"kvbench.engines.{name}").ENGINE


def check(
    name: str, *, kv_mode: str, n_kv_head: int | None = None, attention: str = "sdpa", compile: bool = False
) -> None:
    engine_class(name).check(kv_mode=kv_mode, n_kv_head=n_kv_head, attention=attention, compile=compile)


def build(name: str, model: Model) -> Engine:
    return engine_class(name)(model)
