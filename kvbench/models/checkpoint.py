"""Real weights: a local transformers directory (GPT-2, Llama, Qwen2, Mistral), a nanoGPT `ckpt.pt`, or a hub name.

`read_config` only reads metadata, so a cell can reject a missing or malformed checkpoint
(or a prompt too long for it) before any weights are loaded.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch

from kvbench.core.presets import LlamaConfig
from kvbench.models import llama
from kvbench.models.family import Config, Model
from kvbench.models.gpt2 import GPTConfig, empty_gpt

HUB_PREFIX = "hf:"
# config.json model_type -> the architecture it names; the Llama family shares one model here.
ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
}
SHARD_INDEX = "model.safetensors.index.json"
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
                snapshot_download(
                    spec[len(HUB_PREFIX) :], allow_patterns=["config.json", "*.safetensors", "*.bin", SHARD_INDEX]
                )
            )
        except Exception as e:  # network or unknown repo: one clear line for the user
            raise CheckpointError(
                f"checkpoint: could not fetch {spec!r} from the Hugging Face hub "
                f"({type(e).__name__}); download it and pass the local directory"
            ) from e
    path = Path(spec)
    if not path.exists():
        raise CheckpointError(
            f"checkpoint: {spec!r} does not exist (expected a transformers model directory, "
            f"a nanoGPT ckpt.pt, or {HUB_PREFIX}<name>)"
        )
    return path


def _hf_weights_files(d: Path) -> list[Path]:
    """The files holding the weights: one file, or every shard a safetensors index names."""
    if (d / SHARD_INDEX).is_file():
        try:
            shards = sorted(set(json.loads((d / SHARD_INDEX).read_text())["weight_map"].values()))
        except (OSError, json.JSONDecodeError, KeyError, AttributeError) as e:
            raise CheckpointError(f"checkpoint: {SHARD_INDEX} in {str(d)!r} is unreadable ({e})") from e
        missing = [s for s in shards if not (d / s).is_file()]
        if missing:
            raise CheckpointError(f"checkpoint: {str(d)!r} lacks the shard {missing[0]!r} its index names")
        return [d / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (d / name).is_file():
            return [d / name]
    raise CheckpointError(f"checkpoint: {str(d)!r} has no model.safetensors, {SHARD_INDEX} or pytorch_model.bin")


def _hf_config(d: Path) -> Config:
    try:
        raw = json.loads((d / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint: {str(d)!r} has no readable config.json ({e})") from e
    model_type = raw.get("model_type")
    if model_type not in ARCHITECTURES:
        named = (raw.get("architectures") or [model_type])[0]
        raise CheckpointError(
            f"checkpoint: architecture {named!r} (model_type {model_type!r}) is not supported; "
            f"supported: {', '.join(ARCHITECTURES.values())}"
        )
    try:
        if model_type != "gpt2":
            return _llama_config(raw)
        return GPTConfig(
            block_size=raw["n_positions"],
            vocab_size=raw["vocab_size"],
            n_layer=raw["n_layer"],
            n_head=raw["n_head"],
            n_embd=raw["n_embd"],
            bias=True,
        )
    except KeyError as e:
        raise CheckpointError(f"checkpoint: {d / 'config.json'} lacks {e}") from e
    except (TypeError, ValueError, ZeroDivisionError) as e:  # a number that is not one, or zero heads
        raise CheckpointError(f"checkpoint: {d / 'config.json'}: {e}") from e


def _rope(raw: dict) -> tuple[float, tuple[tuple[str, float], ...] | None]:
    """rope_theta and llama3 scaling from either spelling: transformers 5's `rope_parameters`, or the
    hub's `rope_theta` + `rope_scaling`."""
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    theta = params.pop("rope_theta", raw.get("rope_theta", 10000.0))
    kind = params.pop("rope_type", params.pop("type", "default"))
    if kind == "default":
        return float(theta), None
    if kind != "llama3":
        raise CheckpointError(f"checkpoint: rope_type: {kind!r} is not one of default, llama3")
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return float(theta), tuple(sorted((k, params[k]) for k in keys))


def _llama_config(raw: dict) -> LlamaConfig:
    """A Llama, Qwen2 or Mistral config.json as our LlamaConfig; what it cannot express is one line."""
    if raw.get("hidden_act", "silu") != "silu" or raw.get("mlp_bias"):
        raise CheckpointError("checkpoint: hidden_act, mlp_bias: only silu without an MLP bias is supported")
    qwen2 = raw["model_type"] == "qwen2"
    if raw.get("attention_bias") and not qwen2:  # Llama's attention_bias also puts one on o_proj
        raise CheckpointError("checkpoint: attention_bias: only Qwen2's q/k/v bias is supported")
    window = raw.get("sliding_window")
    if qwen2 and not raw.get("use_sliding_window"):
        window = None
    theta, scaling = _rope(raw)
    heads = raw["num_attention_heads"]
    head_dim = raw.get("head_dim") or raw["hidden_size"] // heads
    return LlamaConfig(
        block_size=raw.get("max_position_embeddings", 2048),
        vocab_size=raw["vocab_size"],
        n_layer=raw["num_hidden_layers"],
        n_head=heads,
        n_kv_head=raw.get("num_key_value_heads") or heads,
        n_embd=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        head_size=None if head_dim * heads == raw["hidden_size"] else head_dim,
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        attention_bias=qwen2,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        sliding_window=window,
    )


