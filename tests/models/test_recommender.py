"""The composed recommender: causality and padding invariance through the dual view and the
cross-attention, the frozen table, the teachers, the paper preset's crop correction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmesr.models.config import build_configs
from llmesr.models.distill import SelfDistillation
from llmesr.models.recommender import SequentialRecommender

N, D = 30, 16


def make(model="llmesr", backbone="sasrec", preset="default", **over):
    rng = np.random.default_rng(0)
    mcfg, _ = build_configs(preset, backbone, model, {k: str(v) for k, v in over.items()})
    mcfg.hidden, mcfg.max_len = 8, 20
    torch.manual_seed(0)
    return SequentialRecommender(mcfg, N, rng.normal(size=(N, D)).astype(np.float32),
                                 rng.normal(size=(N, 8)).astype(np.float32))


def batch(rows, width):
    seq = torch.zeros(len(rows), width, dtype=torch.long)
    pos = torch.zeros_like(seq)
    for b, r in enumerate(rows):
        seq[b, width - len(r):] = torch.tensor(r)
        pos[b, width - len(r):] = torch.arange(1, len(r) + 1)
    return seq, pos


@pytest.mark.parametrize("model,over", [
    ("id", {}), ("llminit", {}), ("llmesr", {}),
    ("llmesr", {"use_cross_attention": True, "share_encoder": True})])   # the paper's views
def test_default_preset_is_causal_through_cross_attention(model, over):
    m = make(model, **over).eval()
    seq, pos = batch([[3, 7, 1, 9, 4, 12]], 6)
    base = m.encode(seq, pos)
    for t in range(5):
        changed = seq.clone()
        changed[0, t + 1:] = torch.tensor([20, 21, 22, 23, 24][: 5 - t])
        out = m.encode(changed, pos)
        assert torch.allclose(out[0, : t + 1], base[0, : t + 1], atol=1e-5), t
        assert not torch.allclose(out[0, -1], base[0, -1])


@pytest.mark.parametrize("backbone", ["sasrec", "bert4rec", "gru4rec"])
def test_default_preset_ignores_left_padding(backbone):
    m = make("llmesr", backbone).eval()
    short = batch([[3, 7, 1, 9]], 4)
    long = batch([[3, 7, 1, 9]], 11)
    a, b = m.encode(*short), m.encode(*long)
    assert torch.allclose(a[0], b[0, -4:], atol=1e-5)


def test_paper_preset_is_bidirectional_and_crop_exact():
    m = make("llmesr", "sasrec", "paper").eval()
    seq, pos = batch([[3, 7, 1, 9, 4, 12]], 6)
    base = m.encode(seq, pos)
    changed = seq.clone()
    changed[0, -1] = 20
    assert not torch.allclose(m.encode(changed, pos)[0, 0], base[0, 0])  # looks ahead
    # cropping to the batch's longest history equals the paper's fixed length (max_len)
    full = m.encode(*batch([[3, 7, 1, 9, 4, 12]], m.cfg.max_len))
    assert torch.allclose(base[0], full[0, -6:], atol=1e-5)


@pytest.mark.parametrize("model", ["id", "llmesr"])
def test_paper_gru_is_crop_exact_with_gradients(model):
    """The paper's GRU runs over the padding; cropping replays the padded steps (from a
    padded column's input, which after the cross-attention depends on the row)."""
    m = make(model, "gru4rec", "paper").train()
    rows = [[3, 7, 1, 9, 4, 12], [5], [], [8, 2, 6]]

    def run(width):
        m.zero_grad()
        u = m.user_state(*batch(rows, width))
        (u ** 2).sum().backward()
        return u.detach(), {n: p.grad.clone() for n, p in m.named_parameters()
                            if p.grad is not None}

    full, g_full = run(m.cfg.max_len)
    for width in (6, 7, 10):                   # 6: no padded column, one is added
        crop, g_crop = run(width)
        assert torch.allclose(crop, full, atol=1e-6), width
        assert g_crop.keys() == g_full.keys()
        for n in g_full:
            assert (g_full[n] - g_crop[n]).norm() <= 1e-5 * g_full[n].norm(), (width, n)
    states = m.encode(*batch(rows, 6))
    assert states.shape == (4, 6, m.state_dim)
    assert torch.allclose(states, m.encode(*batch(rows, m.cfg.max_len))[:, -6:], atol=1e-6)


