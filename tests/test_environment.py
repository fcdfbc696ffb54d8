"""The record's environment: the facts a timing depends on, the peer's package version among them."""

from importlib import metadata

import pytest
import torch

from kvbench.measure.environment import collect, engine_version


def test_ours_names_no_peer_package_and_a_peer_names_its_own():
    assert collect(torch.device("cpu"))["engine_version"] is None
    pytest.importorskip("transformers")
    assert engine_version("hf") == f"transformers {metadata.version('transformers')}"
    assert collect(torch.device("cpu"), "hf")["engine_version"].startswith("transformers ")


def test_a_peer_not_installed_is_none(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert engine_version("llamacpp") is None
