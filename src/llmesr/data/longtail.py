"""Long-tail groups of users and items (SPEC §2).

- Tail user: the test input length ``min(n - 1, max_len)`` is below ``ts_user``.
- Tail item: the target item's popularity is below ``ts_item``.

Popularity (``LongTailConfig.popularity``):
- ``paper``: the number of distinct users whose full sequence (train + valid + test) contains
  the item. The original code's ``pop[items] += 1`` counts an item repeated inside one
  sequence once, and includes the evaluation targets.
- ``train``: the same count over the training parts only (``items[:n-2]``; the whole sequence
  for users with n < 3), so evaluation targets do not influence the grouping.

Pareto rule, used for any threshold that is not given (``pareto_share`` s = 0.8 by default):
- ``ts_user`` = the largest t such that users with test input length < t are at most s of the
  evaluated users (the "80% of users with the shortest histories" are the tail);
- ``ts_item`` = the largest t such that items with popularity < t hold at most 1 - s of the
  total popularity mass (the head items are the popular ones that account for ~80%).
On the paper's Yelp split the paper's own thresholds (12, 13) give 79.3% tail users and tail
items holding 19.2% of interactions, which is what this rule formalises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from llmesr.config import LongTailConfig


def train_lengths(lengths: np.ndarray) -> np.ndarray:
    """Leave-one-out training length per user: n - 2, or n for users with n < 3."""
    return np.where(lengths >= 3, lengths - 2, lengths)


def item_popularity(offsets: np.ndarray, items: np.ndarray, num_items: int,
                    definition: str = "paper") -> np.ndarray:
    """Popularity per item id, shape (num_items + 1,), index 0 (padding) is 0."""
    lengths = np.diff(offsets)
    users = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    if definition == "train":
        pos = np.arange(len(items), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
        keep = pos < np.repeat(train_lengths(lengths), lengths)
        users, items = users[keep], items[keep]
    pairs = np.unique(users * (num_items + 1) + items.astype(np.int64))
    return np.bincount(pairs % (num_items + 1), minlength=num_items + 1).astype(np.int64)


def eval_history_lengths(lengths: np.ndarray, max_len: int) -> np.ndarray:
    """Length of the test input (everything before the test target), capped at ``max_len``."""
    return np.minimum(np.maximum(lengths - 1, 0), max_len)


def pareto_ts_user(hist_len: np.ndarray, share: float) -> int:
    """Largest t with mean(hist_len < t) <= share (at least 1)."""
    values = np.sort(hist_len)
    best = 1
    for t in np.unique(np.concatenate([values, values + 1])):
        if np.searchsorted(values, t, side="left") / len(values) <= share + 1e-9:
            best = max(best, int(t))
    return best


def pareto_ts_item(pop: np.ndarray, share: float) -> int:
    """Largest t such that items with popularity < t hold at most 1 - share of the mass."""
    p = np.sort(pop[pop > 0])
    csum = np.concatenate([[0], np.cumsum(p)])
    total = csum[-1]
    best = 1
    for t in np.unique(np.concatenate([p, p + 1])):
        below = csum[np.searchsorted(p, t, side="left")]
        if below / total <= 1.0 - share + 1e-9:
            best = max(best, int(t))
    return best


@dataclass
class Groups:
    """Long-tail grouping of a prepared dataset."""

    popularity: np.ndarray        # (N + 1,) per item id
    test_history_len: np.ndarray  # (U,) per user row
    ts_user: int
    ts_item: int
    threshold_source: dict[str, str]
    config: LongTailConfig

    def tail_user(self) -> np.ndarray:
        return self.test_history_len < self.ts_user

    def tail_item_of(self, targets: np.ndarray) -> np.ndarray:
        return self.popularity[targets] < self.ts_item

    def summary(self, test_targets: np.ndarray, evaluated: np.ndarray) -> dict[str, Any]:
        """Group sizes over the evaluated test cases and the shares behind them."""
        tu = self.tail_user()[evaluated]
        ti = self.tail_item_of(test_targets[evaluated])
        n_eval = int(evaluated.sum())
        pop = self.popularity[1:]
        tail_items = pop < self.ts_item
        mass = pop.sum()
        return {
            "ts_user": self.ts_user, "ts_item": self.ts_item,
            "threshold_source": self.threshold_source,
            "popularity": self.config.popularity,
            "max_len": self.config.max_len,
            "test_cases": n_eval,
            "tail_user": int(tu.sum()), "head_user": int(n_eval - tu.sum()),
            "tail_item": int(ti.sum()), "head_item": int(n_eval - ti.sum()),
            "tail_user_share": float(tu.mean()) if n_eval else 0.0,
            "tail_item_case_share": float(ti.mean()) if n_eval else 0.0,
            "tail_items": int(tail_items.sum()),
            "tail_items_share": float(tail_items.mean()) if len(pop) else 0.0,
            "tail_items_popularity_share": float(pop[tail_items].sum() / mass) if mass else 0.0,
        }


def compute_groups(offsets: np.ndarray, items: np.ndarray, num_items: int,
                   evaluated: np.ndarray, cfg: LongTailConfig,
                   paper_thresholds: tuple[int, int] | None = None) -> Groups:
    """Popularity, test history lengths and thresholds.

    Precedence for each threshold: the value in ``cfg``, else ``paper_thresholds`` (the
    paper's values for its datasets), else the Pareto rule.
    """
    cfg.validate()
    lengths = np.diff(offsets)
    pop = item_popularity(offsets, items, num_items, cfg.popularity)
    hist = eval_history_lengths(lengths, cfg.max_len)
    source: dict[str, str] = {}
    ts: dict[str, int] = {}
    for k, name in enumerate(("ts_user", "ts_item")):
        given = getattr(cfg, name)
        if given is not None:
            ts[name], source[name] = int(given), "user"
        elif paper_thresholds is not None:
            ts[name], source[name] = int(paper_thresholds[k]), "paper"
        elif name == "ts_user":
            ts[name] = pareto_ts_user(hist[evaluated], cfg.pareto_share) if evaluated.any() else 1
            source[name] = f"pareto({cfg.pareto_share})"
        else:
            ts[name] = pareto_ts_item(pop[1:], cfg.pareto_share) if pop.any() else 1
            source[name] = f"pareto({cfg.pareto_share})"
    return Groups(popularity=pop, test_history_len=hist, ts_user=ts["ts_user"],
                  ts_item=ts["ts_item"], threshold_source=source, config=cfg)
