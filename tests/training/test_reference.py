"""The fast training step against the original code's computation (training/reference.py).

With dropout off a step has no randomness but the batch, so cropping, length groups, the
closed-form padded keys, the GRU's padded-step replay, teachers without autograd and the
reused GRU student must give the reference's losses and updates up to float rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmesr.models.config import build_configs
from llmesr.training.reference import pad_batch, reference_step, state_vector, update_gap
from llmesr.training.trainer import Trainer

pytestmark = pytest.mark.shared_data


def _pair(data, tmp_path, preset, backbone, model, **over):
    settings = {"epochs": "1", "max_len": "40", "sd_teachers": "3", "dropout": "0",
                **{k: str(v) for k, v in over.items()}}
    mcfg, tcfg = build_configs(preset, backbone, model, settings)
    return [Trainer(data, mcfg, tcfg, tmp_path / name, overwrite=True, progress=False,
                    log=lambda *a: None) for name in ("fast", "ref")]


@pytest.mark.parametrize("preset", ["paper", "default"])
@pytest.mark.parametrize("backbone,model", [("sasrec", "llmesr"), ("bert4rec", "llmesr"),
                                            ("gru4rec", "llmesr"), ("gru4rec", "id")])
def test_fast_step_equals_the_reference_step(beauty_subset, tmp_path, preset, backbone,
                                             model):
    fast, ref = _pair(beauty_subset, tmp_path, preset, backbone, model)
    start = state_vector(fast.model)
    assert torch.equal(start, state_vector(ref.model))
    samples = fast.builder.epoch_samples()
    widths = []
    fast.model.train()
    ref.model.train()
    for i in range(3):
        batch = fast.builder.train_batch(samples[i * 128:(i + 1) * 128])
        widths += [w for _, w in fast._chunks(torch.from_numpy(batch["seq"]))]
        a, b = fast._step(batch), reference_step(ref, batch)
        assert a.keys() == b.keys()
        for part in a:
            assert abs(a[part] - b[part]) <= 1e-5 * max(abs(b[part]), 1e-3), (i, part)
    # Adam divides by the gradient's running scale: rounding noise in a near-zero gradient
    # moves a parameter by up to lr, so updates agree to about 1e-3 of their size, not 1e-6
    assert update_gap(start, fast.model, ref.model) < 1e-2
    assert min(widths) < 10          # the fast path did crop (length groups)


def test_dropout_makes_steps_differ_and_pad_batch_pads(beauty_subset, tmp_path):
    fast, ref = _pair(beauty_subset, tmp_path, "paper", "sasrec", "llmesr", dropout=0.5)
    batch = fast.builder.train_batch(fast.builder.epoch_samples()[:64])
    fast.model.train()
    ref.model.train()
    assert fast._step(batch)["rec"] != reference_step(ref, batch)["rec"]
    padded = pad_batch(batch, 40)
    assert padded["seq"].shape == (64, 40) and padded["teacher_seq"].shape[1] == 40
    w = batch["seq"].shape[1]
    assert np.array_equal(padded["seq"][:, -w:], batch["seq"])
    assert not padded["seq"][:, :40 - w].any()
    assert padded["rows"] is batch["rows"]