def test_frozen_table_is_a_buffer_and_stays_unchanged():
    m = make("llmesr").train()
    before = m.se.llm.clone()
    names = {n for n, _ in m.named_parameters()}
    assert not any("llm" == n.split(".")[-1] for n in names)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=0.1)
    assert all(p is not m.se.llm for g in opt.param_groups for p in g["params"])
    seq, pos = batch([[3, 7, 1, 9], [2, 5]], 4)
    for _ in range(3):
        loss = m.rec_loss(m.encode(seq, pos), torch.roll(seq, -1, 1) * (seq > 0), seq.flip(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(m.se.llm, before)
    unfrozen = make("llmesr", freeze_semantic=False)
    assert any(n.endswith("se.llm") for n, _ in unfrozen.named_parameters())


def test_no_gradient_reaches_the_teachers():
    m = make("llmesr").train()
    seen = []
    original = m.user_state

    def spy(seq, pos, **kw):
        out = original(seq, pos, **kw)
        seen.append((len(seq), torch.is_grad_enabled(), out.requires_grad))
        return out

    m.user_state = spy
    seq, pos = batch([[3, 7, 1, 9], [2, 5]], 4)
    tseq, tpos = batch([[1, 2], [4, 5, 6], [7], [8, 9]], 3)
    loss = SelfDistillation(2, teacher_dropout=False)(m, seq, pos, tseq, tpos)
    loss.backward()
    student, teacher = seen
    assert student == (2, True, True)
    assert teacher == (4, False, False)
    assert m.training  # restored after the teachers ran in eval mode


@pytest.mark.parametrize("loss", ["bce", "ce", "sampled_ce"])
def test_losses_are_finite_and_train(loss):
    torch.manual_seed(0)
    m = make("llmesr", loss=loss).train()
    seq, pos = batch([[3, 7, 1, 9], [2, 5, 8]], 4)
    target = torch.tensor([[7, 1, 9, 4], [0, 5, 8, 11]]) * (seq > 0)
    value = m.rec_loss(m.encode(seq, pos), target, torch.full_like(seq, 13))
    assert torch.isfinite(value) and value.requires_grad


def test_ablation_switches_change_the_architecture():
    assert make("llmesr", use_cross_attention=False).llm2id is None
    assert make("llmesr", share_encoder=False).encoder_se is not None
    assert make("llmesr", use_co_view=False).co is None
    assert make("llmesr", use_se_view=False).se is None
    one = make("llmesr", adapter_layers=1).se.adapter
    assert len(one) == 1
    assert make("llmesr").state_dim == 16 and make("id").state_dim == 8


@pytest.mark.parametrize("preset", ["default", "paper"])
def test_chunked_teachers_equal_one_pass(preset):
    m = make("llmesr", "sasrec", preset).eval()
    rows = [[1, 2], [4, 5, 6, 7, 8, 9, 10, 11], [7], [8, 9, 3], [12, 13, 14, 15, 16]]
    tseq, tpos = batch(rows, 8)
    sd = SelfDistillation(5, teacher_dropout=False, chunk=2)
    assert torch.allclose(sd._teacher_states(m, tseq, tpos), m.user_state(tseq, tpos),
                          atol=1e-5)


@pytest.mark.parametrize("preset", ["default", "paper"])
@pytest.mark.parametrize("model,backbone", [("llmesr", "sasrec"), ("id", "bert4rec"),
                                            ("llmesr", "gru4rec"), ("llminit", "sasrec")])
def test_user_state_is_the_last_encoded_position(preset, model, backbone):
    m = make(model, backbone, preset).eval()
    seq, pos = batch([[1, 2, 3], [4, 5, 6, 7, 8, 9], [7]], 7)
    with torch.no_grad():
        assert torch.allclose(m.user_state(seq, pos), m.encode(seq, pos)[:, -1], atol=1e-5)


def test_co_dropout_swaps_rows_for_their_pca_start_in_training_only():
    m = make("llmesr", co_dropout=0.5)
    with torch.no_grad():
        m.co.embedding.weight.add_(1.0)              # "trained": every row moved from its start
    ids = torch.arange(1, N + 1).repeat(20)
    torch.manual_seed(1)
    out = m.co(ids)
    start = m.co.initial[ids]
    cold = (out == start).all(dim=1)
    assert 0.35 < cold.float().mean() < 0.65          # about half the lookups, per lookup
    assert torch.equal(out[~cold], m.co.embedding.weight[ids][~cold])
    out.sum().backward()                              # gradients reach only the warm lookups
    assert m.co.embedding.weight.grad is not None
    m.eval()
    assert torch.equal(m.co(ids), m.co.embedding.weight[ids])
    assert "co.initial" not in m.state_dict()         # not part of the saved weights
    for bad, msg in (({"co_dropout": 1.0}, "in \\[0, 1\\)"),
                     ({"co_dropout": 0.2, "co_init": "random"}, "needs model llminit")):
        with pytest.raises(Exception, match=msg):
            make("llmesr", **bad)
    with pytest.raises(Exception, match="needs model llminit"):
        make("id", co_dropout=0.2)
