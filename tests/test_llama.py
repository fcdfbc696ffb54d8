"""The Llama-family decoder against transformers' own models on the same weights, through --checkpoint."""

import json

import pytest
import torch

from kvbench.caches.base import CacheShape
from kvbench.caches.static import StaticCache
from kvbench.cli import main
from kvbench.core.presets import PRESETS, preset
from kvbench.core.record import validate
from kvbench.engines.generate import generate
from kvbench.measure.spec import CellSpec, UsageError
from kvbench.models import checkpoint, llama
from kvbench.models.family import build_random

transformers = pytest.importorskip("transformers")

MODES = ("none", "concat", "static", "static-int8")
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
# Odd shapes on purpose: 9/3 and 14/2 heads (SmolLM2's and Qwen2.5's grouping), head dims 16 and 8,
# an MLP width that is no power of two; llama3 scaling with a short original context, so prompt 37
# reaches the scaled low frequencies.
SHAPES = {
    "gqa9-3-tied": ("LlamaForCausalLM", dict(hidden_size=144, num_attention_heads=9, num_key_value_heads=3)),
    "gqa14-2-bias-untied": (
        "Qwen2ForCausalLM",
        dict(hidden_size=112, num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=False),
    ),
    "llama3-scaling-untied": (
        "LlamaForCausalLM",
        dict(
            hidden_size=128,
            num_attention_heads=8,
            num_key_value_heads=2,
            rope_theta=500000.0,
            rope_scaling={**LLAMA3, "original_max_position_embeddings": 16},
            tie_word_embeddings=False,
        ),
    ),
    "mistral-gqa8-1": (
        "MistralForCausalLM",
        dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=1, sliding_window=None),
    ),
}


def hf_model(arch: str, seed: int = 0, **kw):
    """A random transformers model, every weight (biases and norm scales too) drawn so none is trivially 0 or 1."""
    base = dict(num_hidden_layers=2, intermediate_size=200, vocab_size=301, max_position_embeddings=64)
    base.setdefault("tie_word_embeddings", True)
    cfg_cls = getattr(transformers, arch.replace("ForCausalLM", "Config"))
    model = getattr(transformers, arch)(cfg_cls(**{**base, **kw})).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            centre = 1.0 if "norm" in name else 0.0
            p.copy_(centre + 0.08 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module", params=list(SHAPES))
def saved(request, tmp_path_factory):
    arch, kw = SHAPES[request.param]
    hf = hf_model(arch, **kw)
    d = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(d)
    return request.param, d, hf


def prompt(batch: int = 3, length: int = 37, vocab: int = 301) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(5))


def test_logits_equal_transformers_on_the_same_weights(saved):
    name, d, hf = saved
    ours = checkpoint.load(str(d), "cpu", torch.float32)
    x = prompt()
    with torch.no_grad():
        diff = float((ours(x, last_only=False) - hf(x).logits).abs().max())
    print(f"{name}: max |logit difference| = {diff:.3g}")
    assert diff <= 1e-4
    assert ours.config.tie_word_embeddings == ("untied" not in name)
    assert ours.config.attention_bias == ("bias" in name)


def test_greedy_tokens_equal_transformers_generate(saved):
    _, d, hf = saved
    ours = checkpoint.load(str(d), "cpu", torch.float32)
    x = prompt()
    with torch.no_grad():
        theirs = hf.generate(x, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)[:, x.size(1) :]
    assert theirs.shape == (3, 8)
    for mode in ("none", "static"):
        assert torch.equal(generate(ours, x, 8, mode).tokens, theirs), mode


def test_weights_round_trip_through_transformers_names(saved):
    _, d, hf = saved
    ours = checkpoint.load(str(d), "cpu", torch.float32)
    theirs = {k: v for k, v in hf.state_dict().items() if "rotary_emb" not in k}
    back = llama.hf_state_dict(ours)
    assert back.keys() == theirs.keys()
    assert all(torch.equal(back[k], theirs[k]) for k in theirs)


def test_hf_config_dict_builds_transformers_model_of_the_same_size():
    for name in ("smollm2-135m", "qwen2.5-0.5b", "llama-3.2-1b", "tinyllama-1.1b"):
        d = llama.hf_config_dict(PRESETS[name])
        cfg = transformers.AutoConfig.for_model(**{k: v for k, v in d.items() if k != "architectures"})
        with torch.device("meta"):
            theirs = getattr(transformers, d["architectures"][0])(cfg)
            ours = llama.Llama(PRESETS[name])
        assert theirs.num_parameters() == ours.num_params(), name


