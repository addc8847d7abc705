"""MELT on any backbone (Kim, Hyun, Yun, Park, "MELT: Mutual Enhancement of Long-Tailed User
and Item for Sequential Recommendation", SIGIR 2023; ``../shared/BASELINES.md`` §3).

MELT starts from a trained backbone (stage 1: the plain ``id`` model, or ``--init-from`` an
id run) and trains it on (stage 2, ``melt_epochs`` epochs, all of them run)::

    L = L_rec + λ_u L_u + λ_i L_i

- **Head and tail** (the method's own, for training; evaluation keeps the dataset's
  groups): n_u* = the ``melt_pareto`` quantile of the users' training lengths, tail users
  ``|S_u| <= n_u*``; n_i* = the ``melt_pareto - 0.02`` quantile of the training counts of
  the items seen in training, tail items ``count <= n_i*`` or never seen.
- **User branch** ``L_u``, over a share of the head users each step: the state f(S_u^R) of
  the user's last R ~ U{1..⌈n_u*⌉-1} training items, mapped by W_U, regresses the state f(S_u)
  of its whole training history, weighted by the curriculum w_u (:func:`user_weights`).
- **Item branch** ``L_i``, over a share of the head items each step: m ~ U{1..min(|C_i|,
  n_i*)} of the item's contexts C_i (:class:`ItemContexts`), z_c = f(c) + W_U f(c), and
  W_I(mean z_c) regresses the item's row e_i; the curriculum weight w_i
  (:func:`item_weights`) sits inside the square (the official code).
- **Tail items**, at the start of every epoch (no gradients): e_i <- W_I(mean_c z_c) over all
  of the item's contexts, written into the ID table.
- **Inference**: a tail user's state (history length <= n_u*) is f + W_U f; others f.

The official code's quirks (BASELINES.md §3.3) behind switches, the ``paper`` preset keeping
them: ``melt_wu_residual`` (default on) trains W_U as the residual it is used as at inference
and in the item branch, and applies it in the tail-item update too (the official code trains
it as a direct map and leaves it out of the update); ``melt_context_self`` (default off)
makes every context end with the item itself, so that an item's estimate reads its own row
(the official code) rather than the items around it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from llmesr.errors import LlmesrError
from llmesr.training.batches import eval_inputs


@dataclass
class MeltSplit:
    user_thres: float          # n_u*
    item_thres: float          # n_i*
    head_users: np.ndarray     # user rows with a training length > n_u*
    head_items: np.ndarray     # item ids with a training count > n_i*
    tail_items: np.ndarray     # the other item ids 1..N (never seen in training included)

    def info(self) -> dict:
        return {"user_threshold": float(self.user_thres),
                "item_threshold": float(self.item_thres),
                "head_users": int(len(self.head_users)), "head_items": int(len(self.head_items)),
                "tail_items": int(len(self.tail_items))}


def split_head_tail(train_len: np.ndarray, item_counts: np.ndarray, pareto: float
                    ) -> MeltSplit:
    """MELT's head/tail split; ``item_counts`` (N + 1,) training counts indexed by item id."""
    train_len = np.asarray(train_len)
    counts = np.asarray(item_counts)[1:]
    seen = counts[counts > 0]
    if len(train_len) == 0 or len(seen) == 0:
        raise LlmesrError("melt: the dataset has no training interactions")
    user_thres = float(np.quantile(train_len, pareto))
    item_thres = float(np.quantile(seen, max(pareto - 0.02, 0.0)))
    ids = np.arange(1, len(counts) + 1)
    head = (counts > item_thres)
    return MeltSplit(user_thres, item_thres, np.flatnonzero(train_len > user_thres),
                     ids[head], ids[~head])


def user_weights(lengths: np.ndarray, user_thres: float, epoch: int, epochs: int,
                 max_len: int) -> np.ndarray:
    """w_u = |sin(π/2 · e/e_max + π / (2 (L_max − n_u* − 1)) · (|S_u| − n_u* − 1))|,
    |S_u| the training length cropped to L_max."""
    span = max(max_len - user_thres - 1, 1.0)
    s = np.minimum(np.asarray(lengths, dtype=np.float64), max_len)
    return np.abs(np.sin(math.pi / 2 * epoch / epochs + math.pi / (2 * span)
                         * (s - user_thres - 1)))


def item_weights(counts: np.ndarray, item_thres: float, epoch: int, epochs: int
                 ) -> np.ndarray:
    """w_i = |sin(π/2 · e/e_max + π/100 · (min(n_i* + 50, count) − n_i* − 1))|."""
    n = np.minimum(np.asarray(counts, dtype=np.float64), item_thres + 50)
    return np.abs(np.sin(math.pi / 2 * epoch / epochs + math.pi / 100 * (n - item_thres - 1)))


