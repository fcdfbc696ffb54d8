"""The model families kvbench builds, chosen by a config's `family`: GPT-2 (gpt2.py) and Llama (llama.py).

A cell, an engine or a command asks here for a model of any family; each family module knows only
its own architecture, and what every family shares is decoder.py and attention.py.
"""

from __future__ import annotations

import torch

from kvbench.core.presets import GPTConfig, LlamaConfig
from kvbench.models import gpt2, llama
from kvbench.models.weights import (
    prepare_for_decoding,  # noqa: F401  (re-exported: the layout step of every family)
    seeded_init,
)

# The type to annotate a model of either family with (not gpt2.GPT, which is one of them).
Model = gpt2.GPT | llama.Llama
Config = GPTConfig | LlamaConfig

# config.family -> its model class; a new family adds its line here.
FAMILIES: dict[str, type[Model]] = {"gpt2": gpt2.GPT, "llama": llama.Llama}


def empty_model(config: Config, device: torch.device | str, dtype: torch.dtype) -> Model:
    """The config's family, with uninitialised weights on `device` in `dtype`, for a checkpoint to fill."""
    return FAMILIES[config.family].empty(config, device, dtype)


def build_random(
    config: Config, device: torch.device | str, dtype: torch.dtype, seed: int, for_decoding: bool = False
) -> Model:
    """The config's family with seeded random weights, directly on `device` in `dtype`."""
    return seeded_init(empty_model(config, device, dtype), seed, for_decoding)
