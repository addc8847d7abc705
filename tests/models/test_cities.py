"""CITIES (llmesr.models.cities): contexts, the head/tail split, the positional encodings,
and the stage that replaces only tail-item rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmesr.models import cities
from llmesr.models.cities import SIDE, WIDTH, Contexts, infer_tail_items, sinusoid, split_items


def _view():
    # two users; training parts [1 2 3 1] and [2 1 4]; the flat log has 2 held-out items each
    items = np.array([1, 2, 3, 1, 9, 9, 2, 1, 4, 9, 9])
    return items, np.array([0, 6]), np.array([4, 3])


def test_contexts_are_the_windows_around_each_training_occurrence():
    items, starts, lens = _view()
    ctx = Contexts.build(items, starts, lens, num_items=9)
    # training counts: item 1 three times, 2 twice, 3 and 4 once; 9 (held out) never
    assert ctx.train_counts[1:5].tolist() == [3, 2, 1, 1] and ctx.train_counts[9] == 0
    assert ctx.n_contexts(np.array([1, 2, 3, 4, 9])).tolist() == [3, 2, 1, 1, 0]
    w = ctx.windows(np.arange(ctx.ptr[3], ctx.ptr[4]))        # item 3 at t = 2 of user 0
    assert w.shape == (1, WIDTH)
    assert w[0, SIDE - 2:SIDE + 2].tolist() == [1, 2, 3, 1]   # left, centre (itself), right
    assert (w[0, :SIDE - 2] == 0).all() and (w[0, SIDE + 2:] == 0).all()
    # item 4 ends user 1's training part: nothing of the held-out items on its right
    w4 = ctx.windows(np.arange(ctx.ptr[4], ctx.ptr[5]))
    assert w4[0, SIDE - 2:SIDE + 1].tolist() == [2, 1, 4] and (w4[0, SIDE + 1:] == 0).all()


def test_a_context_needs_more_than_two_items():
    items = np.array([5, 6, 7, 7, 7])          # user 0: [5 6] (a pair), user 1 held out
    ctx = Contexts.build(items, np.array([0, 2]), np.array([2, 1]), num_items=7)
    assert ctx.n_contexts(np.array([5, 6, 7])).tolist() == [0, 0, 0]


def test_split_uses_the_method_s_own_threshold():
    items, starts, lens = _view()
    ctx = Contexts.build(items, starts, lens, num_items=9)
    head, val, tail = split_items(ctx, head_count=1, rng=np.random.default_rng(0))
    assert sorted([*head, *val]) == [1, 2] and val.size == 0     # fewer than 20: none held out
    assert tail.tolist() == [3, 4]                               # 9 never in training: kept


def test_sinusoid_and_the_official_divisor_bug():
    pe = sinusoid(WIDTH, 8) * math.sqrt(8)
    assert torch.allclose(pe[3, 2], torch.tensor(math.sin(3 / 10000 ** (2 / 8))))
    bug = sinusoid(WIDTH, 8, fixed=False) * math.sqrt(8)
    # 10000**(2i)/d: only the first frequency survives (sin p*d, cos p*d), the rest are 0 / 1
    assert torch.allclose(bug[3, 0], torch.tensor(math.sin(3 * 8.0)))
    assert torch.allclose(bug[:, 4], torch.zeros(WIDTH), atol=1e-6)
    assert torch.allclose(bug[:, 5], torch.ones(WIDTH), atol=1e-6)


def _synthetic(num_items=60, users=300, seed=0):
    """Items 1-40 frequent, 41-60 rare; each user's training part 10 items."""
    rng = np.random.default_rng(seed)
    parts = []
    for u in range(users):
        s = rng.integers(1, 41, size=10)
        if u % 10 == 0:
            s[5] = 41 + (u // 10) % 20          # one rare item now and then
        parts.append(np.concatenate([s, [1, 2]]))   # two held-out items
    items = np.concatenate(parts)
    starts = np.arange(users) * 12
    return Contexts.build(items, starts, np.full(users, 10), num_items)


def test_stage_replaces_only_tail_rows():
    ctx = _synthetic()
    table = torch.randn(62, 16)
    new, info = infer_tail_items(table, ctx, head_count=5, epochs=3, patience=3,
                                 log=lambda *a: None, seed=1)
    changed = (new != table).any(dim=1)
    tail = set(split_items(ctx, 5, np.random.default_rng(0))[2].tolist())
    assert tail == set(range(41, 61)) and info["replaced"] == 20
    assert set(torch.nonzero(changed).ravel().tolist()) == tail
    # the head rows, padding and mask rows are untouched
    assert torch.equal(new[:41], table[:41]) and torch.equal(new[61], table[61])
    assert info["epochs"] == 3 and info["valid_mse"] is not None


def test_matched_norms_keep_f_s_directions_and_the_old_norms():
    ctx = _synthetic()
    table = torch.randn(62, 16)
    plain, _ = infer_tail_items(table, ctx, epochs=1, log=lambda *a: None, seed=1)
    matched, _ = infer_tail_items(table, ctx, epochs=1, log=lambda *a: None, seed=1,
                                  match_norm=True)
    tail = slice(41, 61)
    torch.testing.assert_close(matched[tail].norm(dim=1), table[tail].norm(dim=1))
    cos = torch.nn.functional.cosine_similarity(matched[tail], plain[tail], dim=1)
    torch.testing.assert_close(cos, torch.ones(20))
    assert torch.equal(matched[:41], table[:41])


def test_stage_is_seeded_and_learns():
    ctx = _synthetic()
    table = torch.randn(62, 16)
    a, ia = infer_tail_items(table, ctx, epochs=2, log=lambda *a: None, seed=3)
    b, ib = infer_tail_items(table, ctx, epochs=2, log=lambda *a: None, seed=3)
    assert torch.equal(a, b) and ia == ib
    # restore_best keeps the best validation epoch; the last one otherwise
    _, last = infer_tail_items(table, ctx, epochs=4, patience=10, restore_best=False,
                               log=lambda *a: None, seed=3)
    assert last["epochs"] == 4


def test_nothing_to_infer_leaves_the_table():
    items, starts, lens = _view()
    ctx = Contexts.build(items, starts, lens, num_items=9)
    table = torch.randn(11, 8)
    new, info = infer_tail_items(table, ctx, head_count=100, log=lambda *a: None)
    assert torch.equal(new, table) and info["replaced"] == 0


def test_heads_must_divide_hidden():
    with pytest.raises(Exception, match="divisible"):
        cities.ContextInference(torch.randn(5, 6), torch.zeros(6), heads=4)


def test_cropped_groups_equal_the_full_width_encoder():
    """forward() encodes each context cropped to its group's reach; the full 49 slots with
    the padding masked give the same embedding."""
    ctx = _synthetic()
    torch.manual_seed(0)
    table = torch.randn(62, 16)
    f = cities.ContextInference(table, table[1:61].mean(0)).eval()
    c = torch.as_tensor(ctx.sample(np.arange(1, 41), 3, np.random.default_rng(0)))
    c[0, 0, :] = 0
    c[0, 0, SIDE] = 1                          # a context with nothing around its centre
    with torch.no_grad():
        got = f(c)
        flat = c.reshape(-1, WIDTH)
        x = table[flat]
        x[:, SIDE] = f.mask
        x = x * f.w_pos[:, None] + f.pe
        pad = flat == 0
        pad[:, SIDE] = False
        h = f.encoder(x, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).float()
        pooled = ((h * keep).sum(1) / keep.sum(1)).view(40, 3, -1)
        want = f.out(f.aggregator(pooled).mean(1))
    assert torch.allclose(got, want, atol=1e-5)