class ItemContexts:
    """Every item's interaction set C_i from the training parts.

    For each occurrence of item i at offset t of a training sequence s: the prefix s[..t]
    and, when s has more than one item, the suffix s[t..] reversed, both ending with i
    (``self_item``, the official code); without ``self_item`` they end just before i (the
    prefix s[..t-1] and s[t+1..] reversed) and empty ones are dropped. Each context is a
    (start, length) slice of one flat array holding the training parts forwards and then
    reversed, so ``inputs`` builds any set of them as a padded batch without copying.
    """

    def __init__(self, items: np.ndarray, starts: np.ndarray, train_len: np.ndarray,
                 num_items: int, self_item: bool):
        lens = np.asarray(train_len, dtype=np.int64)
        total = int(lens.sum())
        user = np.repeat(np.arange(len(lens)), lens)
        first = np.cumsum(lens) - lens                          # offset of each user's part
        off = np.arange(total) - first[user]                    # t of each interaction
        fwd = np.asarray(items)[np.asarray(starts, dtype=np.int64)[user] + off]
        rev = fwd[first[user] + lens[user] - 1 - off]           # each part reversed
        self.flat = np.concatenate([fwd, rev])
        keep = 1 if self_item else 0
        pre_len = off + keep                                    # s[..t] or s[..t-1]
        suf_len = lens[user] - off - 1 + keep                   # s[t..] or s[t+1..], reversed
        suf_ok = (lens[user] > 1) & (suf_len > 0)
        item = np.concatenate([fwd[pre_len > 0], fwd[suf_ok]])
        start = np.concatenate([first[user][pre_len > 0],
                                total + first[user][suf_ok]])
        length = np.concatenate([pre_len[pre_len > 0], suf_len[suf_ok]])
        order = np.argsort(item, kind="stable")
        self.item, self.start, self.length = item[order], start[order], length[order]
        self.ptr = np.zeros(num_items + 2, dtype=np.int64)
        np.add.at(self.ptr, self.item + 1, 1)
        self.ptr = np.cumsum(self.ptr)
        self.num_items = num_items

    def count(self, ids: np.ndarray) -> np.ndarray:
        """|C_i| of item ids."""
        ids = np.asarray(ids)
        return self.ptr[ids + 1] - self.ptr[ids]

    def of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(context indices, position in ``ids`` of each) of all contexts of ``ids``."""
        n = self.count(ids)
        seg = np.repeat(np.arange(len(ids)), n)
        idx = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n) + self.ptr[ids][seg]
        return idx, seg

    def sample(self, ids: np.ndarray, cap: float, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
        """For each of ``ids``, m ~ U{1..min(|C_i|, cap)} of its contexts drawn without
        replacement: (context indices, position in ``ids`` of each). Items with no context
        are left out."""
        ids = np.asarray(ids)
        n = self.count(ids)
        upper = np.minimum(n, max(int(cap), 1))
        m = np.where(n > 0, rng.integers(1, np.maximum(upper, 1) + 1), 0)
        idx, seg = self.of(ids)
        key = rng.random(len(idx))
        order = np.lexsort((key, seg))                 # by item, random within each item
        idx, seg = idx[order], seg[order]
        rank = np.arange(len(idx)) - np.repeat(np.cumsum(n) - n, n)
        keep = rank < m[seg]
        return idx[keep], seg[keep]

    def inputs(self, idx: np.ndarray, max_len: int, backbone: str
               ) -> tuple[np.ndarray, np.ndarray]:
        """(seq, pos) of contexts ``idx``, as the scoring inputs of those histories."""
        return eval_inputs(self.flat, self.start[idx], self.length[idx], max_len, backbone,
                           self.num_items + 1)


class MeltHeads(nn.Module):
    """W_U (user branch: few interactions -> many) and W_I (item branch: contexts -> row)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.W_U = nn.Linear(hidden, hidden)
        self.W_I = nn.Linear(hidden, hidden)
        nn.init.xavier_normal_(self.W_U.weight)
        nn.init.xavier_normal_(self.W_I.weight)
        # n_u*: histories of at most this many items are tail users, whose state is
        # f + W_U f at inference; -1 (no tail user) until stage 2 sets it. Saved with the
        # weights, so evaluation and serving need no dataset.
        self.register_buffer("user_thres", torch.tensor(-1.0), persistent=True)

    def residual(self, f: torch.Tensor) -> torch.Tensor:
        return f + self.W_U(f)


def ridge_fit(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-4) -> torch.Tensor:
    """(d + 1, k): the affine map [W; b] minimising ||x W + b − y||² + ridge·tr(xᵀx)/d·||W||²
    (the bias not penalised), for x (n, d), y (n, k)."""
    a = torch.cat([x, x.new_ones(len(x), 1)], dim=1)
    g = a.T @ a
    reg = torch.eye(len(g), dtype=x.dtype, device=x.device) * (ridge * float(
        torch.trace(g[:-1, :-1])) / max(x.shape[1], 1))
    reg[-1, -1] = 0.0
    return torch.linalg.solve(g + reg, a.T @ y)


def user_branch_loss(heads: MeltHeads, few: torch.Tensor, full: torch.Tensor,
                     w: torch.Tensor, residual: bool) -> torch.Tensor:
    """mean over users and dims of w_u (W_U f(S^R) [+ f(S^R)] − f(S))²."""
    pred = heads.residual(few) if residual else heads.W_U(few)
    return (w[:, None] * (pred - full) ** 2).mean()


def segment_mean(x: torch.Tensor, seg: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of the rows of x (k, d) in each of n segments (seg (k,) in 0..n-1)."""
    out = x.new_zeros(n, x.shape[1]).index_add_(0, seg, x)
    cnt = torch.bincount(seg, minlength=n).clamp_min(1).to(x.dtype)
    return out / cnt[:, None]


def item_branch_loss(heads: MeltHeads, f_ctx: torch.Tensor, seg: torch.Tensor,
                     rows: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """mean over items and dims of (w_i (W_I mean_c(f(c) + W_U f(c)) − e_i))²."""
    z = segment_mean(heads.residual(f_ctx), seg, len(rows))
    return ((w[:, None] * (heads.W_I(z) - rows)) ** 2).mean()
