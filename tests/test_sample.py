"""`kvbench sample` on a local Llama-family checkpoint: its tokenizer.json in, text out, as transformers writes it."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from kvbench.cli import main  # noqa: E402

PROMPT = "the quick brown fox"


@pytest.fixture()
def llama_checkpoint(tmp_path):
    """transformers' LlamaForCausalLM (GQA 4/2, random weights) saved with a tokenizer.json of its vocabulary."""
    from test_tokenizer import write_tokenizer_json

    cfg = transformers.LlamaConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    write_tokenizer_json(tmp_path, vocab_size=cfg.vocab_size)
    return tmp_path, hf


def sample(args, capsys):
    code = main(["sample", *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def test_sample_encodes_and_decodes_with_the_checkpoints_tokenizer_json(llama_checkpoint, capsys):
    directory, hf = llama_checkpoint
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    ids = tok.encode(PROMPT).ids  # with the BOS its post-processor adds
    with torch.no_grad():
        expected = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, min_new_tokens=8)[0]
    text = tok.decode(expected.tolist(), skip_special_tokens=True)
    assert text.startswith(PROMPT) and len(text) > len(PROMPT)
    for mode in ("none", "static"):
        args = ["--checkpoint", str(directory), "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "8"]
        out = sample([*args, "--kv-mode", mode], capsys)
        assert out == f"{text}\n---------------\n", mode  # transformers' greedy text, through our tokenizer


def test_a_named_encoding_overrides_the_checkpoints_tokenizer_json(llama_checkpoint, tmp_path, capsys):
    import base64

    from kvbench.models.tokenizer import load_encoding

    directory, hf = llama_checkpoint
    encoding = tmp_path / "bytes.tiktoken"  # the 256 bytes (+ end-of-text): every id below the model's 320
    encoding.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)))
    ids = [ord("a"), ord("b")]  # tiktoken's ids: no BOS, no merges
    with torch.no_grad():
        for _ in range(3):  # greedy over the ids the encoding can decode, as `kvbench sample` limits it
            ids.append(int(hf(torch.tensor([ids])).logits[0, -1, :257].argmax()))
    args = ["--checkpoint", str(directory), "--encoding", str(encoding), "--prompt", "ab", "--temperature", "0"]
    out = sample([*args, "--max-new-tokens", "3"], capsys)
    assert out == f"{load_encoding(str(encoding)).decode(ids)}\n---------------\n"
