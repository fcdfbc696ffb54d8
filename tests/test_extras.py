"""`kvbench sample` and `kvbench visualize` on the tiny model, offline."""

import base64

import pytest
from PIL import Image

from kvbench.cli import main


@pytest.fixture()
def encoding_file(tmp_path):
    """A hand-built BPE in tiktoken's file format: the 256 bytes plus a few merges (no download)."""
    tokens = [bytes([b]) for b in range(256)] + [b"th", b"he", b"the", b" the", b"in", b"er"]
    path = tmp_path / "tiny.tiktoken"
    path.write_text("".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens)))
    return path


def run(args, capsys):
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sample_is_deterministic_for_a_seed_in_every_mode(encoding_file, capsys):
    outs = set()
    for mode in ("none", "concat", "static"):
        code, out, err = run(
            [
                "sample",
                "--model",
                "tiny",
                "--encoding",
                str(encoding_file),
                "--start",
                "the other",
                "--max-new-tokens",
                "12",
                "--num-samples",
                "2",
                "--kv-mode",
                mode,
                "--seed",
                "5",
                "--temperature",
                "0",
            ],
            capsys,
        )
        assert code == 0, err
        assert out.startswith("the other") and out.count("---------------") == 2
        assert "s per sample" in err and "tokens/s" in err
        outs.add(out)
    assert len(outs) == 1  # greedy text is the same whichever cache produced it
    again = run(
        [
            "sample",
            "--model",
            "tiny",
            "--encoding",
            str(encoding_file),
            "--start",
            "the other",
            "--max-new-tokens",
            "12",
            "--num-samples",
            "2",
            "--seed",
            "5",
            "--temperature",
            "1.0",
        ],
        capsys,
    )[1]
    assert (
        again
        == run(
            [
                "sample",
                "--model",
                "tiny",
                "--encoding",
                str(encoding_file),
                "--start",
                "the other",
                "--max-new-tokens",
                "12",
                "--num-samples",
                "2",
                "--seed",
                "5",
                "--temperature",
                "1.0",
            ],
            capsys,
        )[1]
    )


def test_the_text_command_is_named_after_its_module_not_the_decode_loop(capsys):
    code, _, err = run(["generate"], capsys)  # generate.py is the decode loop; sample.py is `kvbench sample`
    assert code == 2 and "invalid choice: 'generate'" in err and "'sample'" in err


def test_sample_warns_and_stops_at_the_block_size(encoding_file, capsys):
    code, out, err = run(
        [
            "sample",
            "--model",
            "tiny",
            "--encoding",
            str(encoding_file),
            "--start",
            "abcdefghij",
            "--max-new-tokens",
            "100",
            "--temperature",
            "0",
        ],
        capsys,
    )
    assert code == 0
    assert "warning: 10 prompt + 100 new tokens exceed block_size 64; stopping after 54 new tokens" in err
    code, _, err = run(["sample", "--model", "tiny", "--encoding", str(encoding_file), "--start", "x" * 64], capsys)
    assert code == 2 and "leaves no room" in err


def test_sample_names_a_missing_or_bad_encoding(tmp_path, capsys):
    code, _, err = run(["sample", "--model", "tiny", "--encoding", str(tmp_path / "nope.tiktoken")], capsys)
    assert code == 2 and "encoding: file" in err and "does not exist" in err
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("not base64 at all\n")
    code, _, err = run(["sample", "--model", "tiny", "--encoding", str(bad)], capsys)
    assert code == 2 and "is not a tiktoken BPE file" in err and len(err.strip().splitlines()) == 1


def test_offline_gpt2_encoding_failure_says_how_to_fix_it(monkeypatch, tmp_path):
    """tiktoken downloads the gpt2 BPE on first use; here that fails, and the message says what to do.
    (The download is mocked to fail: this machine may or may not reach the internet.)"""
    import tiktoken

    from kvbench.models.tokenizer import EncodingError, load_encoding

    def offline(name):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(EncodingError, match="offline, pass --encoding /path/to/gpt2.tiktoken"):
        load_encoding("gpt2")


def test_visualize_gif_has_one_frame_per_forward_and_is_deterministic(tmp_path, capsys):
    a, b = tmp_path / "a.gif", tmp_path / "b.gif"
    for out in (a, b):
        code, _, err = run(
            [
                "visualize",
                "--model",
                "tiny",
                "--layer",
                "1",
                "--head",
                "3",
                "--prompt-len",
                "5",
                "--new-tokens",
                "7",
                "--out",
                str(out),
            ],
            capsys,
        )
        assert code == 0, err
    im = Image.open(a)
    assert im.n_frames == 7 and im.size == (640, 480)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--layer", "2"], "layer: 2 is out of range 0..1"),
        (["--head", "4"], "head: 4 is out of range 0..3"),
        (["--kv-mode", "none"], "kv_mode: 'none' is not one of concat, static"),
    ],
)
def test_visualize_bad_input_is_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "x.gif"
    code, _, err = run(["visualize", "--model", "tiny", *args, "--out", str(out)], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
