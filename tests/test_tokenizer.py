"""Text codecs: tiktoken's GPT-2 BPE, or a checkpoint directory's own tokenizer.json (built here, offline)."""

import pytest

from kvbench.models.tokenizer import EncodingError, Tiktoken, TokenizerJSON, for_model

TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "grouped-query attention keeps fewer key and value heads than query heads",
    "the cache grows by one token per step; recomputing it costs a forward over the whole prefix",
]
BOS = "<s>"


def write_tokenizer_json(directory, vocab_size: int = 320):
    """A byte-level BPE trained in-process on a few sentences, with a BOS the post-processor adds (as Llama's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS, "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXT, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 0)])
    path = directory / "tokenizer.json"
    tok.save(str(path))
    return path


def test_tokenizer_json_round_trips_text_and_adds_its_bos(tmp_path):
    codec = TokenizerJSON(write_tokenizer_json(tmp_path))
    ids = codec.encode("the quick fox, unseen words too: ünïcode")
    assert ids[0] == 0  # the post-processor's BOS, as transformers' tokenizer adds it by default
    assert len(ids) < len("the quick fox, unseen words too: ünïcode")  # merges were learnt and used
    assert codec.decode(ids) == "the quick fox, unseen words too: ünïcode"  # BOS left out of the text
    assert codec.n_vocab == 320 and max(ids) < codec.n_vocab


def test_for_model_reads_the_checkpoints_tokenizer_json_unless_an_encoding_is_named(tmp_path):
    write_tokenizer_json(tmp_path)
    assert isinstance(for_model(str(tmp_path), None), TokenizerJSON)
    tiktoken_file = tmp_path / "bytes.tiktoken"
    import base64

    tiktoken_file.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)))
    named = for_model(str(tmp_path), str(tiktoken_file))
    assert isinstance(named, Tiktoken) and named.encode("ab") == [97, 98]
    assert isinstance(for_model(str(tmp_path / "elsewhere"), str(tiktoken_file)), Tiktoken)  # no tokenizer.json


def test_a_broken_tokenizer_json_is_one_line(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": "not a tokenizer"}')
    with pytest.raises(EncodingError, match=r"^encoding: .*tokenizer\.json' is not a tokenizers tokenizer\.json") as e:
        for_model(str(tmp_path), None)
    assert "\n" not in str(e.value)
