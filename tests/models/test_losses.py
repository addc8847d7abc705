"""The objectives checked against hand-computed values (llmesr.models.losses)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmesr.models import losses
from llmesr.models.config import ModelConfig
from llmesr.models.recommender import SequentialRecommender


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_bce_hand_computed():
    pos = torch.tensor([2.0, -1.0])
    neg = torch.tensor([0.5, 1.5])
    want = -(math.log(_sig(2.0)) + math.log(_sig(-1.0))) / 2 \
        - (math.log(1 - _sig(0.5)) + math.log(1 - _sig(1.5))) / 2
    assert float(losses.bce(pos, neg)) == pytest.approx(want, rel=1e-6)


def test_full_softmax_ce_hand_computed():
    # two items (rows 1, 2), padding row 0 and mask row 3 must not count
    table = torch.tensor([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])
    u = torch.tensor([[2.0, 1.0]])
    # logits: item1 = 2, item2 = 1; target item 2
    want = -1.0 + math.log(math.exp(2.0) + math.exp(1.0))
    got = losses.full_softmax_ce(u, table, torch.tensor([2]), num_items=2)
    assert float(got) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("budget", [1 << 24, 7, 1])    # kept softmax; recomputed row blocks
# float32: the reused workspaces; float64: the freshly allocated blocks
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_full_softmax_ce_equals_materialised(budget, dtype):
    g = torch.Generator().manual_seed(0)
    n, items, h = 13, 11, 5
    u0 = torch.randn(n, h, generator=g, dtype=dtype)
    t0 = torch.randn(items + 2, h, generator=g, dtype=dtype)
    target = torch.randint(1, items + 1, (n,), generator=g)
    u1, t1 = u0.clone().requires_grad_(), t0.clone().requires_grad_()
    got = losses.full_softmax_ce(u1, t1, target, items, budget=budget)
    got.backward()
    u2, t2 = u0.clone().requires_grad_(), t0.clone().requires_grad_()
    logits = u2 @ t2[1:items + 1].T
    want = F.cross_entropy(logits, target - 1)
    want.backward()
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-6)
    torch.testing.assert_close(u1.grad, u2.grad, rtol=1e-5, atol=1e-6, check_dtype=False)
    torch.testing.assert_close(t1.grad, t2.grad, rtol=1e-5, atol=1e-6, check_dtype=False)
    assert float(t1.grad[0].abs().sum()) == 0 and float(t1.grad[-1].abs().sum()) == 0


def test_full_softmax_ce_losses_in_flight_keep_their_own_blocks():
    """Several CE losses before one backward (view_aux_loss) must not share a workspace,
    and a block given back is reused by the next step."""
    g = torch.Generator().manual_seed(1)
    n, items, h = 9, 17, 4
    base_u = torch.randn(n, h, generator=g)
    base_t = torch.randn(items + 2, h, generator=g)
    target = torch.randint(1, items + 1, (n,), generator=g)
    scales = (1.0, -2.0, 0.5)

    def run(fused: bool):
        u, t = base_u.clone().requires_grad_(), base_t.clone().requires_grad_()
        if fused:
            total = sum(losses.full_softmax_ce(u * c, t, target, items) for c in scales)
        else:
            total = sum(F.cross_entropy((u * c) @ t[1:items + 1].T, target - 1) for c in scales)
        total.backward()
        return float(total.detach()), u.grad, t.grad

    got, want = run(True), run(False)
    assert got[0] == pytest.approx(want[0], rel=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got[2], want[2], rtol=1e-4, atol=1e-6)
    pool = losses._WORKSPACES.free[torch.device("cpu")]
    assert len(pool) >= len(scales)            # each loss's block came back
    before = [b.data_ptr() for b in pool]
    run(True)
    assert sorted(b.data_ptr() for b in pool) == sorted(before)   # reused, none new


def test_sampled_softmax_logq_formula():
    pos = torch.tensor([1.0])
    neg = torch.tensor([[0.5, 2.0, -1.0]])
    q = torch.tensor([0.0, 0.5, 0.3, 0.2])       # rows 1..3
    pos_ids, negs, m = torch.tensor([1]), torch.tensor([2, 3, 1]), 3
    hits = negs[None, :] == pos_ids[:, None]         # the third negative is the target
    got = losses.sampled_softmax(pos, neg, hits, losses.log_expected_counts(q, pos_ids, m),
                                 losses.log_expected_counts(q, negs, m))
    # by hand: logit - log(M Q); the hit removed
    p = 1.0 - math.log(3 * 0.5)
    n1 = 0.5 - math.log(3 * 0.3)
    n2 = 2.0 - math.log(3 * 0.2)
    want = -p + math.log(math.exp(p) + math.exp(n1) + math.exp(n2))
    assert float(got) == pytest.approx(want, rel=1e-6)
    # without the correction: the plain sampled softmax
    plain = losses.sampled_softmax(pos, neg, hits)
    assert float(plain) == pytest.approx(-1.0 + math.log(math.e + math.exp(0.5) + math.exp(2.0)),
                                         rel=1e-6)


def test_gbce_beta_and_hand_value():
    assert losses.gbce_beta(256, 1001, 0.0) == pytest.approx(1.0)
    assert losses.gbce_beta(256, 1001, 1.0) == pytest.approx(256 / 1000)
    beta = losses.gbce_beta(4, 11, 0.5)          # alpha = 0.4: 0.4 * (0.5 * (1 - 2.5) + 2.5)
    assert beta == pytest.approx(0.4 * (0.5 * -1.5 + 2.5))
    pos = torch.tensor([0.3])
    neg = torch.tensor([[1.0, -2.0]])
    valid = torch.tensor([[True, False]])
    want = -(beta * math.log(_sig(0.3)) + math.log(1 - _sig(1.0)))
    assert float(losses.gbce(pos, neg, beta, valid)) == pytest.approx(want, rel=1e-6)


def test_gbce_reduces_to_bce():
    g = torch.Generator().manual_seed(1)
    pos, neg = torch.randn(20, generator=g), torch.randn(20, generator=g)
    beta = losses.gbce_beta(1, 500, 0.0)
    assert float(losses.gbce(pos, neg[:, None], beta)) == pytest.approx(
        float(losses.bce(pos, neg)), rel=1e-6)


def _model(loss: str, **kw) -> SequentialRecommender:
    cfg = ModelConfig(model="id", backbone="sasrec", hidden=8, layers=1, max_len=10,
                      loss=loss, sampled_negatives=5, **kw)
    m = SequentialRecommender(cfg, num_items=30)
    m.set_target_counts(np.arange(30))
    return m


@pytest.mark.parametrize("loss,sampler", [("bce", "uniform"), ("ce", "uniform"),
                                          ("sampled_ce", "uniform"),
                                          ("sampled_ce", "popularity"),
                                          ("sampled_ce", "in_batch"), ("gbce", "uniform"),
                                          ("gbce", "popularity")])
def test_model_losses_train(loss, sampler):
    torch.manual_seed(0)
    m = _model(loss, negative_sampler=sampler)
    u = torch.randn(6, 8, requires_grad=True)
    pos = torch.tensor([1, 2, 3, 3, 29, 30])
    value = m.rec_loss_flat(u, pos, torch.tensor([4, 5, 6, 7, 8, 9]))
    assert torch.isfinite(value)
    value.backward()
    assert u.grad is not None and float(u.grad.abs().sum()) > 0


def test_model_ce_matches_materialised():
    m = _model("ce")
    u = torch.randn(4, 8)
    pos = torch.tensor([1, 5, 30, 7])
    logits = u @ m.item_embeddings()[1:31].T
    want = F.cross_entropy(logits, pos - 1)
    assert float(m.rec_loss_flat(u, pos, pos).detach()) == pytest.approx(float(want.detach()),
                                                                       rel=1e-5)


def test_in_batch_masks_same_item_and_corrects_with_q():
    m = _model("sampled_ce", negative_sampler="in_batch")
    u = torch.randn(3, 8)
    pos = torch.tensor([4, 4, 9])
    e = m.item_embeddings(pos)
    logits = u @ e.T                                  # (3, 3): diagonal = positives
    lq = torch.log(m.target_q[pos] * 3)
    rows = []
    for i in range(3):
        keep = [j for j in range(3) if int(pos[j]) != int(pos[i])]
        row = [float(logits[i, i] - lq[i])] + [float(logits[i, j] - lq[j]) for j in keep]
        rows.append(-row[0] + math.log(sum(math.exp(x) for x in row)))
    assert float(m.rec_loss_flat(u, pos, pos)) == pytest.approx(sum(rows) / 3, rel=1e-5)


def test_popularity_q_smoothed_and_normalised():
    m = _model("sampled_ce", negative_sampler="popularity")
    q = m.target_q
    assert float(q[0]) == 0 and float(q[-1]) == 0
    assert float(q.sum()) == pytest.approx(1.0, rel=1e-5)
    assert float(q[1]) == pytest.approx(1 / (np.arange(30) + 1).sum(), rel=1e-5)


def test_gbce_needs_catalogue_negatives():
    from llmesr.errors import LlmesrError
    with pytest.raises(LlmesrError, match="gbce"):
        ModelConfig(loss="gbce", negative_sampler="in_batch").validate()


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_view_aux_loss_adds_each_views_own_loss(loss):
    rng = np.random.default_rng(0)
    n_items, h = 30, 8
    kw = dict(model="llmesr", backbone="sasrec", hidden=h, layers=1, max_len=10, loss=loss)
    llm = rng.normal(size=(n_items, 12)).astype(np.float32)
    pca = rng.normal(size=(n_items, h)).astype(np.float32)
    torch.manual_seed(0)
    plain = SequentialRecommender(ModelConfig(**kw), n_items, llm=llm, pca=pca)
    torch.manual_seed(0)
    aux = SequentialRecommender(ModelConfig(**kw, view_aux_loss=0.5), n_items, llm=llm, pca=pca)
    u = torch.randn(4, 2 * h)
    pos, neg = torch.tensor([1, 5, 30, 7]), torch.tensor([2, 6, 3, 8])
    e_co, e_se = aux.co.all(), aux.se.all()

    def own(u_part, table):
        if loss == "ce":
            return F.cross_entropy(u_part @ table[1:n_items + 1].T, pos - 1)
        return losses.bce((u_part * table[pos]).sum(-1), (u_part * table[neg]).sum(-1))

    joint = float(plain.rec_loss_flat(u, pos, neg))
    want = joint + 0.5 * float(own(u[:, :h], e_co) + own(u[:, h:], e_se))
    assert float(aux.rec_loss_flat(u, pos, neg)) == pytest.approx(want, rel=1e-5)
    assert float(aux.rec_loss_flat(u, pos, neg)) > joint


def _gate_models(n_items=30, h=8):
    rng = np.random.default_rng(0)
    kw = dict(model="llmesr", backbone="sasrec", hidden=h, layers=1, max_len=10, loss="ce")
    llm = rng.normal(size=(n_items, 12)).astype(np.float32)
    pca = rng.normal(size=(n_items, h)).astype(np.float32)
    torch.manual_seed(0)
    plain = SequentialRecommender(ModelConfig(**kw), n_items, llm=llm, pca=pca)
    torch.manual_seed(0)
    gated = SequentialRecommender(ModelConfig(**kw, se_pop_gate=True), n_items, llm=llm,
                                  pca=pca)
    counts = rng.integers(0, 50, size=n_items)
    for m in (plain, gated):
        m.set_target_counts(counts)
    return plain, gated, counts


def test_pop_gate_starts_at_one_and_scales_the_semantic_rows():
    plain, gated, counts = _gate_models()
    h = 8
    # g = 1 at the start: the same candidates as without the gate
    torch.testing.assert_close(gated.item_embeddings(), plain.item_embeddings())
    np.testing.assert_allclose(gated.log_count[1:31].numpy(), np.log1p(counts), rtol=1e-6)
    with torch.no_grad():
        gated.pop_gate.copy_(torch.tensor([0.3, -0.4]))
    g = torch.nn.functional.softplus(0.3 - 0.4 * torch.log1p(torch.as_tensor(
        counts, dtype=torch.float32)))
    ids = torch.arange(1, 31)
    e = gated.item_embeddings(ids)
    torch.testing.assert_close(e[:, :h], plain.item_embeddings(ids)[:, :h])   # co untouched
    torch.testing.assert_close(e[:, h:], plain.se.all()[1:31] * g[:, None])
    assert torch.equal(plain.item_gate(ids), torch.ones(30))            # off: ones
    rare, common = int(np.argmin(counts)), int(np.argmax(counts))
    assert float(gated.item_gate(ids)[rare]) > float(gated.item_gate(ids)[common])
    # the gate learns: the CE loss sends it gradients; its counts are saved with the weights
    u = torch.randn(4, 2 * h)
    gated.rec_loss_flat(u, torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])).backward()
    assert gated.pop_gate.grad is not None and float(gated.pop_gate.grad.abs().sum()) > 0
    assert "log_count" in gated.state_dict() and "log_count" not in plain.state_dict()


def test_se_sum_weight_scales_only_the_joint_score_and_learns_from_it_alone():
    rng = np.random.default_rng(1)
    n_items, h = 30, 8
    llm = rng.normal(size=(n_items, 12)).astype(np.float32)
    pca = rng.normal(size=(n_items, h)).astype(np.float32)
    models = {}
    for on, aux in ((False, 1.0), (True, 1.0), (True, 0.0)):
        torch.manual_seed(0)
        models[on, aux] = SequentialRecommender(ModelConfig(
            model="llmesr", backbone="sasrec", hidden=h, layers=1, max_len=10, loss="ce",
            use_cross_attention=False, share_encoder=False, view_aux_loss=aux,
            se_sum_weight=on), n_items, llm=llm, pca=pca)
    plain, weighted = models[False, 1.0], models[True, 1.0]
    # w = 1 at the start: the same candidates
    torch.testing.assert_close(weighted.item_embeddings(), plain.item_embeddings())
    with torch.no_grad():
        weighted.se_log_weight.fill_(math.log(0.5))
    ids = torch.arange(1, n_items + 1)
    e = weighted.item_embeddings(ids)
    torch.testing.assert_close(e[:, :h], plain.item_embeddings(ids)[:, :h])
    torch.testing.assert_close(e[:, h:], 0.5 * plain.se_rows(ids))
    torch.testing.assert_close(weighted.se_rows(ids), plain.se_rows(ids))   # the view's own
    # the view's own loss leaves w alone: w's gradient is the joint loss's, with or without it
    u = torch.randn(5, 2 * h)
    pos, neg = torch.tensor([1, 2, 3, 4, 5]), torch.tensor([6, 7, 8, 9, 10])
    grads = []
    for m in (weighted, models[True, 0.0]):
        with torch.no_grad():
            m.se_log_weight.fill_(math.log(0.5))
        m.rec_loss_flat(u, pos, neg).backward()
        grads.append(float(m.se_log_weight.grad))
    assert grads[0] != 0 and grads[0] == pytest.approx(grads[1], rel=1e-6)
    assert "se_log_weight" in weighted.state_dict() and plain.se_log_weight is None


def test_pop_gate_new_items_count_zero():
    _, gated, _ = _gate_models()
    new = gated.append_items(torch.randn(2, 12), torch.randn(2, 8))
    assert len(gated.log_count) == gated.table_rows
    assert float(gated.log_count[list(new)].abs().sum()) == 0


@pytest.mark.parametrize("a_co,a_se,weighted", [(1.0, 1.0, True), (0.0, 1.0, True),
                                                 (0.5, 0.0, False), (0.0, 0.0, False)])
@pytest.mark.parametrize("budget", [losses.CE_BLOCK_ELEMENTS, 64])   # fused, and the fallback
def test_two_view_ce_equals_the_three_materialised_losses(a_co, a_se, weighted, budget):
    g = torch.Generator().manual_seed(3)
    n, n_items, h = 37, 50, 8
    tensors = [torch.randn(n, h, generator=g, dtype=torch.float64),
               torch.randn(n, h, generator=g, dtype=torch.float64),
               torch.randn(n_items + 2, h, generator=g, dtype=torch.float64),
               torch.randn(n_items + 2, h, generator=g, dtype=torch.float64),
               torch.tensor(-0.7, dtype=torch.float64)]
    target = torch.randint(1, n_items + 1, (n,), generator=g)

    def reference(u_co, u_se, co, se, log_w):
        lc, ls = u_co @ co[1:n_items + 1].T, u_se @ se[1:n_items + 1].T
        joint = lc + (log_w.exp() if weighted else 1.0) * ls
        return (F.cross_entropy(joint, target - 1) + a_co * F.cross_entropy(lc, target - 1)
                + a_se * F.cross_entropy(ls, target - 1))

    want_in = [t.clone().requires_grad_() for t in tensors]
    want = reference(*want_in)
    want.backward()
    got_in = [t.float().requires_grad_() for t in tensors]
    got = losses.two_view_ce(*got_in[:4], got_in[4] if weighted else None, target, n_items,
                             a_co, a_se, budget=budget)
    got.backward()
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    for x, y in zip(got_in[:4], want_in[:4]):
        torch.testing.assert_close(x.grad.double(), y.grad, rtol=1e-5, atol=1e-6)
    if weighted:
        assert float(got_in[4].grad) == pytest.approx(float(want_in[4].grad), rel=1e-5)
    else:
        assert got_in[4].grad is None
    # the padding and mask rows are no candidates: no gradient there but as targets
    assert float(got_in[2].grad[[0, n_items + 1]].abs().sum()) == 0


def test_two_view_ce_skips_what_is_frozen_and_keeps_blocks_apart():
    g = torch.Generator().manual_seed(4)
    n, n_items, h = 20, 40, 8
    u_co, co = torch.randn(n, h, generator=g), torch.randn(n_items + 2, h, generator=g)
    u_se = torch.randn(n, h, generator=g, requires_grad=True)
    se = torch.randn(n_items + 2, h, generator=g, requires_grad=True)
    target = torch.randint(1, n_items + 1, (n,), generator=g)
    # two losses in flight (two steps' graphs) each keep their own blocks
    first = losses.two_view_ce(u_co, u_se, co, se, None, target, n_items, 0.0, 1.0)
    second = losses.two_view_ce(u_co, u_se * 2, co, se, None, target, n_items, 0.0, 1.0)
    second.backward()
    g2 = u_se.grad.clone()
    u_se.grad = None
    first.backward()
    ref = [t.detach().clone().requires_grad_() for t in (u_se, se)]
    want = (F.cross_entropy(u_co @ co[1:-1].T + ref[0] @ ref[1][1:-1].T, target - 1)
            + F.cross_entropy(ref[0] @ ref[1][1:-1].T, target - 1))
    want.backward()
    torch.testing.assert_close(u_se.grad, ref[0].grad, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(g2, u_se.grad)
    assert co.grad is None and u_co.grad is None


def test_model_two_view_loss_equals_the_joint_and_each_views_own():
    rng = np.random.default_rng(5)
    n_items, h = 30, 8
    llm = rng.normal(size=(n_items, 12)).astype(np.float32)
    pca = rng.normal(size=(n_items, h)).astype(np.float32)
    m = SequentialRecommender(ModelConfig(
        model="llmesr", backbone="sasrec", hidden=h, layers=1, max_len=10, loss="ce",
        use_cross_attention=False, share_encoder=False, view_aux_loss=0.5,
        se_sum_weight=True), n_items, llm=llm, pca=pca)
    with torch.no_grad():
        m.se_log_weight.fill_(math.log(0.3))
    u = torch.randn(6, 2 * h)
    pos = torch.tensor([1, 2, 3, 30, 5, 6])
    got = m.rec_loss_flat(u, pos, pos)
    e = m.item_embeddings()[1:n_items + 1]
    want = (F.cross_entropy(u @ e.T, pos - 1)
            + 0.5 * F.cross_entropy(u[:, :h] @ m.co.all()[1:n_items + 1].T, pos - 1)
            + 0.5 * F.cross_entropy(u[:, h:] @ m.se_rows()[1:n_items + 1].T, pos - 1))
    assert float(got) == pytest.approx(float(want), rel=1e-5)


@pytest.mark.parametrize("layers,activation", [(2, False), (2, True), (1, False)])
def test_adapter_as_one_linear_map_is_the_two_layers(layers, activation):
    from llmesr.models.views import SemanticView
    rng = np.random.default_rng(6)
    view = SemanticView(rng.normal(size=(20, 12)).astype(np.float32), 20, 8, layers,
                        activation)
    ids = torch.tensor([[0, 3, 5], [7, 20, 21]])
    torch.testing.assert_close(view(ids), view.adapter(view.llm[ids]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(view.all(), view.adapter(view.llm), rtol=1e-5, atol=1e-6)
    # and the same gradients for the adapter's weights
    view.all().square().sum().backward()
    got = [p.grad.clone() for p in view.adapter.parameters()]
    view.zero_grad()
    view.adapter(view.llm).square().sum().backward()
    for a, b in zip(got, view.adapter.parameters()):
        torch.testing.assert_close(a, b.grad, rtol=1e-4, atol=1e-5)
