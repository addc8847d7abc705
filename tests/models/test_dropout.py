from __future__ import annotations

import pytest
import torch

from llmesr.models import dropout as fd


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.9])
def test_keep_rate_and_expectation(p):
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = fd.dropout(x, p, True)
    kept = (y != 0).float().mean().item()
    assert abs(kept - (1 - p)) < 4e-3
    assert abs(y.mean().item() - 1.0) < 1e-2        # inverted dropout keeps the mean
    # kept values carry exactly the 1 / (1 - p_used) scale
    _, scale = fd._threshold(p)
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], scale))
    assert abs(scale * (1 - p) - 1) < 1e-4          # p rounded to a multiple of 2**-16


def test_bits_are_uniform_and_independent():
    torch.manual_seed(1)
    m = fd.keep_mask((300_000,), 0.5, torch.device("cpu"))
    assert abs(m.float().mean().item() - 0.5) < 3e-3
    # neighbouring elements (same 64-bit word or not) are uncorrelated
    a, b = m[:-1].float(), m[1:].float()
    corr = ((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std())
    assert abs(corr.item()) < 1e-2
    for offset in range(3):   # each 16-bit lane of a word is unbiased
        assert abs(m[offset::3].float().mean().item() - 0.5) < 6e-3


def test_eval_identity_seed_and_gradient():
    x = torch.randn(50, 7, requires_grad=True)
    mod = fd.Dropout(0.3)
    mod.eval()
    assert mod(x) is x
    mod.train()
    torch.manual_seed(4)
    a = mod(x)
    torch.manual_seed(4)
    b = mod(x)
    assert torch.equal(a, b)
    a.sum().backward()
    _, scale = fd._threshold(0.3)
    expect = (a != 0).float() * scale
    assert torch.allclose(x.grad, expect)
    assert fd.dropout(x, 0.0, True) is x
    assert torch.equal(fd.dropout(x, 1.0, True), torch.zeros_like(x))
    with pytest.raises(ValueError):
        fd.Dropout(1.5)
    assert mod.state_dict() == {} and "p=0.3" in repr(mod)
