"""MELT (llmesr.models.melt): the head/tail split, the contexts, the curriculum weights, the
two branch losses against hand-computed values, and the tail-user correction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmesr.models import melt
from llmesr.models.config import ModelConfig
from llmesr.models.melt import ItemContexts, MeltHeads, split_head_tail
from llmesr.models.recommender import SequentialRecommender


def _view():
    # two users; training parts [1 2 3] and [2 4]; the flat log has 2 held-out items each
    items = np.array([1, 2, 3, 9, 9, 2, 4, 9, 9])
    return items, np.array([0, 5]), np.array([3, 2])


def _contexts(ctx: ItemContexts, item: int) -> list[list[int]]:
    idx, _ = ctx.of(np.array([item]))
    return sorted(ctx.flat[ctx.start[k]:ctx.start[k] + ctx.length[k]].tolist() for k in idx)


def test_contexts_of_the_official_code_end_with_the_item():
    ctx = ItemContexts(*_view(), num_items=9, self_item=True)
    # item 2: the prefix [1 2] and the reversed suffix [3 2] (user 0), [2] and [4 2] (user 1)
    assert _contexts(ctx, 2) == [[1, 2], [2], [3, 2], [4, 2]]
    assert _contexts(ctx, 3) == [[1, 2, 3], [3]]
    assert ctx.count(np.array([1, 2, 3, 4, 9])).tolist() == [2, 4, 2, 2, 0]


def test_fixed_contexts_end_just_before_the_item():
    ctx = ItemContexts(*_view(), num_items=9, self_item=False)
    # item 2: the prefix [1] and the reversed suffix [3] (user 0); [4] (user 1, no prefix)
    assert _contexts(ctx, 2) == [[1], [3], [4]]
    assert _contexts(ctx, 1) == [[3, 2]]          # first of its sequence: no prefix
    assert all(2 not in c for c in _contexts(ctx, 2))


def test_a_one_item_sequence_gives_only_its_prefix():
    ctx = ItemContexts(np.array([5, 9, 9]), np.array([0]), np.array([1]), num_items=9,
                       self_item=True)
    assert _contexts(ctx, 5) == [[5]]


def test_sampling_stays_within_each_item_and_its_cap():
    items = np.array([1, 2] * 30 + [3] * 2)
    ctx = ItemContexts(items, np.array([0]), np.array([60]), num_items=3, self_item=True)
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx, seg = ctx.sample(np.array([1, 2]), cap=4, rng=rng)
        assert set(ctx.item[idx[seg == 0]]) == {1} and set(ctx.item[idx[seg == 1]]) == {2}
        per = np.bincount(seg, minlength=2)
        assert (per >= 1).all() and (per <= 4).all()
        assert len(np.unique(idx)) == len(idx)          # without replacement


def test_split_follows_the_pareto_quantiles():
    lens = np.array([1, 2, 3, 4, 10])
    counts = np.array([0, 1, 1, 2, 5, 0])         # item 5 never seen in training
    s = split_head_tail(lens, counts, 0.8)
    assert s.user_thres == pytest.approx(np.quantile(lens, 0.8))
    assert s.item_thres == pytest.approx(np.quantile([1, 1, 2, 5], 0.78))
    assert s.head_users.tolist() == [4]
    assert s.head_items.tolist() == [4] and s.tail_items.tolist() == [1, 2, 3, 5]


def test_curriculum_weights_follow_their_schedule():
    # a user just above the threshold: 0 at the start, 1 at the end of the schedule
    w0 = melt.user_weights(np.array([8, 50]), 7.0, 0, 10, 50)
    assert w0[0] == pytest.approx(0.0) and w0[1] == pytest.approx(
        abs(math.sin(math.pi / (2 * 42) * 42)))
    assert melt.user_weights(np.array([8]), 7.0, 10, 10, 50)[0] == pytest.approx(1.0)
    wi = melt.item_weights(np.array([11, 500]), 10.0, 3, 10)
    assert wi[0] == pytest.approx(abs(math.sin(math.pi / 2 * 0.3)))
    # counts are capped at n_i* + 50
    assert wi[1] == pytest.approx(abs(math.sin(math.pi / 2 * 0.3 + math.pi / 100 * 49)))


@torch.no_grad()
def test_branch_losses_against_hand_computed_values():
    torch.manual_seed(0)
    heads = MeltHeads(3)
    few, full = torch.randn(2, 3), torch.randn(2, 3)
    w = torch.tensor([0.5, 2.0])
    wu = heads.W_U(few)
    direct = sum(float(w[k]) * float(((wu[k] - full[k]) ** 2).sum()) for k in range(2)) / 6
    assert float(melt.user_branch_loss(heads, few, full, w, residual=False)) == \
        pytest.approx(direct, rel=1e-5)
    res = sum(float(w[k]) * float(((few[k] + wu[k] - full[k]) ** 2).sum())
              for k in range(2)) / 6
    assert float(melt.user_branch_loss(heads, few, full, w, residual=True)) == \
        pytest.approx(res, rel=1e-5)
    # item branch: item 0 has contexts 0 and 1, item 1 context 2; weight inside the square
    f = torch.randn(3, 3)
    rows = torch.randn(2, 3)
    seg = torch.tensor([0, 0, 1])
    z = f + heads.W_U(f)
    zbar = torch.stack([z[:2].mean(0), z[2]])
    pred = heads.W_I(zbar)
    want = sum(float(((float(w[k]) * (pred[k] - rows[k])) ** 2).sum()) for k in range(2)) / 6
    assert float(melt.item_branch_loss(heads, f, seg, rows, w)) == pytest.approx(want, rel=1e-5)


def test_only_tail_users_get_the_user_branch_correction():
    cfg = ModelConfig(model="melt", backbone="sasrec", hidden=8, heads=1, max_len=6,
                      dropout=0.0)
    model = SequentialRecommender(cfg, num_items=20).eval()
    seq = torch.tensor([[0, 0, 0, 0, 3, 4], [0, 1, 2, 3, 4, 5]])
    pos = torch.tensor([[0, 0, 0, 0, 1, 2], [0, 1, 2, 3, 4, 5]])
    f = model.user_state(seq, pos, raw=True)
    # before stage 2 (threshold -1): nobody is a tail user
    torch.testing.assert_close(model.user_state(seq, pos), f)
    with torch.no_grad():
        model.melt.user_thres.fill_(3.0)
        model.melt.W_U.weight.normal_()
    got = model.user_state(seq, pos)
    torch.testing.assert_close(got[0], f[0] + model.melt.W_U(f[0]))   # 2 items: tail
    torch.testing.assert_close(got[1], f[1])                           # 5 items: head
    assert "melt.user_thres" in model.state_dict()


def test_ridge_fit_recovers_an_affine_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g, dtype=torch.float64)
    w, b = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(3, generator=g,
                                                                           dtype=torch.float64)
    got = melt.ridge_fit(x, x @ w + b, ridge=0.0)
    torch.testing.assert_close(got[:-1], w)
    torch.testing.assert_close(got[-1], b)
    # the penalty shrinks the weights, not the bias
    shrunk = melt.ridge_fit(x, x @ w + b, ridge=10.0)
    assert shrunk[:-1].norm() < w.norm()
