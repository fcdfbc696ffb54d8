"""Real GPT-2 weights: a local Hugging Face directory, a nanoGPT `ckpt.pt`, or a hub name.

`read_config` only reads metadata, so a cell can reject a missing or malformed checkpoint
(or a prompt too long for it) before any weights are loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kvbench.model import GPT, GPTConfig, empty_gpt

HUB_PREFIX = "hf:"
# Hugging Face GPT-2 stores these as Conv1D (in, out); nn.Linear wants (out, in).
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class CheckpointError(ValueError):
    pass


def _resolve(spec: str) -> Path:
    if spec.startswith(HUB_PREFIX):
        try:
            from huggingface_hub import snapshot_download
        except ImportError as e:  # pragma: no cover - transformers brings it
            raise CheckpointError(f"checkpoint: {spec!r} needs the huggingface_hub package") from e
        try:
            return Path(
                snapshot_download(spec[len(HUB_PREFIX) :], allow_patterns=["config.json", "*.safetensors", "*.bin"])
            )
        except Exception as e:  # network or unknown repo: one clear line for the user
            raise CheckpointError(
                f"checkpoint: could not fetch {spec!r} from the Hugging Face hub "
                f"({type(e).__name__}); download it and pass the local directory"
            ) from e
    path = Path(spec)
    if not path.exists():
        raise CheckpointError(
            f"checkpoint: {spec!r} does not exist (expected a Hugging Face GPT-2 directory, "
            f"a nanoGPT ckpt.pt, or {HUB_PREFIX}<name>)"
        )
    return path


def _hf_weights_file(d: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (d / name).is_file():
            return d / name
    raise CheckpointError(f"checkpoint: {str(d)!r} has no model.safetensors or pytorch_model.bin")


def _hf_config(d: Path) -> GPTConfig:
    try:
        raw = json.loads((d / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint: {str(d)!r} has no readable config.json ({e})") from e
    if raw.get("model_type") != "gpt2":
        raise CheckpointError(
            f"checkpoint: config.json model_type is {raw.get('model_type')!r}, only 'gpt2' is supported"
        )
    try:
        return GPTConfig(
            block_size=raw["n_positions"],
            vocab_size=raw["vocab_size"],
            n_layer=raw["n_layer"],
            n_head=raw["n_head"],
            n_embd=raw["n_embd"],
            bias=True,
        )
    except KeyError as e:
        raise CheckpointError(f"checkpoint: config.json lacks {e}") from e


def _nanogpt_load(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"checkpoint: {str(path)!r} is not a readable torch checkpoint ({type(e).__name__})"
        ) from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise CheckpointError(f"checkpoint: {str(path)!r} is not a nanoGPT ckpt.pt (needs 'model' and 'model_args')")
    return ckpt


def _nanogpt_config(args: dict) -> GPTConfig:
    keys = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "bias")
    missing = [k for k in keys if k not in args]
    if missing:
        raise CheckpointError(f"checkpoint: model_args lacks {', '.join(missing)}")
    return GPTConfig(**{k: args[k] for k in keys})


def read_config(spec: str) -> GPTConfig:
    path = _resolve(spec)
    if path.is_dir():
        cfg = _hf_config(path)
        _hf_weights_file(path)
        return cfg
    return _nanogpt_config(_nanogpt_load(path)["model_args"])


def _hf_state_dict(d: Path) -> dict[str, torch.Tensor]:
    f = _hf_weights_file(d)
    if f.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw = load_file(str(f))
    else:
        raw = torch.load(f, map_location="cpu", weights_only=True)
    out = {}
    for k, v in raw.items():
        if k.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers, not weights
            continue
        k = k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k
        out[k] = v.t() if k.endswith(CONV1D_WEIGHTS) else v
    return out


def load(spec: str, device: torch.device | str, dtype: torch.dtype) -> GPT:
    """Build the GPT a checkpoint describes, with its weights, on `device` in `dtype`."""
    path = _resolve(spec)
    if path.is_dir():
        config, state = _hf_config(path), _hf_state_dict(path)
    else:
        ckpt = _nanogpt_load(path)
        config = _nanogpt_config(ckpt["model_args"])
        state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    model = empty_gpt(config, device, dtype)
    state.setdefault("lm_head.weight", state.get("transformer.wte.weight"))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0:2]
        raise CheckpointError(f"checkpoint: weights do not fit the GPT-2 layout: {' '.join(first)}") from e
    model.tie_weights()
    return model.eval()
