"""Folders kvbench reuses (inductor's kernels, CTranslate2 conversions): checked before reuse,
moved aside and rebuilt when damaged, one line naming the folder either way."""

import os
import subprocess
import sys

import pytest

from kvbench.core import disk_cache


@pytest.fixture()
def kept(tmp_path):
    folder = tmp_path / "inductor"
    (folder / "ab").mkdir(parents=True)
    (folder / "ab" / "kernel.so").write_bytes(b"\x7fELF" + bytes(range(200)))
    (folder / "ab" / "kernel.cpp").write_text("int main() {}\n")
    (folder / "locks").mkdir()
    (folder / "locks" / "ab.lock").write_text("")
    disk_cache.seal(folder)
    return folder


def test_a_sealed_folder_is_reused_as_it_is(kept, capsys):
    assert disk_cache.damage(kept) is None
    assert disk_cache.verified(kept, "inductor") == kept and (kept / "ab" / "kernel.so").exists()
    (kept / "cd").mkdir()
    (kept / "cd" / "new.py").write_text("x = 1\n")  # written since by another cell: not judged
    (kept / "locks" / "ab.lock").write_text("held")  # lock files change as they are taken
    assert disk_cache.damage(kept) is None
    assert capsys.readouterr().err == ""
    assert disk_cache.damage(kept.parent / "never-sealed") is None


@pytest.mark.parametrize(
    "harm,why",
    [
        (lambda f: (f / "ab" / "kernel.so").write_bytes(b"\x7fELF"), "ab/kernel.so changed since it was written"),
        (lambda f: (f / "ab" / "kernel.cpp").unlink(), "ab/kernel.cpp is missing"),
        (
            lambda f: (f / disk_cache.MANIFEST).write_text("{"),
            "its manifest .kvbench-manifest.json is unreadable (JSONDecodeError)",
        ),
    ],
    ids=["truncated", "missing", "manifest"],
)
def test_a_damaged_folder_is_moved_aside_and_named(kept, capsys, harm, why):
    harm(kept)
    assert disk_cache.damage(kept).startswith(why)
    assert disk_cache.verified(kept, "inductor") == kept
    assert not kept.exists()  # its owner rebuilds it in place
    (aside,) = [p for p in kept.parent.iterdir() if p.name.startswith("inductor.damaged-")]
    assert (aside / "ab").is_dir()
    err = capsys.readouterr().err
    assert err == f"kvbench: inductor cache {kept} is damaged ({why}); moved to {aside}, rebuilding\n"


def test_a_damaged_folder_that_cannot_be_moved_is_one_error_naming_it(kept, monkeypatch):
    (kept / "ab" / "kernel.so").write_bytes(b"")

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(src))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(disk_cache.CacheError) as err:
        disk_cache.verified(kept, "CTranslate2 conversion")
    assert str(err.value) == (
        f"CTranslate2 conversion cache {kept} is damaged (ab/kernel.so changed since it was written) and "
        f"cannot be moved aside (Permission denied); remove it and run again"
    )


COMPILE = """
import torch
from kvbench.core import disk_cache
from kvbench.engines.kvbench import inductor_options
with inductor_options(torch.device("cpu")):
    print(torch.compile(lambda x: x * 2 + 1)(torch.ones(8)).sum().item())
disk_cache.seal_inductor()
"""


@pytest.mark.slow
def test_a_damaged_inductor_kernel_is_rebuilt_not_a_failed_compile(tmp_path):
    """Without the check torch loads the truncated kernel and every later compiled cell fails."""
    env = {**os.environ, "KVBENCH_CACHE_DIR": str(tmp_path)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)

    def compile_once():
        return subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, timeout=300)

    first = compile_once()
    assert first.returncode == 0 and first.stdout.strip() == "24.0", first.stderr[-2000:]
    kernels = list((tmp_path / "inductor").rglob("*.so"))
    assert kernels and (tmp_path / "inductor" / disk_cache.MANIFEST).is_file()
    for so in kernels:
        so.write_bytes(so.read_bytes()[:100])
    again = compile_once()
    assert again.returncode == 0 and again.stdout.strip() == "24.0", again.stderr[-2000:]
    assert f"kvbench: inductor cache {tmp_path / 'inductor'} is damaged (" in again.stderr
    assert disk_cache.damage(tmp_path / "inductor") is None  # rebuilt and sealed again


def test_a_manifest_that_cannot_be_written_is_said_in_one_line(tmp_path, capsys):
    folder = tmp_path / "ct2"
    (folder / disk_cache.MANIFEST).mkdir(parents=True)  # in the way of the manifest file
    (folder / "model.bin").write_bytes(b"weights")
    disk_cache.seal(folder)
    assert capsys.readouterr().err.startswith(f"kvbench: cannot seal the cache {folder} (")
    assert disk_cache.damage(folder).startswith("its manifest")  # unreadable: judged damaged, rebuilt
