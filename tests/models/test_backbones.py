from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llmesr.errors import LlmesrError
from llmesr.models.backbones import GRUBackbone, TransformerBackbone

D = 16
MODES = [(c, m) for c in (False, True) for m in (False, True)]  # (causal, mask_padded_keys)


def left_padded(lengths: list[int], t: int, d: int = D, garbage: bool = True, seed: int = 0):
    """Random inputs, left padded to t; padded slots hold random garbage (the backbone must cope)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), t, d, generator=g)
    mask = torch.zeros(len(lengths), t, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, t - n:] = True
    if not garbage:
        x = x * mask.unsqueeze(-1)
    return x, mask


def repad(x: torch.Tensor, mask: torch.Tensor, extra: int, seed: int = 1):
    """Add `extra` more left-padding columns (filled with garbage)."""
    g = torch.Generator().manual_seed(seed)
    pad = torch.randn(x.shape[0], extra, x.shape[2], generator=g)
    return torch.cat([pad, x], 1), torch.cat([torch.zeros(x.shape[0], extra, dtype=torch.bool), mask], 1)


def randomize_biases(model: nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                offset = 1.0 if name.endswith(".weight") else 0.0  # LayerNorm gains stay near 1
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + offset)


def trm(seed: int = 0, **kw) -> TransformerBackbone:
    torch.manual_seed(seed)
    kw.setdefault("hidden", D)
    return TransformerBackbone(**kw).eval()


# ---------------------------------------------------------------- transformer


@pytest.mark.parametrize("mask_keys", [True, False])
def test_causal_no_lookahead(mask_keys):
    model = trm(causal=True, mask_padded_keys=mask_keys, layers=2, heads=2)
    x, mask = left_padded([7, 4, 10], 10)
    with torch.no_grad():
        base = model(x, mask)
        for t in (0, 3, 5, 8):
            x2 = x.clone()
            x2[:, t + 1:] += torch.randn_like(x2[:, t + 1:]) * 3
            out = model(x2, mask)
            assert torch.allclose(out[:, :t + 1], base[:, :t + 1], atol=1e-6)
            if t < 9:  # sanity: later positions do change
                assert not torch.allclose(out[:, t + 1:], base[:, t + 1:], atol=1e-3)


def test_bidirectional_looks_ahead():
    for mask_keys in (True, False):
        model = trm(causal=False, mask_padded_keys=mask_keys)
        x, mask = left_padded([6], 6)
        with torch.no_grad():
            base = model(x, mask)
            x2 = x.clone()
            x2[:, -1] += 2.0
            out = model(x2, mask)
        assert (out[:, 0] - base[:, 0]).abs().max() > 1e-3


@pytest.mark.parametrize("causal", [True, False])
def test_transformer_padding_invariance_with_masked_keys(causal):
    model = trm(causal=causal, mask_padded_keys=True, heads=2)
    randomize_biases(model)
    x, mask = left_padded([5, 2, 8, 1], 8)
    x2, mask2 = repad(x, mask, 9)
    with torch.no_grad():
        a = model(x, mask)
        b = model(x2, mask2)
    real = mask
    assert torch.allclose(a[real], b[:, 9:][real], atol=1e-5)
    # garbage in padded slots does not matter either
    x3 = x.clone()
    x3[~mask] = torch.randn_like(x3[~mask]) * 10
    with torch.no_grad():
        c = model(x3, mask)
    assert torch.allclose(a, c, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_paper_mode_depends_on_padding(causal):
    model = trm(causal=causal, mask_padded_keys=False)
    x, mask = left_padded([3, 5], 5)
    x2, mask2 = repad(x, mask, 20)
    with torch.no_grad():
        a = model(x, mask)
        b = model(x2, mask2)
    assert (a[mask] - b[:, 20:][mask]).abs().max() > 1e-3


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("random_biases", [False, True])
def test_pad_to_closed_form_equals_full_length_run(causal, heads, random_biases):
    model = trm(causal=causal, mask_padded_keys=False, heads=heads, layers=2)
    if random_biases:
        randomize_biases(model)
        assert model.attns[0].k_proj.bias.abs().sum() > 0
    L = 200
    x_full, mask_full = left_padded([12, 3, 1, 0, 7], L)
    t = 12
    x, mask = x_full[:, -t:], mask_full[:, -t:]
    with torch.no_grad():
        full = model(x_full, mask_full)
        cropped = model(x, mask, pad_to=L)
        naive = model(x, mask)
    assert torch.allclose(cropped, full[:, -t:], atol=1e-5)
    # the correction is what makes them equal
    assert (naive[mask] - full[:, -t:][mask]).abs().max() > 1e-3
    # pad_to == T is a no-op; pad_to shorter than T is an error
    with torch.no_grad():
        assert torch.equal(model(x, mask, pad_to=t), naive)
    with pytest.raises(LlmesrError):
        model(x, mask, pad_to=t - 1)


def test_cropped_padded_keys_get_the_uncropped_dropout_distribution():
    """In training, the virtual key stands for n padded keys that the uncropped run drops
    independently: the output's mean and variance match the uncropped run's."""
    from llmesr.models.backbones import _SelfAttention

    torch.manual_seed(0)
    attn = _SelfAttention(D, 1, dropout=0.5).train()
    randomize_biases(attn)
    t, n, draws = 3, 6, 20_000
    real = torch.randn(1, t, D)
    full_kv = torch.cat([torch.zeros(1, n, D), real], 1).expand(draws, -1, -1)
    crop_kv = real.expand(draws, -1, -1)
    q = real[:, -1:].expand(draws, -1, -1)
    mask = torch.zeros(1, 1, 1, t + 1)
    mask[..., t] = math.log(n)
    with torch.no_grad():
        full = attn(q, full_kv, None)[:, 0]
        crop = attn(q, crop_kv, mask, n)[:, 0]
    assert torch.allclose(full.mean(0), crop.mean(0), atol=0.03)
    ratio = crop.var(0) / full.var(0)
    assert ((ratio > 0.9) & (ratio < 1.1)).all(), ratio
    # dropping the merged column as one unit (the old behaviour) has a larger variance
    with torch.no_grad():
        unit = attn(q, torch.cat([torch.zeros(draws, 1, D), crop_kv], 1), None)[:, 0]
    assert (unit.var(0) > 1.2 * full.var(0)).any()


def test_kept_share_is_a_scaled_binomial():
    from llmesr.models.dropout import kept_share

    torch.manual_seed(0)
    f = kept_share((200_000,), 8, 0.5, torch.device("cpu"))
    assert set(torch.unique(f * 8 * 0.5).round().tolist()) <= set(range(9))
    assert abs(f.mean().item() - 1.0) < 0.01
    assert abs(f.var().item() - 0.5 / (8 * 0.5)) < 0.01
    assert torch.equal(kept_share((3,), 8, 0.0, torch.device("cpu")), torch.ones(3))


def test_pad_to_ignored_when_keys_masked():
    model = trm(causal=False, mask_padded_keys=True)
    x, mask = left_padded([4, 2], 6)
    with torch.no_grad():
        assert torch.equal(model(x, mask, pad_to=200), model(x, mask))


@pytest.mark.parametrize("causal,mask_keys", MODES)
def test_empty_history_is_finite(causal, mask_keys):
    model = trm(causal=causal, mask_padded_keys=mask_keys, heads=2)
    randomize_biases(model)
    x, mask = left_padded([0, 3, 0], 5)
    for train in (False, True):
        model.train(train)
        out = model(x, mask)
        out_pad = model(x, mask, pad_to=50)
        assert torch.isfinite(out).all() and torch.isfinite(out_pad).all()
    x, mask = left_padded([0, 0], 4)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x, mask)).all()


def test_transformer_deterministic_and_trainable():
    a, b = trm(seed=5, causal=False, mask_padded_keys=False), trm(seed=5, causal=False, mask_padded_keys=False)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    x, mask = left_padded([4, 6], 6)
    a.train(), b.train()
    torch.manual_seed(11)
    oa = a(x, mask, pad_to=20)
    torch.manual_seed(11)
    ob = b(x, mask, pad_to=20)
    assert torch.equal(oa, ob)
    # dropout is active in train mode
    assert not torch.equal(a(x, mask), a(x, mask))
    xr = x.clone().requires_grad_(True)
    a(xr, mask)[:, -1].pow(2).sum().backward()
    assert xr.grad is not None and xr.grad[mask].abs().sum() > 0
    assert torch.equal(xr.grad[~mask], torch.zeros_like(xr.grad[~mask]))  # padding is zeroed first
    for name, p in a.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert a.attns[0].q_proj.weight.grad.abs().sum() > 0


def test_transformer_init_like_paper():
    torch.manual_seed(0)
    model = TransformerBackbone(hidden=64, layers=2)
    attn = model.attns[0]
    for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
        assert torch.equal(lin.bias, torch.zeros(64))
    w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
    assert abs(w.std().item() - (2 / (64 + 192)) ** 0.5) < 0.01  # packed (3d, d) xavier
    assert abs(model.ffns[0].w1.weight.std().item() - (2 / 128) ** 0.5) < 0.02
    assert model.ffns[0].w1.bias.abs().max() > 0  # default (uniform) bias, not zero
    assert torch.equal(model.last_norm.weight, torch.ones(64))
    assert model.last_norm.eps == 1e-8


def test_transformer_shape_errors():
    model = trm()
    x, mask = left_padded([2], 3)
    with pytest.raises(LlmesrError):
        model(x[..., :-1], mask)
    with pytest.raises(LlmesrError):
        model(x[0], mask[0])
    with pytest.raises(LlmesrError):
        model(x, mask[:, :-1])
    with pytest.raises(LlmesrError):
        model(x, mask.float())
    with pytest.raises(LlmesrError):
        TransformerBackbone(hidden=10, heads=3)


# ---------------------------------------------------------------- GRU


def gru(seed: int = 0, **kw) -> GRUBackbone:
    torch.manual_seed(seed)
    kw.setdefault("hidden", D)
    return GRUBackbone(**kw).eval()


@pytest.mark.parametrize("layers", [1, 2])
def test_gru_unmasked_matches_plain_gru(layers):
    model = gru(mask_padding=False, layers=layers)
    x, mask = left_padded([3, 6, 0], 6)
    with torch.no_grad():
        out = model(x, mask)
        ref, _ = model.gru(x)
    assert torch.equal(out, ref)
    # and it does depend on the padding (paper quirk)
    x2, mask2 = repad(x, mask, 4)
    with torch.no_grad():
        out2 = model(x2, mask2)
    assert (out2[:, -1] - out[:, -1]).abs().max() > 1e-3


@pytest.mark.parametrize("layers", [1, 2])
def test_gru_masked_last_output_equals_unpadded_run(layers):
    model = gru(mask_padding=True, layers=layers)
    lengths = [3, 6, 1, 5]
    x, mask = left_padded(lengths, 6)
    with torch.no_grad():
        out = model(x, mask)
        for b, n in enumerate(lengths):
            ref, _ = model.gru(x[b:b + 1, 6 - n:])
            assert torch.allclose(out[b, -1], ref[0, -1], atol=1e-6)
            assert torch.allclose(out[b, 6 - n:], ref[0], atol=1e-6)
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask]))


def test_gru_masked_padding_invariance_and_empty_rows():
    model = gru(mask_padding=True)
    x, mask = left_padded([4, 0, 2], 5)
    x2, mask2 = repad(x, mask, 7)
    with torch.no_grad():
        a = model(x, mask)
        b = model(x2, mask2)
    assert torch.allclose(a[mask], b[:, 7:][mask], atol=1e-6)
    assert torch.isfinite(a).all() and torch.equal(a[1], torch.zeros_like(a[1]))
    unmasked = gru(mask_padding=False)
    with torch.no_grad():
        assert torch.isfinite(unmasked(x, mask)).all()


def test_gru_deterministic_trainable_and_init():
    a, b = gru(seed=2), gru(seed=2)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert all("bias" not in n for n, _ in a.gru.named_parameters())
    w = a.gru.weight_hh_l0
    assert abs(w.std().item() - (2 / (D + 3 * D)) ** 0.5) < 0.03
    a.train()
    x, mask = left_padded([3, 5], 5)
    xr = x.clone().requires_grad_(True)
    a(xr, mask)[:, -1].sum().backward()
    assert xr.grad[mask].abs().sum() > 0
    assert torch.equal(xr.grad[~mask], torch.zeros_like(xr.grad[~mask]))
    assert a.gru.weight_ih_l0.grad.abs().sum() > 0


def padded_constant(lengths: list[int], t: int, seed: int = 0):
    """Left-padded inputs whose padded steps all hold one row-dependent vector (as the
    paper's GRU sees them: the padding embedding, or its cross-attention output)."""
    x, mask = left_padded(lengths, t, seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    pad = torch.randn(len(lengths), 1, x.shape[2], generator=g)
    return torch.where(mask.unsqueeze(-1), x, pad), mask


@pytest.mark.parametrize("layers", [1, 2])
def test_gru_cropped_prefix_equals_full_length_run(layers):
    """Cropping the paper's unmasked GRU and replaying the padded steps gives the
    fixed-length outputs and gradients."""
    model = gru(mask_padding=False, layers=layers).train()
    lengths, L = [3, 6, 1, 5, 0], 200
    x, mask = padded_constant(lengths, L)
    w = max(lengths) + 1                       # keep one padded column in every row

    def run(xs, ms, pad_to):
        model.zero_grad()
        xs = xs.clone().requires_grad_(True)
        out = model(xs, ms, pad_to=pad_to)
        (out[:, -1] ** 2).sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    full, g_full = run(x, mask, None)
    crop, g_crop = run(x[:, -w:], mask[:, -w:], L)
    assert torch.allclose(crop, full[:, -w:], atol=1e-6)
    for a, b in zip(g_full, g_crop):
        assert (a - b).norm() <= 1e-5 * a.norm()
    # the state settled and only part of the padded steps ran with autograd
    stats = model.last_prefix
    assert stats["steps"] == L - w
    assert 2 * stats["contracted_after"] <= L - w
    assert stats["steps_with_grad"] == stats["contracted_after"]


def test_gru_prefix_stops_once_contracted():
    model = gru(mask_padding=False)
    pad = torch.randn(4, 1, D)
    calls = []
    model.gru.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        h = model.prefix_state(pad, 100_000)
        assert len(calls) < 100                # far fewer than 100,000 steps
        k = model.last_prefix["contracted_after"]
        ref, _ = model.gru(pad.expand(4, 3 * k, D))
    assert torch.allclose(h[-1], ref[:, -1], atol=1e-6)   # = a longer full scan
    with torch.no_grad():
        ref, _ = model.gru(pad.expand(4, 5, D))
        calls.clear()
        assert torch.allclose(model.prefix_state(pad, 5)[-1], ref[:, -1], atol=1e-6)
    assert len(calls) == 1                     # fewer steps than a chunk: one call


def test_gru_without_contraction_runs_every_step_and_skips_the_probe():
    model = gru(mask_padding=False)
    with torch.no_grad():            # an update gate near 1: the state barely moves
        model.gru.weight_ih_l0[D:2 * D] = 10.0 / D
    pad = torch.ones(3, 1, D) + 0.1 * torch.randn(3, 1, D)
    with torch.no_grad():
        ref, _ = model.gru(pad.expand(3, 100, D))
        h = model.prefix_state(pad, 100)
        assert model.last_prefix["contracted_after"] == 100
        assert not model.contracting
        assert torch.allclose(h[-1], ref[:, -1], atol=1e-6)
        for _ in range(model.SKIP_PROBES):    # plain scans, same values
            assert torch.allclose(model.prefix_state(pad, 100)[-1], ref[:, -1], atol=1e-6)
        assert model.contracting              # then it probes again
    x = torch.cat([pad.expand(3, 100, D), torch.randn(3, 5, D)], 1).requires_grad_(True)
    mask = torch.zeros(3, 105, dtype=torch.bool)
    mask[:, 100:] = True
    model(x[:, 99:], mask[:, 99:], pad_to=105)[:, -1].sum().backward()
    assert model.last_prefix["steps_with_grad"] == 99


def test_gru_cropped_batch_needs_a_padded_first_column():
    model = gru(mask_padding=False)
    x, mask = padded_constant([3, 2], 3)
    with pytest.raises(LlmesrError, match="padded first column"):
        model(x, mask, pad_to=10)
    with pytest.raises(LlmesrError, match="shorter"):
        model(x, mask, pad_to=2)
    with torch.no_grad():
        assert torch.equal(model(x, mask, pad_to=3), model(x, mask))


def test_gru_shape_errors():
    model = gru()
    x, mask = left_padded([2], 3)
    with pytest.raises(LlmesrError):
        model(x[..., :-1], mask)
    with pytest.raises(LlmesrError):
        model(x, mask[:, 1:])


@pytest.mark.parametrize("causal,mask_keys", MODES)
@pytest.mark.parametrize("pad_to", [None, 40])
def test_last_only_equals_the_last_position(causal, mask_keys, pad_to):
    model = trm(causal=causal, mask_padded_keys=mask_keys, heads=2, layers=2)
    randomize_biases(model)
    x, mask = left_padded([9, 3, 0, 1], 9)
    with torch.no_grad():
        full = model(x, mask, pad_to=pad_to)
        last = model(x, mask, pad_to=pad_to, last_only=True)
    assert last.shape == (4, 1, D)
    assert torch.allclose(last, full[:, -1:], atol=1e-5)


@pytest.mark.parametrize("causal,mask_keys", MODES)
def test_training_attention_path_matches_fused_kernel(causal, mask_keys, monkeypatch):
    """In training mode attention dropout runs in an explicit path; without the dropout
    itself it must give exactly what the fused kernel gives."""
    import llmesr.models.backbones as bb
    model = trm(causal=causal, mask_padded_keys=mask_keys, heads=2, layers=2, dropout=0.3)
    randomize_biases(model)
    x, mask = left_padded([6, 2, 0], 6)
    with torch.no_grad():
        ref = model(x, mask, pad_to=30)
    monkeypatch.setattr(bb, "fast_dropout", lambda t, p, training: t)
    monkeypatch.setattr(bb, "kept_share", lambda shape, n, p, device: torch.ones(shape))
    model.train()
    for m in model.modules():          # switch off the other dropouts only
        if isinstance(m, bb.Dropout):
            m.p = 0.0
    with torch.no_grad():
        out = model(x, mask, pad_to=30)
    assert torch.allclose(out, ref, atol=1e-5)
