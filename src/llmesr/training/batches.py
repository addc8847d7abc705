"""Training and evaluation batches, built with array arithmetic (no Python loop per item).

Every sequence is right-aligned (left padding) and cut to the batch's longest history, not
to a fixed length; positions count 1..n from the oldest item kept (SPEC §1.6), so they do not
depend on the amount of padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmesr.data.artifact import SequenceDataset


def window(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, max_len: int,
           width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded windows of ``items[max(start, end - max_len):end]`` per row.

    Returns ``seq`` and ``pos`` (B, width) int64, width = the longest window (at least 1)
    unless given.
    """
    n = np.clip(ends - starts, 0, max_len)
    width = int(max(n.max(initial=0), 1)) if width is None else width
    back = width - np.arange(width)                          # distance from the end: T..1
    idx = ends[:, None] - back[None, :]
    valid = back[None, :] <= n[:, None]
    seq = np.where(valid, items[np.clip(idx, 0, len(items) - 1)], 0).astype(np.int64)
    pos = np.where(valid, n[:, None] - back[None, :] + 1, 0).astype(np.int64)
    return seq, pos


class NegativeSampler:
    """Uniform negatives in [1, N] that avoid each row's own items (vectorised rejection)."""

    def __init__(self, num_items: int, rng: np.random.Generator):
        self.num_items = num_items
        self.rng = rng

    def sample(self, shape: tuple[int, ...], row_of: np.ndarray, forbidden_rows: np.ndarray,
               forbidden_items: np.ndarray) -> np.ndarray:
        """Draw ``shape`` items; element e may not be any item j with forbidden_rows[j] ==
        row_of[e] (row_of has ``shape``)."""
        n1 = self.num_items + 1
        banned = np.unique(forbidden_rows.astype(np.int64) * n1 + forbidden_items)
        out = self.rng.integers(1, n1, size=shape)
        todo = np.ones(shape, dtype=bool)
        for _ in range(100):
            keys = row_of[todo].astype(np.int64) * n1 + out[todo]
            hit = np.isin(keys, banned, assume_unique=False)
            if not hit.any():
                return out
            redo = np.flatnonzero(todo.ravel())[hit]
            out.ravel()[redo] = self.rng.integers(1, n1, size=len(redo))
            todo = np.zeros(shape, dtype=bool)
            todo.ravel()[redo] = True
        return out  # a row that owns almost the whole catalogue: accept the rare collision