def _nanogpt_load(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"checkpoint: {str(path)!r} is not a readable torch checkpoint ({type(e).__name__})"
        ) from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt.get("model_args"), dict):
        raise CheckpointError(f"checkpoint: {str(path)!r} is not a nanoGPT ckpt.pt (needs 'model' and 'model_args')")
    return ckpt


def _nanogpt_config(args: dict) -> GPTConfig:
    keys = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "bias")
    missing = [k for k in keys if k not in args]
    if missing:
        raise CheckpointError(f"checkpoint: model_args lacks {', '.join(missing)}")
    try:
        return GPTConfig(**{k: args[k] for k in keys})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint: model_args: {e}") from e


def _checked(cfg: Config, where: str) -> Config:
    """`cfg` if its numbers make a model: positive sizes, heads that split the width and share K/V heads
    evenly. A config that does not is bad input, named here, not a failure deep in building the model."""
    sizes = {k: getattr(cfg, k) for k in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd")}
    bad = next(((k, v) for k, v in sizes.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1), None)
    if bad is not None:
        raise CheckpointError(f"checkpoint: {where}: {bad[0]} {bad[1]!r} must be an integer >= 1")
    if not isinstance(cfg.kv_heads, int) or isinstance(cfg.kv_heads, bool) or cfg.kv_heads < 1:
        raise CheckpointError(f"checkpoint: {where}: n_kv_head {cfg.kv_heads!r} must be an integer >= 1")
    try:
        cfg.validate()
    except (ValueError, TypeError, ZeroDivisionError) as e:
        raise CheckpointError(f"checkpoint: {where}: {e}") from None
    return cfg


def _check_weights(files: list[Path]) -> None:
    """Each weights file whole, from its header alone (no tensor is read): a safetensors file's header
    must cover the file exactly, a torch zip must have its central directory (at its end). A download
    cut short fails here, naming the file, rather than deep in loading it."""
    for f in files:
        try:
            if f.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(f), framework="pt"):
                    pass
            elif _starts_with(f, b"PK"):  # torch's zip format (an old pickle .bin is read whole at load)
                zipfile.ZipFile(f).close()
        except Exception as e:  # safetensors' own error, BadZipFile, OSError: one line naming the file
            raise CheckpointError(f"checkpoint: {f} is damaged or cut short ({one_line(e)})") from None


def _starts_with(f: Path, magic: bytes) -> bool:
    with open(f, "rb") as fh:
        return fh.read(len(magic)) == magic


def one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def read_config(spec: str) -> Config:
    """The checkpoint's model shape, from its metadata; its weights files are checked whole, not read."""
    path = _resolve(spec)
    if path.is_dir():
        cfg = _checked(_hf_config(path), str(path / "config.json"))
        _check_weights(_hf_weights_files(path))
        return cfg
    return _checked(_nanogpt_config(_nanogpt_load(path)["model_args"]), f"{path} model_args")


def _hf_tensors(d: Path) -> dict[str, torch.Tensor]:
    raw: dict[str, torch.Tensor] = {}
    files = _hf_weights_files(d)
    _check_weights(files)  # `load` may be called without `read_config`
    for f in files:
        try:
            if f.suffix == ".safetensors":
                from safetensors.torch import load_file

                raw.update(load_file(str(f)))
            else:
                raw.update(torch.load(f, map_location="cpu", weights_only=True))
        except (OSError, MemoryError):  # the machine's problem, not the file's: said as it is
            raise
        except Exception as e:  # damaged past its header: safetensors' error, an unpickling one, a bad zip
            raise CheckpointError(f"checkpoint: {f} is not readable ({one_line(e)})") from None
    return raw


def _gpt2_state_dict(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' GPT-2 names and Conv1D layout as nanoGPT's."""
    out = {}
    for k, v in raw.items():
        if k.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers, not weights
            continue
        k = k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k
        out[k] = v.t() if k.endswith(CONV1D_WEIGHTS) else v
    return out


def load(spec: str, device: torch.device | str, dtype: torch.dtype) -> Model:
    """Build the model a checkpoint describes, with its weights, on `device` in `dtype`."""
    path = _resolve(spec)
    if path.is_dir():
        config = _checked(_hf_config(path), str(path / "config.json"))
        if isinstance(config, LlamaConfig):
            return _load_llama(config, _hf_tensors(path), device, dtype)
        state = _gpt2_state_dict(_hf_tensors(path))
    else:
        ckpt = _nanogpt_load(path)
        config = _checked(_nanogpt_config(ckpt["model_args"]), f"{path} model_args")
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


def _load_llama(config: LlamaConfig, tensors: dict[str, torch.Tensor], device, dtype: torch.dtype) -> llama.Llama:
    model = llama.empty_llama(config, device, dtype)
    try:
        llama.load_hf_state_dict(model, tensors)
    except ValueError as e:
        raise CheckpointError(f"checkpoint: weights do not fit the {config.family} layout: {e}") from e
    return model.eval()
