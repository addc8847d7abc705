"""Dropout with a cheaper random mask than ``torch.nn.Dropout`` on CPU.

``nn.Dropout`` draws its mask with ``bernoulli_``, which on CPU costs about 0.5 µs per element
and dominated the LLM-ESR training step (attention dropout over B·K teacher sequences of
length T draws B·K·T² numbers). Here the mask comes from raw random bits: one 64-bit draw gives
three 16-bit uniforms, and an element is kept when its uniform is at least ``p`` (to a
resolution of 1/65536, so ``p`` is rounded to the nearest multiple of 2⁻¹⁶: 0.5 and 0.25 are
exact, 0.1 becomes 0.099991). Kept values are scaled by ``1 / (1 - p_used)`` so the
expectation is unchanged. About 3.5× faster than ``bernoulli_`` on CPU for large tensors.

On CUDA (where ``bernoulli_`` is fast and fused) ``torch.nn.functional.dropout`` is used.
The draws come from torch's default generator, so ``torch.manual_seed`` makes them
reproducible; they are not the same draws as ``nn.Dropout``'s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_RESOLUTION = 1 << 16


def _threshold(p: float) -> tuple[int, float]:
    """(signed int16 threshold, keep scale) for drop probability p."""
    k = int(round(p * _RESOLUTION))
    return k - (1 << 15), _RESOLUTION / (_RESOLUTION - k)


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device
              ) -> torch.Tensor:
    """A bool mask of ``shape`` whose elements are True with probability ``1 - p``."""
    n = 1
    for s in shape:
        n *= int(s)
    words = torch.empty((n + 2) // 3, dtype=torch.int64, device=device).random_()
    # random_() fills [0, 2**63): the low 48 bits are uniform; the top 16 are not
    u16 = words.view(torch.int16).view(-1, 4)[:, :3].reshape(-1)[:n]
    thr, _ = _threshold(p)
    return (u16 >= thr).view(shape)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout of ``x`` with drop probability ``p`` (see the module docstring)."""
    if not training or p <= 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    _, scale = _threshold(p)
    if scale == 1.0:
        return x
    return x * keep_mask(x.shape, p, x.device).to(x.dtype) * scale


def kept_share(shape: torch.Size | tuple[int, ...], n: int, p: float, device: torch.device
               ) -> torch.Tensor:
    """What :func:`dropout` does, in distribution, to the sum of ``n`` equal values.

    Each of the ``n`` is kept with probability ``1 - p`` (``p`` rounded as :func:`dropout`
    rounds it on CPU) and scaled by ``1 / (1 - p)``, so their sum is multiplied by
    ``Binomial(n, 1 - p) / (n (1 - p))``; returns that factor, float32 of ``shape``.
    """
    if p <= 0.0:
        return torch.ones(shape, device=device)
    if device.type == "cpu":
        thr, scale = _threshold(p)
        keep = 1.0 - (thr + (1 << 15)) / _RESOLUTION
    else:
        keep, scale = 1.0 - p, 1.0 / (1.0 - p)
    counts = torch.full(shape, float(n), device=device)
    return torch.binomial(counts, torch.full_like(counts, keep)) * (scale / n)


class Dropout(nn.Module):
    """Drop-in replacement for ``nn.Dropout`` (no parameters, same state dict)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