@dataclass
class TrainView:
    """The training part of every user's history (leave-one-out)."""

    items: np.ndarray      # flat item ids of the dataset
    starts: np.ndarray     # (U,) start offset of each user
    train_len: np.ndarray  # (U,) length of the training part
    num_items: int

    @classmethod
    def of(cls, ds: SequenceDataset) -> "TrainView":
        return cls(items=ds.items.astype(np.int64), starts=ds.offsets[:-1].astype(np.int64),
                   train_len=ds.users["train_length"].to_numpy().astype(np.int64),
                   num_items=ds.num_items)

    def owned(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(batch row index, item) of every training item of ``rows``."""
        lens = self.train_len[rows]
        b = np.repeat(np.arange(len(rows)), lens)
        off = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        return b, self.items[np.repeat(self.starts[rows], lens) + off]


def to_tensors(device: torch.device, **arrays: np.ndarray) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device, non_blocking=True)
            for k, v in arrays.items()}


class BatchBuilder:
    """Builds the batches of one backbone (SPEC §4.6) and the self-distillation teachers."""

    def __init__(self, view: TrainView, backbone: str, max_len: int, rng: np.random.Generator,
                 neighbors: np.ndarray | None = None, teachers: int = 10,
                 mask_prob: float = 0.6, teacher_inputs: bool = True):
        self.v = view
        self.backbone = backbone
        self.max_len = max_len
        self.rng = rng
        self.sampler = NegativeSampler(view.num_items, rng)
        self.neighbors = None if neighbors is None else neighbors[:, :teachers]
        self.mask_prob = mask_prob
        self.mask_token = view.num_items + 1
        #: build the teachers' histories (False: only their user rows, ``teacher_rows``, for
        #: a trainer that looks their states up in a cache)
        self.teacher_inputs = teacher_inputs

    def epoch_samples(self) -> np.ndarray:
        """Sample ids for one epoch: users (SASRec/GRU) or 2U user/kind pairs (Bert4Rec)."""
        u = len(self.v.train_len)
        return self.rng.permutation(2 * u if self.backbone == "bert4rec" else u)

    def _negatives(self, rows: np.ndarray, target: np.ndarray) -> np.ndarray:
        fb, fi = self.v.owned(rows)
        row_of = np.broadcast_to(np.arange(len(rows))[:, None], target.shape)
        neg = self.sampler.sample(target.shape, row_of, fb, fi)
        return np.where(target > 0, neg, 0)

    def inputs(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Training input of ``rows``: the training items minus the last (right-aligned)."""
        s = self.v.starts[rows]
        e = s + np.maximum(self.v.train_len[rows] - 1, 0)
        return window(self.v.items, s, e, self.max_len)

    def train_batch(self, samples: np.ndarray) -> dict[str, np.ndarray]:
        u_count = len(self.v.train_len)
        if self.backbone == "bert4rec":
            rows = samples % u_count
            out = self._bert(rows, last_only=samples >= u_count)
        else:
            rows = samples
            seq, pos = self.inputs(rows)
            s = self.v.starts[rows]
            e = s + np.maximum(self.v.train_len[rows] - 1, 0)
            target, _ = window(self.v.items, s + 1, e + 1, self.max_len, seq.shape[1])
            target = np.where(seq > 0, target, 0)
            if self.backbone == "gru4rec":
                # one target per user: the last training item, even from an empty input
                target = np.zeros_like(seq)
                target[:, -1] = self.v.items[s + self.v.train_len[rows] - 1]
            out = {"seq": seq, "pos": pos, "target": target}
        out["neg"] = self._negatives(rows, out["target"])
        if self.neighbors is not None and self.teacher_inputs:
            t_rows = self.neighbors[rows].ravel()
            out["teacher_seq"], out["teacher_pos"] = self.inputs(t_rows)
        elif self.neighbors is not None:
            out["teacher_rows"] = self.neighbors[rows]                 # (B, K)
        out["rows"] = rows
        return out

    def _bert(self, rows: np.ndarray, last_only: np.ndarray) -> dict[str, np.ndarray]:
        s = self.v.starts[rows]
        e = s + self.v.train_len[rows]
        seq, pos = window(self.v.items, s, e, self.max_len)
        real = seq > 0
        chosen = real & (self.rng.random(seq.shape) < self.mask_prob)
        chosen[last_only] = False
        chosen[last_only, -1] = real[last_only, -1]
        target = np.where(chosen, seq, 0)
        r = self.rng.random(seq.shape)
        replaced = seq.copy()
        replaced[chosen & (r < 0.8)] = self.mask_token
        rand = chosen & (r >= 0.8) & (r < 0.9) & ~last_only[:, None]
        replaced[rand] = self.rng.integers(1, self.v.num_items + 1, size=int(rand.sum()))
        replaced[last_only, -1] = np.where(real[last_only, -1], self.mask_token, 0)
        return {"seq": replaced, "pos": pos, "target": target}


def eval_inputs(ds_items: np.ndarray, starts: np.ndarray, history_len: np.ndarray,
                max_len: int, backbone: str, mask_token: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs for scoring: each row's first ``history_len`` items, right-aligned.

    Bert4Rec appends the mask token at position last + 1 and drops the oldest item when the
    window is full (SPEC §4.6).
    """
    ends = starts + history_len
    if backbone != "bert4rec":
        return window(ds_items, starts, ends, max_len)
    seq, pos = window(ds_items, starts, ends, max_len)
    n = pos.max(axis=1)
    seq = np.concatenate([seq, np.full((len(seq), 1), mask_token)], axis=1)
    pos = np.concatenate([pos, (n + 1)[:, None]], axis=1)
    if seq.shape[1] > max_len:
        seq, pos = seq[:, -max_len:], pos[:, -max_len:]
    return seq, pos
