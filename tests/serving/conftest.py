"""Trained runs on the real beauty subset, shared by the serving tests."""

from __future__ import annotations

import shutil

import pytest

from llmesr.data.artifact import load_dataset
from llmesr.models.config import build_configs
from llmesr.training.trainer import Trainer


def train(data, out, model="llmesr", backbone="sasrec", epochs=2):
    mcfg, tcfg = build_configs("default", backbone, model, {
        "epochs": str(epochs), "patience": "2", "max_len": "30", "sd_teachers": "3"})
    Trainer(data, mcfg, tcfg, out, progress=False, log=lambda *a: None).fit()
    return out


@pytest.fixture(scope="session")
def trained_run(beauty_subset, tmp_path_factory):
    """An LLM-ESR SASRec run (2 epochs). Read-only: tests that add items use ``run_copy``."""
    return train(beauty_subset, tmp_path_factory.mktemp("serving") / "run")


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A private copy of the trained run, which a test may change."""
    return shutil.copytree(trained_run, tmp_path / "run")


@pytest.fixture(scope="session")
def ds(beauty_subset):
    return load_dataset(beauty_subset)


def raw_history(ds, user: int, length: int) -> list[str]:
    """The raw ids of user ``user``'s first ``length`` items."""
    raw = ds.item_table["raw_id"].to_numpy()
    return raw[ds.sequence(user)[:length] - 1].tolist()
