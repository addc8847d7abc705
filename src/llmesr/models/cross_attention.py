"""Cross-attention between the two views: sequence-level fusion (SPEC §4.3).

CA(x, y): queries from x, keys and values from y; 2 heads; no bias on Q/K/V, a bias on the
output; no dropout, no LayerNorm. H^co = CA(X^se, X^co) and H^se = CA(X^co, X^se): the query
comes from the *other* view (§9.1.4). The paper adds no residual (§9.1.3) and no causal mask
(§9.1.1); both are switches here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    def __init__(self, hidden: int = 64, heads: int = 2, causal: bool = True,
                 residual: bool = False):
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.residual = residual
        self.q = nn.Linear(hidden, hidden, bias=False)
        self.k = nn.Linear(hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, hidden, bias=False)
        self.out = nn.Linear(hidden, hidden)
        for lin in (self.q, self.k, self.v, self.out):
            nn.init.xavier_normal_(lin.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor, padding_mask: torch.Tensor
                ) -> torch.Tensor:
        """x: queries (B, T, d); y: keys/values (B, T, d); padding_mask (B, T) True = real."""
        b, t, d = x.shape
        h = self.heads

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.view(b, t, h, d // h).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(y)), split(self.v(y))
        allowed = padding_mask[:, None, None, :].expand(b, 1, t, t)
        if self.causal:
            allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        # A query with no allowed key (a padded position before the history starts, or an
        # empty history) would give NaN; let it see its own position. Rows that have a key
        # are unchanged, so real positions and the paper's padded-row behaviour are exact.
        no_key = ~allowed.any(dim=-1, keepdim=True)
        allowed = allowed | (no_key & torch.eye(t, dtype=torch.bool, device=x.device))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        out = self.out(out.transpose(1, 2).reshape(b, t, d))
        return out + x if self.residual else out
