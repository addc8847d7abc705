"""Trained runs on the real beauty subset, shared by the serving tests."""

from __future__ import annotations

import shutil

import pytest

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
