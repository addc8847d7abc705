"""Ranking metrics for one relevant item per user (SPEC §6).

Every evaluated case has exactly one relevant item (the leave-one-out target), so the ideal
DCG is 1 and, with r the 0-based rank of the target among its candidates:

- ``HR@k``   = mean 1[r < k]
- ``NDCG@k`` = mean 1[r < k] / log2(r + 2)
- ``MRR``    = mean 1 / (r + 1), and ``MRR@k`` = mean 1[r < k] / (r + 1)

Ties. The paper's code ranks with an unstable argsort, so an exact tie between the target and a
negative is broken arbitrarily. This module makes the choice explicit (``ties``):

- ``"pessimistic"`` (default, DESIGN.md): every other candidate scoring >= the target ranks ahead
  of it, so a model that outputs a constant earns rank = #candidates - 1, never a free hit;
- ``"optimistic"``: only strictly higher scores rank ahead;
- ``"average"``: strictly higher ones plus half of the tied ones (a float rank, the expected rank
  under a uniformly random tie break).

NaN scores. A NaN target score gets the worst rank (the number of valid other candidates), under
every policy. A NaN score of another candidate is treated as a tie with the target (it counts
ahead under "pessimistic", not under "optimistic", half under "average"): a model emitting NaN
must not collect hits because its broken scores compare False.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from llmesr.errors import LlmesrError

TIE_POLICIES = ("pessimistic", "optimistic", "average")
DEFAULT_KS = (5, 10, 20)


def check_ties(ties: str) -> str:
    """Return ``ties`` if it is a known policy, else raise a one-line LlmesrError."""
    if ties not in TIE_POLICIES:
        raise LlmesrError(f"unknown tie policy {ties!r}; use one of {', '.join(TIE_POLICIES)}")
    return ties


def ranks_from_scores(pos_score: torch.Tensor, other_scores: torch.Tensor,
                      ties: str = "pessimistic",
                      valid: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of the positive among itself and the valid other candidates.

    Args:
        pos_score: (B,) score of each row's positive (target) item.
        other_scores: (B, C) scores of the other candidates (must not contain the positive).
        ties: "pessimistic" | "optimistic" | "average" (see the module docstring).
        valid: optional (B, C) bool; False marks a slot that is not a candidate (padding,
            excluded item, a sampled slot that could not be filled). None: all are valid.

    Returns:
        (B,) int64 ranks for "pessimistic"/"optimistic", float64 for "average", on the scores'
        device. A NaN positive score gets rank = number of valid other candidates (the worst).
    """
    check_ties(ties)
    if pos_score.dim() != 1 or other_scores.dim() != 2 or other_scores.shape[0] != pos_score.shape[0]:
        raise ValueError(f"expected pos_score (B,) and other_scores (B, C); got "
                         f"{tuple(pos_score.shape)} and {tuple(other_scores.shape)}")
    if valid is not None and valid.shape != other_scores.shape:
        raise ValueError(f"valid has shape {tuple(valid.shape)}, other_scores "
                         f"{tuple(other_scores.shape)}")
    dtype = torch.promote_types(pos_score.dtype, other_scores.dtype)
    pos = pos_score.to(device=other_scores.device, dtype=dtype).unsqueeze(1)
    other = other_scores.to(dtype)
    if valid is None:
        n_valid = torch.full(pos_score.shape, other.shape[1], dtype=torch.int64,
                             device=other.device)
    else:
        valid = valid.to(device=other.device, dtype=torch.bool)
        n_valid = valid.sum(dim=1)

    def count(mask: torch.Tensor) -> torch.Tensor:
        return (mask if valid is None else mask & valid).sum(dim=1)

    # "other < pos" is False for a NaN other, so counting the valid others that are NOT below
    # the positive counts the higher, the tied and the NaN ones: the pessimistic rank.
    if ties in ("pessimistic", "average"):
        pessimistic = n_valid - count(other < pos)
    if ties in ("optimistic", "average"):
        optimistic = count(other > pos)
    if ties == "pessimistic":
        ranks = pessimistic
    elif ties == "optimistic":
        ranks = optimistic
    else:  # higher + tied / 2 = (pessimistic + optimistic) / 2
        ranks = (pessimistic + optimistic).to(torch.float64) / 2
        n_valid = n_valid.to(torch.float64)
    return torch.where(torch.isnan(pos.squeeze(1)), n_valid, ranks)


