"""Environment settings: each parsed before anything is built, a bad one in one line naming it."""

import json
import os

import pytest

from kvbench.cli import main
from kvbench.core import env_vars

FAST = ["--model", "tiny", "--prompt-len", "8", "--new-tokens", "4", "--warmup", "0", "--iters", "1"]


def test_probe_since_is_epoch_seconds_or_unset(monkeypatch):
    monkeypatch.delenv(env_vars.PROBE_SINCE, raising=False)
    assert env_vars.probe_since() is None
    monkeypatch.setenv(env_vars.PROBE_SINCE, "")  # empty counts as unset
    assert env_vars.probe_since() is None
    monkeypatch.setenv(env_vars.PROBE_SINCE, "1765000000.5")
    assert env_vars.probe_since() == 1765000000.5
    for bad in ("yesterday", "nan", "inf", "-3"):
        monkeypatch.setenv(env_vars.PROBE_SINCE, bad)
        with pytest.raises(env_vars.SettingError, match=rf"^KVBENCH_PROBE_SINCE: '{bad}' is not a time in epoch"):
            env_vars.check()


def test_cache_dir_defaults_to_the_home_cache_and_must_be_a_writable_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(env_vars.CACHE_DIR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert env_vars.cache_dir() == tmp_path / ".cache" / "kvbench"
    monkeypatch.setenv(env_vars.CACHE_DIR, str(tmp_path / "new" / "cache"))
    env_vars.check()  # made when missing
    assert (tmp_path / "new" / "cache").is_dir() and list((tmp_path / "new" / "cache").iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_text("")
    for bad in (blocker, blocker / "below", "/proc/kvbench-cache"):
        monkeypatch.setenv(env_vars.CACHE_DIR, str(bad))
        with pytest.raises(env_vars.SettingError, match=rf"^KVBENCH_CACHE_DIR: '{bad}' is not a "):
            env_vars.check()


def test_free_text_settings_are_read_in_one_place(monkeypatch):
    for name in env_vars.CONTAINER_IMAGE:
        monkeypatch.delenv(name, raising=False)
    assert env_vars.container_image() is None
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/b.sif")
    assert env_vars.container_image() == "/images/b.sif"
    monkeypatch.setenv("KVBENCH_CONTAINER_IMAGE", "kvbench:1")  # ours first
    assert env_vars.container_image() == "kvbench:1"


@pytest.mark.parametrize(
    "name,value",
    [(env_vars.PROBE_SINCE, "last tuesday"), (env_vars.CACHE_DIR, "/proc/kvbench")],
)
def test_a_bad_setting_stops_a_cell_before_it_builds_anything(monkeypatch, tmp_path, capsys, name, value):
    monkeypatch.setenv(name, value)
    out = tmp_path / "cell.json"
    assert main(["cell", *FAST, "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kvbench cell: error: {name}: '{value}' ") and err.count("\n") == 1, err
    assert "built" not in err and not out.exists()


def test_an_empty_setting_is_an_unset_one(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(env_vars.PROBE_SINCE, "")
    out = tmp_path / "cell.json"
    assert main(["cell", *FAST, "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["analytic"]["probe_reused"] is False  # unset: measured afresh
    assert os.environ[env_vars.PROBE_SINCE] == ""
