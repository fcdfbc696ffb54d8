"""Text to token ids and back: GPT-2's BPE through tiktoken, or a checkpoint's own tokenizer.json.

tiktoken fetches the `gpt2` BPE from the internet on first use (then caches it under
TIKTOKEN_CACHE_DIR). Offline, point `--encoding` at a local `.tiktoken` file (base64
token + rank per line, as tiktoken's own files) and the same GPT-2 split pattern is used.
A Llama-family checkpoint directory carries its tokenizer as `tokenizer.json`, which Hugging
Face's `tokenizers` reads offline; `for_model` picks it when it is there.
"""

from __future__ import annotations

from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe

# GPT-2's pre-tokenisation pattern (the same one tiktoken's gpt2 encoding uses).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
END_OF_TEXT = "<|endoftext|>"


class EncodingError(ValueError):
    pass


def from_file(path: Path) -> tiktoken.Encoding:
    try:
        ranks = load_tiktoken_bpe(str(path))
    except Exception as e:
        raise EncodingError(
            f"encoding: {str(path)!r} is not a tiktoken BPE file (base64 token + rank per line): {type(e).__name__}"
        ) from e
    return tiktoken.Encoding(
        name=path.stem,
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: max(ranks.values()) + 1},
    )


def load_encoding(spec: str = "gpt2") -> tiktoken.Encoding:
    """`spec` is a tiktoken encoding name (e.g. gpt2) or the path of a local .tiktoken file."""
    path = Path(spec)
    if path.suffix == ".tiktoken" or path.exists() or "/" in spec:
        if not path.is_file():
            raise EncodingError(f"encoding: file {spec!r} does not exist")
        return from_file(path)
    try:
        return tiktoken.get_encoding(spec)
    except ValueError as e:
        raise EncodingError(
            f"encoding: {spec!r} is not a tiktoken encoding name "
            f"(known: {', '.join(tiktoken.list_encoding_names())}) nor a .tiktoken file"
        ) from e
    except Exception as e:  # the BPE file could not be downloaded (offline machine)
        raise EncodingError(
            f"encoding: could not load {spec!r} ({type(e).__name__}: it is downloaded on first use); "
            f"offline, pass --encoding /path/to/gpt2.tiktoken or set TIKTOKEN_CACHE_DIR "
            f"to a directory that holds tiktoken's cached files"
        ) from e


TOKENIZER_JSON = "tokenizer.json"


class Tiktoken:
    """A tiktoken encoding as `kvbench sample` uses it: GPT-2's end-of-text marker may appear in the text."""

    def __init__(self, encoding: tiktoken.Encoding):
        self.encoding = encoding
        self.n_vocab = encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, allowed_special={END_OF_TEXT})

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)


class TokenizerJSON:
    """A checkpoint's own `tokenizer.json` through Hugging Face's `tokenizers` (the library transformers runs).

    Encoding adds the special tokens the file's post-processor asks for (a Llama-family BOS), as
    transformers' tokenizer does by default; decoding leaves them out of the text."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises its own Exception for a malformed file
            raise EncodingError(f"encoding: {str(path)!r} is not a tokenizers tokenizer.json ({e})") from None
        self.n_vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def for_model(checkpoint: str | None, encoding: str | None) -> Tiktoken | TokenizerJSON:
    """The text codec for a model: `encoding` when given; else a local checkpoint directory's
    tokenizer.json when it has one; else tiktoken's GPT-2 encoding."""
    if encoding is None and checkpoint is not None and (Path(checkpoint) / TOKENIZER_JSON).is_file():
        return TokenizerJSON(Path(checkpoint) / TOKENIZER_JSON)
    return Tiktoken(load_encoding(encoding or "gpt2"))
