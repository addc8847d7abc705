"""RLMRec-Con's alignment loss against a hand computation, and the model it trains."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmesr.models.config import ModelConfig
from llmesr.models.recommender import SequentialRecommender
from llmesr.models.rlmrec import cosine_info_nce


def test_cosine_info_nce_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    tau = 0.5
    # cos: a0.b0 = 1, a0.b1 = 1/sqrt2, a1.b0 = 0, a1.b1 = 1/sqrt2
    c = 1 / math.sqrt(2)
    l0 = -1 / tau + math.log(math.exp(1 / tau) + math.exp(c / tau))
    l1 = -c / tau + math.log(math.exp(0.0) + math.exp(c / tau))
    assert float(cosine_info_nce(a, b, tau)) == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_align_loss_is_the_two_in_batch_terms():
    rng = np.random.default_rng(0)
    n_items, h, d = 20, 8, 12
    llm = rng.normal(size=(n_items, d)).astype(np.float32)
    torch.manual_seed(0)
    m = SequentialRecommender(ModelConfig(model="rlmrec", hidden=h, layers=1, max_len=10,
                                          rlmrec_tau=0.3), n_items, llm=llm)
    users = rng.normal(size=(5, d)).astype(np.float32)
    m.set_user_profiles(users)
    states = torch.randn(3, h)
    rows = torch.tensor([4, 0, 2])
    items = torch.tensor([[0, 3, 5], [5, 7, 0], [1, 3, 3]])
    got = m.align_loss(states, rows, items)
    ids = torch.tensor([1, 3, 5, 7])                 # distinct, padding left out
    want = (cosine_info_nce(states, m.align.mlp(torch.from_numpy(users)[rows]), 0.3)
            + cosine_info_nce(m.co(ids), m.align.mlp(torch.from_numpy(llm)[ids - 1]), 0.3))
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    got.backward()
    assert m.co.embedding.weight.grad is not None
    assert m.align.mlp[0].weight.grad is not None
    # inference is the backbone alone: the candidates are the ID rows
    assert m.item_embeddings().shape == (n_items + 2, h) and m.se is None
    # the profiles are not saved with the weights
    assert not any("profiles" in k for k in m.state_dict())