def _as_ranks(ranks: Iterable | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(ranks, torch.Tensor):
        ranks = ranks.detach().cpu().numpy()
    r = np.asarray(ranks, dtype=np.float64).reshape(-1)
    if np.isnan(r).any() or (r < 0).any():
        raise ValueError("ranks must be non-negative numbers without NaN")
    return r


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise LlmesrError(f"metric cut-offs must be >= 1; got {ks}")
    return ks


def per_user_metrics(ranks: np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-case metric values (for paired significance tests), each an (n,) float64 array.

    Keys: ``HR@k``, ``NDCG@k``, ``MRR@k`` for every k in ``ks``, and ``MRR`` (untruncated).
    ``ranks`` are 0-based (int, or float from the "average" tie policy).
    """
    r = _as_ranks(ranks)
    out: dict[str, np.ndarray] = {}
    reciprocal = 1.0 / (r + 1.0)
    discount = 1.0 / np.log2(r + 2.0)
    for k in _check_ks(ks):
        hit = r < k
        out[f"HR@{k}"] = hit.astype(np.float64)
        out[f"NDCG@{k}"] = np.where(hit, discount, 0.0)
        out[f"MRR@{k}"] = np.where(hit, reciprocal, 0.0)
    out["MRR"] = reciprocal
    return out


def metrics_from_ranks(ranks: np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Means of :func:`per_user_metrics` plus ``"count"`` (the number of cases).

    Empty input gives NaN for every metric and a count of 0 (not an error: a long-tail group can
    be empty on a small dataset).
    """
    values = per_user_metrics(ranks, ks)
    n = len(values["MRR"])
    out: dict[str, float] = {name: (float(v.mean()) if n else float("nan"))
                             for name, v in values.items()}
    out["count"] = n
    return out


def beyond_accuracy(top: np.ndarray, masks: dict[str, np.ndarray], popularity: np.ndarray,
                    tail_item: np.ndarray, num_items: int, k: int | None = None
                    ) -> dict[str, dict[str, float]]:
    """What the top-k lists recommend, per group of cases (not whether they hit the target).

    Args:
        top: (n, k) item ids in 1..N, each case's top-k list; 0 marks an empty slot (fewer
            admissible items than k), left out of the shares and averages.
        masks: group name -> (n,) bool mask over the cases (e.g. :func:`group_masks`).
        popularity: (N + 1,) the training interaction count of each item id (index 0 unused).
        tail_item: (N + 1,) bool, True for the tail items (index 0 unused).
        num_items: N.
        k: the list length in the names (default ``top.shape[1]``; a catalogue smaller than
            k gives shorter lists).

    Returns:
        group -> ``coverage@k`` (distinct items in the group's lists / N), ``tail_share@k``
        (share of the recommended slots that hold a tail item), ``ARP@k`` (average
        recommended popularity: the mean popularity of the recommended items, per slot) and
        ``count``. An empty group has NaN values.
    """
    top = np.asarray(top)
    if top.ndim != 2 or len(top) != len(next(iter(masks.values()), top)):
        raise ValueError(f"top must be (cases, k) for the masks' cases; got {top.shape}")
    if top.size and (top.min() < 0 or top.max() > num_items):
        raise ValueError(f"top holds ids outside 1..{num_items} (0: an empty slot)")
    popularity = np.asarray(popularity, dtype=np.float64)
    tail_item = np.asarray(tail_item, dtype=bool)
    k = top.shape[1] if k is None else k
    out: dict[str, dict[str, float]] = {}
    for g, mask in masks.items():
        lists = top[mask]
        if not len(lists):
            out[g] = {f"coverage@{k}": float("nan"), f"tail_share@{k}": float("nan"),
                      f"ARP@{k}": float("nan"), "count": 0}
            continue
        filled = lists[lists > 0]            # the slots that hold an item
        out[g] = {f"coverage@{k}": float(len(np.unique(filled)) / num_items),
                  f"tail_share@{k}": float(tail_item[filled].mean()) if len(filled)
                  else float("nan"),
                  f"ARP@{k}": float(popularity[filled].mean()) if len(filled)
                  else float("nan"), "count": int(len(lists))}
    return out
