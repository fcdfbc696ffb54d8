"""GPT-2's BPE through tiktoken, from its registry name or from a local file.

tiktoken fetches the `gpt2` BPE from the internet on first use (then caches it under
TIKTOKEN_CACHE_DIR). Offline, point `--encoding` at a local `.tiktoken` file (base64
token + rank per line, as tiktoken's own files) and the same GPT-2 split pattern is used.
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
