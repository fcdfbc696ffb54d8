"""The model families kvbench builds, chosen by a config's `family`: GPT-2 (model.py) and Llama (llama.py).

A cell, an engine or a command asks here for a model of any family; each family module knows only
its own architecture.
"""

from __future__ import annotations

import torch

from kvbench.core.presets import GPTConfig, LlamaConfig
from kvbench.models import gpt2, llama
from kvbench.models.weights import prepare_for_decoding  # noqa: F401  (re-exported: the layout step of every family)

Model = gpt2.GPT | llama.Llama
Config = GPTConfig | LlamaConfig


def empty_model(config: Config, device: torch.device | str, dtype: torch.dtype) -> Model:
    """The config's family, with uninitialised weights on `device` in `dtype`, for a checkpoint to fill."""
    if config.family == "llama":
        return llama.empty_llama(config, device, dtype)
    return gpt2.empty_gpt(config, device, dtype)


def build_random(
    config: Config, device: torch.device | str, dtype: torch.dtype, seed: int, for_decoding: bool = False
) -> Model:
    """The config's family with seeded random weights, directly on `device` in `dtype`."""
    family = llama if config.family == "llama" else gpt2
    return family.build_random(config, device, dtype, seed, for_decoding)
