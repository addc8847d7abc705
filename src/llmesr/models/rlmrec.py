"""RLMRec-Con on a sequential backbone (Ren et al., "Representation Learning with Large
Language Models for Recommendation", WWW 2024; ``../shared/BASELINES.md`` §4).

RLMRec aligns the recommender's own representations with embeddings of text *profiles* by a
contrastive loss, and recommends with the recommender alone. The official code does it for
graph CF (LightGCN); the LLM-ESR paper's sequential adaptation is not public. Ours (labelled
as ours, BASELINES.md §4.4 "proposed faithful SRS version"):

- the backbone is the plain ``id`` model (random ID table), unchanged at inference;
- a shared ``MLP_down: d_s -> (d_s + h) / 2 -> h`` (LeakyReLU, Xavier init) maps profile
  embeddings into the model's space;
- the loss adds ``λ · [NCE(h_u, MLP(s_u); batch users) + NCE(e_i, MLP(s_i); batch items)]``
  with the cosine InfoNCE of the official ``loss_utils.py``::

      NCE(a, b; P) = mean_k [ -cos(a_k, b_k) / τ + log Σ_{p ∈ P} exp(cos(a_k, b_p) / τ) ]

  ``h_u`` the state at the last input position of the batch's user, ``e_i`` the ID row of
  each distinct item of the batch (inputs and targets), negatives in-batch on both sides
  (the official code contrasts users against all users: quirk 1, fixed);
- profiles, offline (no generative LLM; BASELINES.md §4.5 (a)): an item's profile is its
  prompt embedding (the ``items.npy`` of ``llmesr embed``), a user's the embedding of the
  titles of its training items (``users.npy``), both through the run's text encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cosine_info_nce(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over rows k of ``-cos(a_k, b_k)/τ + logsumexp_p cos(a_k, b_p)/τ`` (a, b: (n, d))."""
    sim = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T / tau
    return F.cross_entropy(sim, torch.arange(len(a), device=a.device))


class ProfileAlignment(nn.Module):
    """MLP_down of RLMRec-Con and its two in-batch contrastive terms."""

    def __init__(self, profile_dim: int, hidden: int):
        super().__init__()
        mid = (profile_dim + hidden) // 2
        self.mlp = nn.Sequential(nn.Linear(profile_dim, mid), nn.LeakyReLU(),
                                 nn.Linear(mid, hidden))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, users: torch.Tensor, user_profiles: torch.Tensor, items: torch.Tensor,
                item_profiles: torch.Tensor, tau: float) -> torch.Tensor:
        """users (B, h) against their profiles (B, d_s); items (M, h) against theirs."""
        loss = users.new_zeros((), dtype=torch.float32)
        if len(users) > 1:
            loss = loss + cosine_info_nce(users, self.mlp(user_profiles), tau)
        if len(items) > 1:
            loss = loss + cosine_info_nce(items, self.mlp(item_profiles), tau)
        return loss
