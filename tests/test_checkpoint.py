"""Real-weight loading, on checkpoints the tests make (no hub access here)."""

import json

import pytest
import torch

from kvbench.engines.generate import generate
from kvbench.models import checkpoint
from kvbench.models.gpt2 import build_random, preset

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random transformers GPT-2 saved the way the hub ships them (safetensors, Conv1D weights)."""
    cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=48, vocab_size=1000)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    d = tmp_path_factory.mktemp("hf-gpt2")
    model.save_pretrained(d)
    return d, model


@pytest.mark.parametrize("mode", ["none", "concat", "static"])
@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_logits_equal_transformers_at_prefill_and_every_decode_step(hf_dir, mode, attention):
    d, hf = hf_dir
    ours = checkpoint.load(str(d), "cpu", torch.float32)
    ours.set_attention(attention)
    prompt = torch.randint(0, 1000, (2, 7), generator=torch.Generator().manual_seed(2))
    gen = generate(ours, prompt, 10, mode, keep_logits=True)
    full = torch.cat([prompt, gen.tokens], dim=1)
    with torch.no_grad():
        ref = hf(full).logits  # one uncached forward over everything: logits at every position
    for i, step_logits in enumerate(gen.logits):  # step i's logits come from position 6 + i
        torch.testing.assert_close(step_logits, ref[:, 6 + i], atol=2e-5, rtol=1e-5)


def test_hf_loader_reads_the_architecture(hf_dir):
    d, _ = hf_dir
    cfg = checkpoint.read_config(str(d))
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size) == (2, 4, 64, 48, 1000)


def test_hf_loader_reads_pytorch_bin_too(hf_dir, tmp_path):
    d, hf = hf_dir
    (tmp_path / "config.json").write_text((d / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    ours = checkpoint.load(str(tmp_path), "cpu", torch.float32)
    x = torch.randint(0, 1000, (1, 5))
    torch.testing.assert_close(ours(x, last_only=False), hf(x).logits, atol=2e-5, rtol=1e-5)


def test_nanogpt_ckpt_round_trip(tmp_path):
    model = build_random(preset("tiny"), "cpu", torch.float32, seed=4)
    cfg = model.config
    args = dict(
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_embd=cfg.n_embd,
        block_size=cfg.block_size,
        bias=cfg.bias,
        vocab_size=cfg.vocab_size,
        dropout=0.0,
    )
    state = {"_orig_mod." + k: v for k, v in model.state_dict().items()}  # as torch.compile'd training saves
    torch.save({"model": state, "model_args": args, "iter_num": 0}, tmp_path / "ckpt.pt")
    loaded = checkpoint.load(str(tmp_path / "ckpt.pt"), "cpu", torch.float32)
    x = torch.randint(0, cfg.vocab_size, (2, 6))
    assert torch.equal(loaded(x, last_only=False), model(x, last_only=False))


def test_malformed_checkpoints_are_named(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.read_config(str(tmp_path / "missing"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="not a readable torch checkpoint"):
        checkpoint.read_config(str(tmp_path / "junk.pt"))
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(checkpoint.CheckpointError, match="model_type 'bert'"):
        checkpoint.read_config(str(d))
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(checkpoint.CheckpointError, match="lacks 'num_attention_heads'"):
        checkpoint.read_config(str(d))