# Published parameter counts (the model cards, transformers' num_parameters()): they pin every shape.
PUBLISHED = {
    "smollm2-135m": 134_515_008,
    "smollm2-360m": 361_821_120,
    "qwen2.5-0.5b": 494_032_768,
    "llama-3.2-1b": 1_235_814_400,
    "tinyllama-1.1b": 1_100_048_384,
    "llama-3.1-8b": 8_030_261_248,
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_presets_have_the_published_parameter_counts(name):
    with torch.device("meta"):
        model = llama.Llama(preset(name))
    assert model.num_params() == PUBLISHED[name]


@pytest.fixture(scope="module")
def tiny():
    return build_random(preset("tiny-llama"), "cpu", torch.float32, seed=0, for_decoding=True)


@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_every_kv_mode_gives_none_tokens(tiny, attention):
    tiny.set_attention(attention)
    x = prompt(3, 37, 512)
    ref = generate(tiny, x, 12, "none", keep_logits=True)
    for mode in MODES[1:]:
        gen = generate(tiny, x, 12, mode, keep_logits=True)
        assert torch.equal(gen.tokens, ref.tokens), mode
        worst = max(float((a - b).abs().max()) for a, b in zip(gen.logits, ref.logits))
        assert worst < (1e-2 if mode == "static-int8" else 1e-5), mode
    tiny.set_attention("sdpa")


def test_static_step_with_the_position_as_a_tensor_equals_the_full_forward(tiny):
    """The step the compiled decoder compiles, run eagerly: rotary angles from a position tensor."""
    cfg = tiny.config
    x = prompt(2, 20, 512)
    full = tiny(x, last_only=False)
    cache = StaticCache(CacheShape(cfg.n_layer, 2, cfg.kv_heads, 20, cfg.head_dim, torch.float32, "cpu"))
    tiny(x[:, :8], cache, 0)
    for t in range(8, 20):
        step = tiny.static_step(x[:, t : t + 1], torch.tensor([t]), cache)
        torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-5, rtol=1e-5)


def test_random_init_is_seeded_tied_and_on_the_requested_dtype(tiny):
    again = build_random(preset("tiny-llama"), "cpu", torch.float32, seed=0, for_decoding=True)
    assert all(torch.equal(a, b) for a, b in zip(tiny.parameters(), again.parameters()))
    untied = build_random(preset("tiny-llama", n_kv_head=8), "cpu", torch.bfloat16, seed=1)
    assert {p.dtype for p in untied.parameters()} == {torch.bfloat16}
    assert untied.model.layers[0].self_attn.qkv_proj.weight.shape == (3 * 64, 64)  # all heads keep K/V
    tied = build_random(preset("smollm2-135m", n_layer=1), "cpu", torch.float32, seed=0)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight


@pytest.mark.slow  # a cell per kv mode, in process
def test_cell_with_a_checkpoint_checks_every_mode(tmp_path, capsys):
    hf = hf_model("Qwen2ForCausalLM", hidden_size=112, num_attention_heads=14, num_key_value_heads=2)
    hf.save_pretrained(tmp_path / "ckpt", max_shard_size="100KB")  # sharded: the index is read too
    assert (tmp_path / "ckpt" / checkpoint.SHARD_INDEX).is_file()
    for mode in MODES:
        out = tmp_path / f"{mode}.json"
        args = ["--checkpoint", str(tmp_path / "ckpt"), "--kv-mode", mode, "--batch", "3", "--prompt-len", "37"]
        assert main(["cell", *args, "--new-tokens", "6", "--warmup", "0", "--iters", "1", "--out", str(out)]) == 0
        rec = json.loads(out.read_text())
        validate(rec)
        assert rec["status"] == "ok" and rec["check"]["matches_reference"] is True, mode
        assert rec["model_info"]["family"] == "llama" and rec["model_info"]["n_kv_head"] == 2
    capsys.readouterr()


def test_unsupported_architectures_and_windows_are_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "phi3", "architectures": ["Phi3ForCausalLM"]}))
    with pytest.raises(checkpoint.CheckpointError, match="'Phi3ForCausalLM'.*supported: GPT2LMHeadModel, Llama"):
        checkpoint.read_config(str(tmp_path))
    hf = hf_model("MistralForCausalLM", hidden_size=64, num_attention_heads=4, num_key_value_heads=2, sliding_window=16)
    hf.save_pretrained(tmp_path / "mistral")
    with pytest.raises(UsageError, match="sliding_window 16"):
        CellSpec(checkpoint=str(tmp_path / "mistral"), prompt_len=12, new_tokens=6).check()
    CellSpec(checkpoint=str(tmp_path / "mistral"), prompt_len=10, new_tokens=6).check()  # within the window


@pytest.mark.slow
def test_compiled_static_decoder_runs_the_llama_step_once_for_every_position(tiny):
    """The compiled static step: rotary angles from a position tensor, so one graph serves every step."""
    from torch._dynamo.utils import counters

    from kvbench.engines.kvbench import CompiledStaticDecoder

    torch._dynamo.reset()
    counters.clear()
    x = prompt(2, 9, 512)
    ref = generate(tiny, x, 10, "none", keep_logits=True)
    decoder = CompiledStaticDecoder(tiny, batch=2, max_len=9 + 10 - 1)
    for _ in range(2):
        gen = decoder(x, 10, keep_logits=True)
        assert torch.equal(gen.tokens, ref.tokens)
        assert max(float((a - b).abs().max()) for a, b in zip(gen.logits, ref.logits)) < 1e-4
    assert counters["stats"]["unique_graphs"] == 1


def test_a_step_reads_an_untied_embedding_one_row_and_a_tied_one_whole(tiny):
    from kvbench.measure import roofline

    everything = sum(p.numel() * 4 for p in tiny.parameters())
    assert roofline.step_read_bytes(tiny) == everything - tiny.model.embed_tokens.weight.numel() * 4
    tied = build_random(preset("tiny-llama", tie_word_embeddings=True), "cpu", torch.float32, seed=0)
    assert roofline.step_read_bytes(tied) == sum(p.numel() * 4 for p in tied.parameters())
