"""kvbench's small-batch kernel: the same numbers as F.linear on odd shapes and row counts, in eager and
compiled code; built once per CPU, a damaged build rebuilt, no compiler a one-line fallback."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kvbench.kernels import build
from kvbench.kernels import small_batch_linear as kernel

needs_kernel = pytest.mark.skipif(not kernel.available(), reason="the kernel is not built for this machine")


@needs_kernel
@pytest.mark.parametrize("n,k", [(16, 1), (48, 5), (32, 769), (2304, 768), (768, 3072), (83, 13), (7, 40), (50257, 24)])
@pytest.mark.parametrize("rows", [1, 2, 3, 7, 8, 9, 17, 130])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_f_linear(n, k, rows, bias):
    g = torch.Generator().manual_seed(n * 7919 + k * 31 + rows)
    w, x = torch.randn(n, k, generator=g), torch.randn(rows, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    want = F.linear(x, w, b)
    got = kernel.linear(x, kernel.pack(w), b, n)
    torch.testing.assert_close(got, want, atol=1e-4 * k**0.5, rtol=1e-4)


@needs_kernel
def test_three_dimensional_input_and_a_non_contiguous_one():
    w, x = torch.randn(64, 40), torch.randn(3, 5, 80)[..., ::2]  # a strided view of (3, 5, 40)
    torch.testing.assert_close(kernel.linear(x, kernel.pack(w), None, 64), F.linear(x, w), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n", [48, 50, 7])
def test_pack_unpack_and_rows_read_the_same_matrix(n):
    w = torch.randn(n, 10)
    packed = kernel.pack(w)
    assert packed.shape == (n * 10,) and packed.is_contiguous()  # the parameter's count and bytes
    blocks, tail = kernel.parts(packed, n, 10)
    assert blocks.shape == (n // 16, 10, 16) and tail.shape == (n % 16, 10)
    if n >= 32:
        assert torch.equal(blocks[1, 4], w[16:32, 4])
    assert torch.equal(kernel.unpack(packed, n, 10), w)
    index = torch.tensor([[0, n - 1, n // 2], [n - 1, 0, min(n - 1, 17)]])
    assert torch.equal(kernel.rows(packed, n, 10, index), w[index])
    assert kernel.fits(w) and not kernel.fits(w.double()) and not kernel.fits(torch.randn(3))


@needs_kernel
def test_a_compiled_graph_calls_the_kernel():
    w, b, x = torch.randn(64, 32), torch.randn(64), torch.randn(2, 32)
    packed = kernel.pack(w)
    step = torch.compile(lambda x: kernel.linear(x, packed, b, 64).relu(), fullgraph=True)
    torch.testing.assert_close(step(x), F.linear(x, w, b).relu(), atol=1e-5, rtol=1e-5)


@needs_kernel
def test_bad_shapes_are_refused_by_the_op():
    packed = kernel.pack(torch.randn(32, 8))
    with pytest.raises(RuntimeError, match="shapes do not match"):
        torch.ops.kvbench.small_batch_linear(torch.randn(1, 9), packed, None, 32)
    with pytest.raises(RuntimeError, match="flat"):
        torch.ops.kvbench.small_batch_linear(torch.randn(1, 8), packed.view(32, 8), None, 32)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.kvbench.small_batch_linear(torch.randn(1, 8).double(), packed, None, 32)


def test_the_build_folder_names_the_source_torch_and_cpu(monkeypatch):
    first = build.key(kernel.NAME)
    monkeypatch.setattr(build, "cpu_signature", lambda: "another cpu")
    assert build.key(kernel.NAME) != first and build.key(kernel.NAME).startswith(kernel.NAME)


@pytest.mark.slow  # two builds, ~8 s each
@pytest.mark.skipif(build.compiler() is None, reason="no C++ compiler")
def test_a_damaged_library_is_rebuilt_not_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "home", lambda: tmp_path)
    library = build.build(kernel.NAME)
    assert build.verified(library.parent) == library
    library.write_bytes(library.read_bytes()[:1000])  # a half-written library
    assert build.verified(library.parent) is None
    again = build.build(kernel.NAME)
    assert again == library and build.verified(again.parent) == again


def test_without_a_compiler_the_fallback_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(build, "home", lambda: tmp_path)
    monkeypatch.setattr(build, "compiler", lambda: None)
    assert build.load.__wrapped__(kernel.NAME) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no C++ compiler" in err[0] and "library's ops" in err[0]


def test_a_failing_compiler_is_one_line_too(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(build, "home", lambda: tmp_path)
    monkeypatch.setattr(build, "compiler", lambda: "false")  # exits 1, prints nothing
    assert build.load.__wrapped__(kernel.NAME) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compiler failed" in err[0]
    assert not any(tmp_path.iterdir()) or not list(tmp_path.glob("*/library.so"))  # nothing half-built kept
