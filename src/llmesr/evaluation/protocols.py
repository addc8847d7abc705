"""Candidate protocols: full-catalogue ranking and the paper's 100 sampled negatives (SPEC §6).

The model side is a callback, so these drivers work for any backbone::

    score_fn(user_rows: LongTensor (b,), candidates: LongTensor (b, C) | None) -> Tensor

- ``candidates=None``: scores over all item ids, (b, M) with M >= N + 1. Column 0 (padding) and
  any column > N (e.g. Bert4Rec's mask token) are never candidates; the drivers drop them.
- ``candidates`` given: (b, C) scores of exactly those ids.

``user_rows`` and ``candidates`` are CPU tensors; the callback moves them to its device and may
return scores on any device (ranks are computed there). It is called under ``torch.no_grad``;
putting the model in eval mode is the caller's job.

When the scores factor as ``user_states @ item_table.T`` (every model here),
:func:`full_ranking_ranks_factored` takes ``states_fn(user_rows) -> (b, H)`` and the table
instead, and ranks the full catalogue in bounded tiles of users x items, never holding a
(batch, N + 1) score block: the driver for large catalogues (the trainer's).

The drivers return one 0-based rank per evaluated case (int64, or float64 for ties="average"),
to be turned into metrics by :mod:`llmesr.evaluation.metrics` and saved for significance tests.

Deviations from the paper's code, all deliberate:
- ties are resolved by an explicit policy (default pessimistic) instead of an unstable sort;
- whether sampled negatives are redrawn at every evaluation (the paper) or fixed is decided by
  the generator the caller passes (:func:`fixed_rng` for fixed ones).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from llmesr.errors import LlmesrError
from llmesr.evaluation.metrics import (
    DEFAULT_KS,
    check_ties,
    metrics_from_ranks,
    ranks_from_scores,
)

ScoreFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]

#: Users per negative-sampling block. A constant (not the scoring batch size), so the negatives
#: drawn from a given generator do not depend on ``batch_size``.
SAMPLE_BLOCK = 8192
#: Rows whose share of admissible items is below this, or with fewer than DENSE_MULTIPLE * n_neg
#: admissible items, are sampled exactly (a random key per admissible item): rejection would need
#: many redraws for them (excluded ids, or repeats when nearly all admissible items are drawn).
#: Both conditions bound the exact sampler's cost, N + 1 keys per row, by a small multiple of
#: the row's exclusions or of n_neg.
DENSE_ACCEPTANCE = 0.5
DENSE_MULTIPLE = 4
#: Draws per round of rejection sampling, relative to the expected need; the few rows that
#: still come short (repeats, bad luck) are topped up in another round.
OVERSAMPLE = 1.15
#: Upper bound on random keys held at once by the exact sampler (rows x (N + 1) floats).
DENSE_CELLS = 1 << 24


# ------------------------------------------------------------------------------------------------
# input checks


def _check_cases(users: np.ndarray, targets: np.ndarray, num_items: int,
                 batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    users = np.asarray(users)
    targets = np.asarray(targets)
    if users.ndim != 1 or targets.shape != users.shape:
        raise ValueError(f"users and targets must be 1-D of equal length; got {users.shape} "
                         f"and {targets.shape}")
    if len(users) and not (np.issubdtype(users.dtype, np.integer)
                           and np.issubdtype(targets.dtype, np.integer)):
        raise ValueError("users and targets must be integer arrays")
    if int(num_items) < 1:
        raise LlmesrError(f"num_items must be >= 1; got {num_items}")
    if int(batch_size) < 1:
        raise LlmesrError(f"evaluation batch size must be >= 1; got {batch_size}")
    if len(targets):
        bad = np.flatnonzero((targets < 1) | (targets > num_items))
        if len(bad):
            i = int(bad[0])
            raise LlmesrError(f"target item {int(targets[i])} of case {i} is outside 1..{num_items}; "
                              "the split and num_items do not belong together")
    return users.astype(np.int64), targets.astype(np.int64)


def _flatten(lists: Sequence[np.ndarray], start: int, stop: int, num_items: int,
             what: str) -> tuple[np.ndarray, np.ndarray]:
    """CSR-style flattening of ``lists[start:stop]``: (row within the slice, item id) pairs."""
    chunk = lists[start:stop]
    lengths = np.fromiter((len(a) for a in chunk), dtype=np.int64, count=len(chunk))
    if lengths.sum() == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    items = np.concatenate([np.asarray(a, dtype=np.int64).reshape(-1) for a in chunk])
    rows = np.repeat(np.arange(len(chunk), dtype=np.int64), lengths)
    bad = np.flatnonzero((items < 0) | (items > num_items))
    if len(bad):
        row = start + int(rows[bad[0]])
        raise LlmesrError(f"{what} of case {row} contains item id {int(items[bad[0]])}, outside "
                          f"0..{num_items}; the sequences and num_items do not belong together")
    return rows, items


def _scores(score_fn: ScoreFn, users: np.ndarray, candidates: np.ndarray | None,
            min_cols: int) -> torch.Tensor:
    with torch.no_grad():
        cand = None if candidates is None else torch.from_numpy(candidates)
        scores = score_fn(torch.from_numpy(users), cand)
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or \
            scores.shape[0] != len(users) or scores.shape[1] < min_cols:
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"score_fn returned {got}; expected ({len(users)}, "
                         f"{'>= ' if candidates is None else ''}{min_cols})")
    return scores.detach()


def _empty_ranks(ties: str) -> np.ndarray:
    return np.zeros(0, dtype=np.float64 if ties == "average" else np.int64)


# ------------------------------------------------------------------------------------------------
# full-catalogue ranking


def _check_full(users: np.ndarray, targets: np.ndarray, num_items: int, batch_size: int,
                exclude: Sequence[np.ndarray] | None, ties: str, topk: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The arguments both full-ranking drivers share, checked; the cases as arrays."""
    check_ties(ties)
    users, targets = _check_cases(users, targets, num_items, batch_size)
    if topk < 0 or topk > num_items:
        raise LlmesrError(f"topk must be in 0..{num_items}; got {topk}")
    if exclude is not None and len(exclude) != len(users):
        raise ValueError(f"exclude has {len(exclude)} entries for {len(users)} cases")
    return users, targets


def full_ranking_ranks(score_fn: ScoreFn, users: np.ndarray, targets: np.ndarray,
                       num_items: int, *, batch_size: int = 1024,
                       exclude: Sequence[np.ndarray] | None = None,
                       ties: str = "pessimistic", progress: bool = True,
                       topk: int = 0) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Rank of each target among all items 1..N (the primary protocol, DESIGN.md).

    Args:
        score_fn: see the module docstring; called with ``candidates=None``.
        users: (n,) user rows handed to ``score_fn``.
        targets: (n,) target item ids in 1..N.
        num_items: N.
        batch_size: users per chunk; memory is about ``batch_size * (N + 1)`` scores plus two
            bool masks of that size.
        exclude: optional per-case item ids removed from the candidates (e.g. the items already
            seen). Id 0 is ignored. The target is never excluded: its score is read before the
            mask is applied, so listing it here has no effect.
        ties: tie policy (see metrics.py).
        progress: show a tqdm bar.
        topk: also return each case's top ``topk`` items (the recommendation list: every
            item 1..N but the excluded ones, the target included), best first; when fewer
            than ``topk`` items are admissible, the remaining slots hold 0.

    Returns:
        (n,) int64 ranks (float64 for ties="average"); with ``topk``, also the (n, topk)
        int64 item ids.
    """
    users, targets = _check_full(users, targets, num_items, batch_size, exclude, ties, topk)
    n = len(users)
    if n == 0:
        empty = _empty_ranks(ties)
        return (empty, np.zeros((0, topk), dtype=np.int64)) if topk else empty

    out, tops = [], []
    with tqdm(total=n, desc="full ranking", unit="user", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            scores = _scores(score_fn, users[start:stop], None, num_items + 1)[:, : num_items + 1]
            device = scores.device
            b = stop - start
            rows = torch.arange(b, device=device)
            tgt = torch.from_numpy(targets[start:stop]).to(device)
            pos = scores[rows, tgt]
            valid = torch.ones(scores.shape, dtype=torch.bool, device=device)
            valid[:, 0] = False                # padding
            valid[rows, tgt] = False           # the target is the positive, not an "other"
            if exclude is not None:
                ex_rows, ex_items = _flatten(exclude, start, stop, num_items, "exclude list")
                if len(ex_rows):
                    valid[torch.from_numpy(ex_rows).to(device),
                          torch.from_numpy(ex_items).to(device)] = False
            out.append(ranks_from_scores(pos, scores, ties, valid).cpu().numpy())
            if topk:
                valid[rows, tgt] = True        # the target is on the list like any item
                keep = valid & ~torch.isnan(scores)      # a NaN score is never recommended
                top = scores.masked_fill(~keep, float("-inf")).topk(topk, dim=1).indices
                # a case with fewer admissible items than topk (a small catalogue, most of
                # it in the history): the slots past them hold 0, not an excluded item
                top = top.masked_fill(~keep.gather(1, top), 0)
                tops.append(top.cpu().numpy().astype(np.int64))
            bar.update(b)
    if topk:
        return np.concatenate(out), np.concatenate(tops)
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------------
# full-catalogue ranking from factored scores (user states x item table)

StatesFn = Callable[[torch.Tensor], torch.Tensor]

#: Scores computed at once by :func:`full_ranking_ranks_factored` (one tile: some users x one
#: item block) when ``block_cells`` is not given. On a CPU the tile must stay in cache between
#: the matmul and the passes that read it back (the counts, the top-k): with 64-wide states,
#: tiles of 2^20 scores ran 2-4x faster per score than tiles of 2^24 (1 thread). On a GPU
#: larger tiles amortise the kernel launches.
BLOCK_CELLS_CPU = 1 << 20
BLOCK_CELLS_CUDA = 1 << 24
#: The default item block on a CPU: 1024 items (a 256 KiB slice of a 64-wide table, which
#: stays in a core's L2 cache while the matmul streams the users past it), 1024 users per
#: 2^20 tile. Matmul and count ran 0.85 against 1.03 ns per score for 256 x 4096 tiles
#: (2 threads, 3 alternations); a ``torch.topk`` over whole blocks, which wanted long rows,
#: now runs on the first block only (see :func:`_merge_block`).
ITEM_BLOCK_CPU = 1024


def default_block_cells(device: torch.device | str = "cpu") -> int:
    """The default ``block_cells`` of :func:`full_ranking_ranks_factored` on ``device``."""
    return BLOCK_CELLS_CUDA if torch.device(device).type == "cuda" else BLOCK_CELLS_CPU


def default_item_block(batch_size: int, device: torch.device | str = "cpu") -> int:
    """The default ``item_block`` of :func:`full_ranking_ranks_factored`.

    On a GPU, the widest block that keeps a whole batch x block within
    :data:`BLOCK_CELLS_CUDA` scores (one tile per block and batch); on a CPU
    :data:`ITEM_BLOCK_CPU` items, a batch being cut into tiles of :data:`BLOCK_CELLS_CPU`.
    """
    if torch.device(device).type == "cuda":
        return max(1, BLOCK_CELLS_CUDA // max(1, int(batch_size)))
    return ITEM_BLOCK_CPU


class _ItemBlocks:
    """Items 1..N cut into blocks of one common width, the last one padded with zero rows.

    Every block matmul of a tile then has the same shape (tile users x ``width``), so a
    (user, item) score comes out of the same kernel whichever block holds the item; the
    target's score is read from a matmul of that shape too (see :func:`_target_scores`).
    """

    def __init__(self, items: torch.Tensor, num_items: int, item_block: int):
        n_blocks = -(-num_items // item_block)
        self.width = -(-num_items // n_blocks)        # balanced: padding < n_blocks columns
        self.items = items
        self.num_items = num_items
        self.starts = [1 + j * self.width for j in range(n_blocks)]
        #: block boundaries as item ids, for searchsorted: block j is [edges[j], edges[j+1])
        self.edges = np.array(self.starts + [num_items + 1], dtype=np.int64)
        last = self.starts[-1]
        self.tail = None
        if num_items + 1 - last < self.width:
            self.tail = items.new_zeros((self.width, items.shape[1]))
            self.tail[: num_items + 1 - last] = items[last: num_items + 1]

    def __len__(self) -> int:
        return len(self.starts)

    def flat_index(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Where each (tile row, item) score sits in its block's flattened (rows x ``width``)
        score matrix."""
        first = self.edges[np.searchsorted(self.edges, items, side="right") - 1]
        return rows * self.width + (items - first)

    def block(self, j: int) -> tuple[torch.Tensor, int, int]:
        """(width, H) rows of block ``j``, its first item id and its number of real items."""
        start = self.starts[j]
        real = min(self.width, self.num_items + 1 - start)
        if real < self.width:
            return self.tail, start, real
        return self.items[start: start + self.width], start, real


def _block_scores(states: torch.Tensor, rows: torch.Tensor,
                  buf: torch.Tensor | None = None) -> torch.Tensor:
    """``states @ rows.T``, 16-bit results widened to float32 (as the trainer's score_fn).

    ``buf``: a float32 workspace of at least ``len(states) * len(rows)`` elements that
    float32 products are written into (the same product; on a CPU a fresh block for every
    item block cost as much as the product itself: 3.2 ms against 1.5 ms for 256 x 4,096).
    """
    if buf is not None and states.dtype == rows.dtype == buf.dtype == torch.float32:
        out = buf[:len(states) * len(rows)].view(len(states), len(rows))
        return torch.mm(states, rows.T, out=out)
    out = states @ rows.T
    return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out


def _target_scores(states: torch.Tensor, items: torch.Tensor, tgt: torch.Tensor,
                   width: int) -> torch.Tensor:
    """Each row's score of its target, from matmuls of the block shape (b, ``width``).

    A separate dot product would round differently from the matmul that scores the other
    items, and turn exact ties (e.g. a duplicated item row) into strict wins or losses. The
    targets' rows are laid out as the columns of blocks of the usual width (zero-padded) and
    scored like any item block; row i's target sits in column i mod width.
    """
    b = len(states)
    parts = []
    for lo in range(0, b, width):
        hi = min(lo + width, b)
        block = items.new_zeros((width, items.shape[1]))
        block[: hi - lo] = items[tgt[lo:hi]]
        cols = torch.arange(hi - lo, device=states.device)
        parts.append(_block_scores(states, block)[lo + cols, cols])
    return torch.cat(parts)


class _Exclusions:
    """One tile's excluded (row, item) pairs: unique, without 0 or the row's target, sorted
    by item so that each item block's pairs are one slice.

    ``flat``: each pair's index in the flattened (tile rows x ``width``) score block of its
    item's block, so that a block's excluded scores are one ``index_select``.
    """

    def __init__(self, exclude: Sequence[np.ndarray], start: int, stop: int,
                 targets: np.ndarray, num_items: int, blocks: "_ItemBlocks",
                 device: torch.device):
        b = stop - start
        rows, items = _flatten(exclude, start, stop, num_items, "exclude list")
        keep = (items > 0) & (items != targets[start + rows])
        keys = np.unique(items[keep] * b + rows[keep])      # sorted by item, then row
        items, rows = keys // b, keys % b
        self.count = torch.from_numpy(np.bincount(rows, minlength=b)).to(device)
        self.bounds = np.searchsorted(items, blocks.edges).tolist()
        self.rows = torch.from_numpy(rows).to(device)
        self.flat = torch.from_numpy(blocks.flat_index(rows, items)).to(device)

    def __len__(self) -> int:
        return len(self.rows)


def _block_top(scores: torch.Tensor, start: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best entries of each row of a masked block (masked = -inf): (values, ids).

    Which tied entries make the cut is decided by id (the lowest first), so the selection does
    not depend on how the catalogue is cut into blocks: ``torch.topk`` alone picks among ties
    at the cut arbitrarily. Rows with a tie across the cut (the (k+1)-th value equals the k-th)
    are re-selected exactly: everything above the cut value, then the first tied columns.
    """
    b, w = scores.shape
    kk = min(k, w)
    if kk == w:
        ids = torch.arange(w, device=scores.device).expand(b, w)
        return scores, ids + start
    values, ids = scores.topk(kk + 1, dim=1)
    cut = values[:, kk - 1]
    tied = (values[:, kk] == cut) & (cut > float("-inf"))
    values, ids = values[:, :kk], ids[:, :kk]
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        sub = scores[rows]
        edge = cut[rows, None]
        above = sub > edge
        equal = sub == edge
        room = kk - above.sum(dim=1, keepdim=True)
        chosen = above | (equal & (equal.cumsum(dim=1) <= room))   # exactly kk per row
        cols = chosen.nonzero()[:, 1].view(len(rows), kk)
        values = values.clone()
        ids = ids.clone()
        values[rows] = sub.gather(1, cols)
        ids[rows] = cols
    return values, ids + start


def _merge_top(best: tuple[torch.Tensor, torch.Tensor] | None,
               block: tuple[torch.Tensor, torch.Tensor], k: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a block's candidates into the running top-k: value descending, then id ascending."""
    values, ids = block
    if best is not None:
        values = torch.cat([best[0], values], dim=1)
        ids = torch.cat([best[1], ids], dim=1)
    ids, order = ids.sort(dim=1)                     # ids are unique within a row
    values = values.gather(1, order)
    values, order = values.sort(dim=1, descending=True, stable=True)
    ids = ids.gather(1, order)
    return values[:, :k], ids[:, :k]


def _listable(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` in place as :func:`_block_top` takes them: NaN (never listed) becomes -inf,
    and a genuine -inf the lowest finite value, so it still ranks above the masked entries."""
    return torch.nan_to_num_(scores, nan=float("-inf"), posinf=float("inf"),
                             neginf=torch.finfo(scores.dtype).min)


def _merge_block(top: "_RunningTop", full: torch.Tensor, real: int, start: int) -> None:
    """Take the block of items ``start..`` into the running lists ``top``: ``full`` is the
    contiguous (b, width) score block, of which the first ``real`` columns are items; its
    scores hold NaN where an item is not to be listed (NaN scores and excluded items); the
    block may be overwritten.

    Blocks come in ascending item order, so an item of this block that only ties with a row's
    k-th value loses the tie (to a lower id): only the entries strictly above their row's k-th
    value can enter its list. After the first blocks they are few (about one per row and block
    for random scores), so they are picked out of the block and left pending in ``top``, to be
    merged a batch at a time (:meth:`_RunningTop.flush`); the cut they are picked against is
    each list's k-th value at its last merge, never above the true one, so nothing that could
    enter is left out. The first block, rows whose list still has empty (-inf) slots, and a
    block with many entries above the cut (scores that grow with the item id) go through
    :func:`_block_top` and are merged at once. The lists are exactly those of merging every
    block whole.
    """
    k = top.k
    scores = full[:, :real] if real < full.shape[1] else full
    if top.values is None or top.values.shape[1] < k:
        best = None if top.values is None else (top.values, top.ids)
        top.values, top.ids = _merge_top(best, _block_top(_listable(scores), start, k), k)
        if top.values.shape[1] == k:
            top.kth = top.values[:, k - 1:k].clone()
        return
    b = len(scores)
    peaks = _chunk_max(full)
    dense = top.kth[:, 0] == float("-inf")       # every admissible item of these rows competes
    r, v, c = _entries_above(full, real, peaks, top.kth, dense)
    many = len(r) > 4 * k * b
    if many and top.n_pending:
        top.flush()                              # the fresher cut may leave few entries
        r, v, c = _entries_above(full, real, peaks, top.kth, dense)
        many = len(r) > 4 * k * b
    if many:
        dense |= torch.bincount(r, minlength=b) > 0
    if bool(dense.any()):
        rows = dense.nonzero().squeeze(1)
        values, ids = _merge_top((top.values[rows], top.ids[rows]),
                                 _block_top(_listable(scores[rows]), start, k), k)
        top.values[rows], top.ids[rows] = values, ids
        top.kth[rows] = values[:, k - 1:k]
        keep = ~dense[r]
        r, v, c = r[keep], v[keep], c[keep]
    if len(r):
        top.add(r, v, c + start)


#: columns per chunk of :func:`_chunk_max`
HIT_CHUNK = 64


def _chunk_max(full: torch.Tensor) -> torch.Tensor:
    """(b, ceil(w / HIT_CHUNK)) maxima of a contiguous (b, w) block over chunks of
    :data:`HIT_CHUNK` columns (the last chunk may be narrower); NaN where a chunk holds one.
    One read of the block, nothing written back."""
    b, w = full.shape
    whole = w // HIT_CHUNK * HIT_CHUNK
    parts = [full[:, :whole].view(b, -1, HIT_CHUNK).amax(dim=2)] if whole else []
    if whole < w:
        parts.append(full[:, whole:].amax(dim=1, keepdim=True))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def _entries_above(full: torch.Tensor, real: int, peaks: torch.Tensor, cut: torch.Tensor,
                   skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The entries of a contiguous (b, w) block, columns below ``real``, strictly above their
    row's ``cut`` (b, 1), rows ``skip`` left out: (rows, values, columns), row-major.

    Only the chunks whose maximum ``peaks`` is not at or below the cut (above it, or NaN) are
    read, by one ``index_select`` from the flattened block; a NaN entry is never above.
    """
    b, w = full.shape
    look = ~(peaks <= cut)                       # above the cut, or a NaN inside
    look &= ~skip[:, None]
    chunks = look.nonzero()                      # row-major, chunks ascending
    span = torch.arange(HIT_CHUNK, device=full.device)
    r = chunks[:, 0]
    cols = (chunks[:, 1] * HIT_CHUNK)[:, None] + span           # (n, HIT_CHUNK)
    flat = (r * w)[:, None] + cols
    flat.clamp_(max=b * w - 1)                   # the last row's last chunk may be narrower
    vals = torch.index_select(full.view(-1), 0, flat.view(-1)).view(cols.shape)
    found = ((vals > cut[r]) & (cols < real)).view(-1).nonzero().squeeze(1)
    i = torch.div(found, HIT_CHUNK, rounding_mode="floor")
    return r[i], vals.view(-1)[found], cols.view(-1)[found]


class _RunningTop:
    """A tile's running top-k lists (value descending, then id ascending) and the entries
    picked out of later blocks that are not merged into them yet.

    ``kth`` (b, 1) is each list's k-th value at its last merge: the lists only improve, so it
    never exceeds the k-th value of the lists with every pending entry merged.
    """

    #: pending entries, as a multiple of the lists' size (b x k), that trigger a merge
    PENDING = 1

    def __init__(self, k: int):
        self.k = k
        self.values: torch.Tensor | None = None
        self.ids: torch.Tensor | None = None
        self.kth: torch.Tensor | None = None
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.n_pending = 0

    def add(self, rows: torch.Tensor, values: torch.Tensor, ids: torch.Tensor) -> None:
        """Entries (row, value, item id) for the lists, none of them already listed."""
        self.pending.append((rows, values, ids))
        self.n_pending += len(rows)
        if self.n_pending > self.PENDING * self.values.numel():
            self.flush()

    def flush(self) -> None:
        """Merge the pending entries into the lists, in place: three stable sorts (id, value,
        row), so ties are settled by id whatever order the entries came in."""
        if not self.n_pending:
            return
        r, v, i = (torch.cat(parts) for parts in zip(*self.pending))
        self.pending, self.n_pending = [], 0
        k = self.k
        rows = torch.unique(r)                                   # sorted
        m = len(rows)
        row_of = torch.cat([torch.arange(m, device=r.device).repeat_interleave(k),
                            torch.searchsorted(rows, r)])
        vals = torch.cat([self.values[rows].reshape(-1), v])
        item = torch.cat([self.ids[rows].reshape(-1), i])
        order = item.sort(stable=True).indices                   # ids are unique in a row
        order = order[vals[order].sort(descending=True, stable=True).indices]
        order = order[row_of[order].sort(stable=True).indices]
        per_row = torch.bincount(row_of, minlength=m)
        first = torch.cumsum(per_row, 0) - per_row
        keep = order[torch.arange(len(order), device=r.device) - first[row_of[order]] < k]
        values = vals[keep].view(m, k)
        self.values[rows] = values
        self.ids[rows] = item[keep].view(m, k)
        self.kth[rows] = values[:, k - 1:k]


def _count(op, scores: torch.Tensor, edge: torch.Tensor, work: torch.Tensor | None,
           acc: torch.Tensor) -> None:
    """Add to ``acc`` (float64, per row) how many of ``scores`` are ``op`` (torch.lt /
    torch.gt) than ``edge``.

    With a float32 workspace ``work`` the comparison is written as 0.0 / 1.0 into it and summed
    as floats: on a CPU the reduction of a bool block is the slow part (3.7 against 1.3 ms for
    256 x 4,096, one thread), and a float sum of at most 2^24 zeros and ones is exact.
    """
    if work is None or scores.shape[1] >= 1 << 24:
        acc += op(scores, edge).sum(dim=1)
        return
    out = work[:scores.numel()].view(scores.shape)
    acc += op(scores, edge, out=out).sum(dim=1)


def _sweep(states: torch.Tensor, tgt_flat: torch.Tensor, tgt_order: torch.Tensor,
           tgt_bounds: list[int], blocks: _ItemBlocks, ex: _Exclusions | None,
           pos: torch.Tensor | None, ties: str, topk: int, buf: torch.Tensor | None,
           work: torch.Tensor):
    """One pass of a tile of users over the item blocks.

    Counts, per row, the admissible others below (``lt``) and above (``gt``) the target's
    score ``pos`` (None: read it from the only block) without a mask: every block is counted
    whole (item 0 and rows > N are never in a block), and its excluded pairs' scores are put
    aside, their own comparisons subtracted after the sweep. Records the target's score as
    this pass computed it (``seen``) and, with ``topk``, keeps the running top-k
    (values, ids). Each block's target and excluded scores are one ``index_select`` each from
    the flattened block: ``tgt_flat`` holds the targets' places (:meth:`_ItemBlocks.flat_index`)
    in target order, ``tgt_order``, block j's being ``tgt_bounds[j:j + 2]``.
    """
    b = len(states)
    device = states.device
    lt = torch.zeros(b, dtype=torch.float64, device=device)
    gt = torch.zeros(b, dtype=torch.float64, device=device)
    dtype = torch.float64 if states.dtype == torch.float64 else torch.float32   # the scores'
    seen_sorted = torch.empty(b, dtype=dtype, device=device)
    ex_vals = None if ex is None else torch.empty(len(ex), dtype=dtype, device=device)
    seen = None
    top = _RunningTop(topk) if topk else None
    for j in range(len(blocks)):
        rows, start, real = blocks.block(j)
        full = _block_scores(states, rows, buf)
        scores = full[:, :real] if real < full.shape[1] else full
        flat = full.view(-1)
        lo, hi = tgt_bounds[j], tgt_bounds[j + 1]
        if hi > lo:
            torch.index_select(flat, 0, tgt_flat[lo:hi], out=seen_sorted[lo:hi])
        if pos is None:                  # a single block: every target was just read
            seen = torch.empty_like(seen_sorted)
            seen[tgt_order] = seen_sorted
            pos = seen.clone()
        edge = pos[:, None]
        # The target compares equal to itself, so it adds to neither count (a NaN target is
        # handled by the caller); NaN others add to neither, which is what the policies want
        # (pessimistic = admissible - lt counts them ahead).
        if ties != "optimistic":
            _count(torch.lt, scores, edge, work, lt)
        if ties != "pessimistic":
            _count(torch.gt, scores, edge, work, gt)
        if ex is not None:
            elo, ehi = ex.bounds[j], ex.bounds[j + 1]
            if ehi > elo:
                torch.index_select(flat, 0, ex.flat[elo:ehi], out=ex_vals[elo:ehi])
                if topk:
                    # the counts are done: excluded items become NaN, never listed
                    flat.index_fill_(0, ex.flat[elo:ehi], float("nan"))
        if topk:
            _merge_block(top, full, real, start)
    if seen is None:
        seen = torch.empty_like(seen_sorted)
        seen[tgt_order] = seen_sorted
    if ex is not None and len(ex):
        at = pos[ex.rows]
        if ties != "optimistic":
            lt.index_add_(0, ex.rows, (ex_vals < at).to(lt.dtype), alpha=-1)
        if ties != "pessimistic":
            gt.index_add_(0, ex.rows, (ex_vals > at).to(gt.dtype), alpha=-1)
    best = None
    if topk:
        top.flush()
        best = (top.values, top.ids)
    return lt.to(torch.int64), gt.to(torch.int64), seen, pos, best


def _rank_tile(states: torch.Tensor, targets: np.ndarray, start: int, stop: int,
               exclude: Sequence[np.ndarray] | None, blocks: _ItemBlocks, num_items: int,
               ties: str, topk: int, buf: torch.Tensor | None, work: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ranks (and top-k ids) of cases ``start..stop``, whose states are ``states``."""
    device = states.device
    b = stop - start
    tgt_np = targets[start:stop]
    tgt = torch.from_numpy(tgt_np).to(device)
    order = np.argsort(tgt_np, kind="stable")
    tgt_bounds = np.searchsorted(tgt_np[order], blocks.edges).tolist()
    tgt_order = torch.from_numpy(order).to(device)
    tgt_flat = torch.from_numpy(blocks.flat_index(order, tgt_np[order])).to(device)
    ex = None if exclude is None else _Exclusions(exclude, start, stop, targets, num_items,
                                                  blocks, device)
    pos = None if len(blocks) == 1 else _target_scores(states, blocks.items, tgt, blocks.width)
    lt, gt, seen, pos, best = _sweep(states, tgt_flat, tgt_order, tgt_bounds, blocks, ex, pos,
                                     ties, topk, buf, work)
    if not bool(((seen == pos) | (torch.isnan(seen) & torch.isnan(pos))).all()):
        # the sweep rounded some target's score differently from _target_scores: count again
        # against the sweep's own values (the same matmuls, hence the same values)
        pos = seen
        lt, gt, _, _, _ = _sweep(states, tgt_flat, tgt_order, tgt_bounds, blocks, ex, pos, ties, 0,
                                 buf, work)
    n_valid = num_items - 1 - (0 if ex is None else ex.count)     # not 0, not the target
    n_valid = torch.as_tensor(n_valid, dtype=torch.int64, device=device).expand(b)
    if ties == "pessimistic":
        ranks = n_valid - lt
    elif ties == "optimistic":
        ranks = gt
    else:  # higher + tied / 2 = (pessimistic + optimistic) / 2
        ranks = ((n_valid - lt) + gt).to(torch.float64) / 2
        n_valid = n_valid.to(torch.float64)
    ranks = torch.where(torch.isnan(pos), n_valid, ranks)
    top = None
    if topk:
        values, ids = best
        top = ids.masked_fill(values == float("-inf"), 0)
    return ranks, top


def full_ranking_ranks_factored(states_fn: StatesFn, items: torch.Tensor, users: np.ndarray,
                                targets: np.ndarray, num_items: int, *,
                                batch_size: int = 1024, item_block: int | None = None,
                                block_cells: int | None = None,
                                exclude: Sequence[np.ndarray] | None = None,
                                ties: str = "pessimistic", progress: bool = True,
                                topk: int = 0) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """:func:`full_ranking_ranks` for scores ``states @ items.T``, without the score matrix.

    No (batch, N + 1) score block or mask is ever built. Each batch of user states is cut into
    tiles of users, and each tile sweeps the catalogue in blocks of at most ``item_block``
    items: a block's scores (tile users x block items, at most about ``block_cells`` of them)
    are compared with the targets' scores and counted, and, with ``topk``, merged into a
    running top-k, before the next block is computed. Memory is bounded by the tile, whatever
    the catalogue size; exclusions cost memory in proportion to their number, not to N.

    The ranks are those of :func:`full_ranking_ranks` with ``score_fn = states @ items.T``:
    same tie policies, same NaN rules (a NaN target gets the worst rank, a NaN other ties
    with it), same exclusions. Exactness: the target's score comes from a matmul of the
    block's shape, not from a separate dot product, so it rounds as the other items' scores
    do and an item row equal to the target's ties with it exactly. Should a kernel round a
    target's score differently in its own block (a rounding that depends on the column), the
    tile is counted again against the values its sweep computed, so a target always compares
    equal to itself. Block matmuls may round differently from one (batch, M) matmul, by an
    ulp here and there; where such an ulp decides a near-tie, a rank can differ from the one
    ``full_ranking_ranks`` derives from the whole-row matmul (both are exact for their scores).

    Args:
        states_fn: ``states_fn(user_rows: LongTensor (b,)) -> (b, H)`` float tensor on any
            device (moved to ``items``' device); called under ``torch.no_grad``.
        items: (M, H) item table, M >= N + 1. Row 0 (padding) and rows > N (e.g. a mask
            token) are never candidates. Scores are ``states.to(items.dtype) @ items.T``,
            16-bit results widened to float32; call this under ``torch.autocast`` to score as
            an autocast score_fn would (the trainer does).
        users: (n,) user rows handed to ``states_fn``.
        targets: (n,) target item ids in 1..N.
        num_items: N.
        batch_size: users per ``states_fn`` call.
        item_block: items per block (default :func:`default_item_block`). Blocks are
            balanced, each at most this wide.
        block_cells: scores per tile (default :func:`default_block_cells`: 2^20 on a CPU,
            2^24 on a GPU); a tile holds ``max(1, block_cells // block width)`` users of a
            batch. The results depend on none of ``batch_size``, ``item_block`` and
            ``block_cells`` (given the same scores, see above).
        exclude: optional per-case item ids removed from the candidates; id 0 is ignored,
            repeats count once and the target is never excluded (as in
            :func:`full_ranking_ranks`).
        ties: tie policy (see metrics.py).
        progress: show a tqdm bar.
        topk: also return each case's top ``topk`` items (every item 1..N but the excluded
            ones, the target included; a NaN score is never listed), best first; slots past
            the admissible items hold 0. Tied items are listed by id, lowest first, so the
            lists do not depend on the blocks. :func:`full_ranking_ranks` leaves the order
            of tied items to ``torch.topk`` (arbitrary), so the two agree id for id where no
            tie meets a list's cut or order, and score for score always. An item scored -inf
            is listed (below every finite score) before the list is padded with 0.

    Returns:
        (n,) int64 ranks (float64 for ties="average"); with ``topk``, also the (n, topk)
        int64 item ids.
    """
    users, targets = _check_full(users, targets, num_items, batch_size, exclude, ties, topk)
    n = len(users)
    if not isinstance(items, torch.Tensor) or items.dim() != 2 or \
            items.shape[0] < num_items + 1 or not items.is_floating_point():
        got = (f"{tuple(items.shape)} {items.dtype}" if isinstance(items, torch.Tensor)
               else type(items).__name__)
        raise ValueError(f"items must be a float (M, H) table with M >= {num_items + 1}; "
                         f"got {got}")
    item_block = default_item_block(batch_size, items.device) if item_block is None \
        else int(item_block)
    block_cells = default_block_cells(items.device) if block_cells is None \
        else int(block_cells)
    if item_block < 1:
        raise LlmesrError(f"the item block must be >= 1 item; got {item_block}")
    if block_cells < 1:
        raise LlmesrError(f"block_cells must be >= 1; got {block_cells}")
    if n == 0:
        empty = _empty_ranks(ties)
        return (empty, np.zeros((0, topk), dtype=np.int64)) if topk else empty

    items = items.detach()
    device = items.device
    blocks = _ItemBlocks(items, num_items, item_block)
    tile = max(1, block_cells // blocks.width)
    # one score workspace for every block of every tile (float32 tables)
    cells = min(tile, batch_size, n) * blocks.width
    buf = (torch.empty(cells, dtype=torch.float32, device=device)
           if items.dtype == torch.float32 else None)
    # and one for the comparisons that count the ranks (see _count)
    work = torch.empty(cells, dtype=torch.float32, device=device)
    out, tops = [], []
    with torch.no_grad(), tqdm(total=n, desc="full ranking", unit="user",
                               disable=not progress) as bar:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            b = stop - start
            states = states_fn(torch.from_numpy(users[start:stop]))
            if not isinstance(states, torch.Tensor) or states.shape != (b, items.shape[1]):
                got = tuple(states.shape) if isinstance(states, torch.Tensor) \
                    else type(states).__name__
                raise ValueError(f"states_fn returned {got}; expected ({b}, {items.shape[1]})")
            states = states.detach().to(device=device, dtype=items.dtype)
            for lo in range(0, b, tile):
                hi = min(lo + tile, b)
                ranks, top = _rank_tile(states[lo:hi], targets, start + lo, start + hi,
                                        exclude, blocks, num_items, ties, topk, buf, work)
                out.append(ranks.cpu().numpy())
                if topk:
                    tops.append(top.cpu().numpy().astype(np.int64))
            bar.update(b)
    if topk:
        return np.concatenate(out), np.concatenate(tops)
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------------
# sampled negatives


def fixed_rng(seed: int, split: str) -> np.random.Generator:
    """A generator that gives the same negatives every time for (seed, split).

    Pass it to :func:`sampled_ranks` for a fixed candidate set per user (a cleaner variant than
    the paper's redraw at every evaluation, SPEC §11). ``split`` (e.g. "valid", "test") is
    hashed with SHA-256, not Python's salted ``hash``, so the stream is stable across processes.
    """
    if int(seed) < 0:
        raise LlmesrError(f"seed must be >= 0; got {seed}")
    digest = hashlib.sha256(str(split).encode("utf-8")).digest()
    words = np.frombuffer(digest[:16], dtype="<u4").tolist()
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words]))


def _admissible_draws(keys: np.ndarray, excl: np.ndarray) -> np.ndarray:
    """(r, w) bool: the draw is not excluded and is the first of its value in its row.

    ``keys`` (r, w) are row * (N + 1) + item with rows ascending, so sorting each row makes the
    whole array sorted: the membership test against the sorted ``excl`` then walks both in order
    (much faster than probing it at random), and repeats sit next to each other. The stable sort
    keeps the earliest draw of a repeated value.
    """
    order = np.argsort(keys, axis=1, kind="stable")
    ranked = np.take_along_axis(keys, order, axis=1)
    ok_sorted = np.ones(keys.shape, dtype=bool)
    ok_sorted[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    if len(excl):
        flat = ranked.reshape(-1)
        at = np.minimum(np.searchsorted(excl, flat), len(excl) - 1)
        ok_sorted &= (excl[at] != flat).reshape(keys.shape)
    ok = np.empty_like(ok_sorted)
    np.put_along_axis(ok, order, ok_sorted, axis=1)
    return ok


def _sample_block(targets: np.ndarray, histories: Sequence[np.ndarray], start: int, stop: int,
                  num_items: int, n_neg: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Negatives for cases start..stop: ((m, n_neg) int64 ids, (m, n_neg) bool valid)."""
    m = stop - start
    width = num_items + 1
    h_rows, h_items = _flatten(histories, start, stop, num_items, "history")
    # Excluded (row, item) pairs as sorted unique keys row * (N + 1) + item: history, target, 0.
    all_rows = np.concatenate([h_rows, np.arange(m, dtype=np.int64)])
    all_items = np.concatenate([h_items, targets[start:stop]])
    keep = all_items > 0
    excl = np.sort(all_rows[keep] * width + all_items[keep])
    excl = excl[np.concatenate([[True], excl[1:] != excl[:-1]])]  # unique (already sorted)
    admissible = num_items - np.bincount(excl // width, minlength=m)
    want = np.minimum(admissible, n_neg)

    neg = np.zeros((m, n_neg), dtype=np.int64)
    filled = np.zeros(m, dtype=np.int64)
    dense = (admissible < DENSE_MULTIPLE * n_neg) | (admissible < DENSE_ACCEPTANCE * num_items)

    # Exact sampler for rows where rejection would be slow: a uniform key per admissible item,
    # the n_neg smallest keys win (a uniform subset without replacement).
    dense_rows = np.flatnonzero(dense)
    take = min(n_neg, width)
    step = max(1, DENSE_CELLS // width)
    for lo in range(0, len(dense_rows), step):
        rows = dense_rows[lo:lo + step]
        keys = rng.random((len(rows), width))
        keys[:, 0] = np.inf
        sel = np.isin(excl // width, rows)
        local = np.searchsorted(rows, excl[sel] // width)
        keys[local, excl[sel] % width] = np.inf
        if take < width:
            idx = np.argpartition(keys, take - 1, axis=1)[:, :take]
        else:
            idx = np.broadcast_to(np.arange(width), (len(rows), width))
        ok = np.isfinite(np.take_along_axis(keys, idx, axis=1))
        # Admissible ids first, so slot j is valid exactly when j < want.
        order = np.argsort(~ok, axis=1, kind="stable")
        neg[rows, :take] = np.where(np.take_along_axis(ok, order, axis=1),
                                    np.take_along_axis(idx, order, axis=1), 0)
        filled[rows] = want[rows]

    # Rejection sampler for the rest (at least half of 1..N and 4 * n_neg items admissible):
    # draw with replacement in bulk, drop excluded ids and repeats (keeping the first draw, which
    # is exactly sequential draw-and-reject, hence uniform without replacement), keep the first
    # n_neg survivors in draw order, and top up the few short rows in another round.
    short = np.flatnonzero(~dense)
    while len(short):
        acceptance = admissible[short].min() / num_items
        need = n_neg - filled[short]
        draws = int(np.ceil(need.max() / acceptance * OVERSAMPLE)) + 8
        kept = int(filled[short].max())  # accepted so far (0 in the first round) go first
        cand = np.concatenate([np.where(np.arange(kept) < filled[short, None],
                                        neg[short, :kept], 0),
                               rng.integers(1, width, size=(len(short), draws))], axis=1)
        ok = (cand > 0) & _admissible_draws(short[:, None] * width + cand, excl)
        slot = np.cumsum(ok, axis=1) - 1
        ok &= slot < n_neg
        r, c = np.nonzero(ok)
        neg[short[r], slot[r, c]] = cand[r, c]
        filled[short] = ok.sum(axis=1)
        short = short[filled[short] < want[short]]

    valid = np.arange(n_neg)[None, :] < want[:, None]
    return neg, valid


def sample_negatives(targets: np.ndarray, num_items: int, histories: Sequence[np.ndarray], *,
                     n_neg: int = 100,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Uniform negatives from 1..N without replacement, excluding each case's history and target.

    Args:
        targets: (n,) target ids in 1..N.
        num_items: N.
        histories: per case, the ids to exclude (the paper: the user's full sequence); 0 ignored.
        n_neg: negatives per case.
        rng: the generator; the draws depend only on it and the inputs (not on any batch size).

    Returns:
        ``(negatives, valid)``, both (n, n_neg): int64 ids and bool. A case whose exclusions leave
        fewer than n_neg admissible items gets all of them; its remaining slots hold 0 with
        valid False.
    """
    targets = np.asarray(targets, dtype=np.int64)
    _check_cases(targets, targets, num_items, 1)
    if int(n_neg) < 1:
        raise LlmesrError(f"the number of sampled negatives must be >= 1; got {n_neg}")
    if len(histories) != len(targets):
        raise ValueError(f"histories has {len(histories)} entries for {len(targets)} cases")
    negs, valids = [], []
    for start in range(0, len(targets), SAMPLE_BLOCK):
        stop = min(start + SAMPLE_BLOCK, len(targets))
        neg, valid = _sample_block(targets, histories, start, stop, num_items, int(n_neg), rng)
        negs.append(neg)
        valids.append(valid)
    if not negs:
        return np.zeros((0, n_neg), dtype=np.int64), np.zeros((0, n_neg), dtype=bool)
    return np.concatenate(negs), np.concatenate(valids)


def sampled_ranks(score_fn: ScoreFn, users: np.ndarray, targets: np.ndarray, num_items: int,
                  histories: Sequence[np.ndarray], *, n_neg: int = 100,
                  rng: np.random.Generator, batch_size: int = 1024,
                  ties: str = "pessimistic", progress: bool = True) -> np.ndarray:
    """Rank of each target among itself and ``n_neg`` sampled negatives (the paper's protocol).

    ``score_fn`` receives candidates (b, 1 + n_neg) = [target, negatives...]; slots of cases
    with too few admissible items hold 0 (padding) and their scores are ignored. Negatives come
    from :func:`sample_negatives`. Pass a fresh generator state per evaluation to redraw them
    as the paper does, or :func:`fixed_rng` for the same candidates every time.

    Returns:
        (n,) int64 ranks in 0..n_neg (float64 for ties="average").
    """
    check_ties(ties)
    users, targets = _check_cases(users, targets, num_items, batch_size)
    if len(histories) != len(users):
        raise ValueError(f"histories has {len(histories)} entries for {len(users)} cases")
    n = len(users)
    if n == 0:
        return _empty_ranks(ties)
    out = []
    with tqdm(total=n, desc="sampled ranking", unit="user", disable=not progress) as bar:
        for block in range(0, n, SAMPLE_BLOCK):
            block_stop = min(block + SAMPLE_BLOCK, n)
            neg, valid = sample_negatives(targets[block:block_stop], num_items,
                                          histories[block:block_stop], n_neg=n_neg, rng=rng)
            for start in range(0, block_stop - block, batch_size):
                stop = min(start + batch_size, block_stop - block)
                cand = np.concatenate([targets[block + start:block + stop, None],
                                       neg[start:stop]], axis=1)
                scores = _scores(score_fn, users[block + start:block + stop], cand, 1 + n_neg)
                if scores.shape[1] != 1 + n_neg:
                    raise ValueError(f"score_fn returned {tuple(scores.shape)} scores for "
                                     f"{tuple(cand.shape)} candidates")
                ok = torch.from_numpy(valid[start:stop]).to(scores.device)
                out.append(ranks_from_scores(scores[:, 0], scores[:, 1:], ties, ok).cpu().numpy())
                bar.update(stop - start)
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------------
# long-tail groups


def group_masks(tail_user: np.ndarray, tail_item: np.ndarray) -> dict[str, np.ndarray]:
    """The five long-tail groups (SPEC §2) as bool masks over the cases."""
    return {"overall": np.ones(tail_user.shape, dtype=bool),
            "tail_item": tail_item, "head_item": ~tail_item,
            "tail_user": tail_user, "head_user": ~tail_user}


def group_metrics(ranks: np.ndarray, tail_user: np.ndarray, tail_item: np.ndarray,
                  ks: Sequence[int] = DEFAULT_KS) -> dict:
    """Metrics overall and per long-tail group (SPEC §2), with group sizes.

    Args:
        ranks: (n,) 0-based ranks.
        tail_user: (n,) bool, True where the case's user is a tail user (short history).
        tail_item: (n,) bool, True where the case's target is a tail item (unpopular).

    Returns:
        ``{"overall", "tail_item", "head_item", "tail_user", "head_user"}`` -> metric dicts
        (see :func:`metrics_from_ranks`; an empty group has NaN values), and ``"counts"`` ->
        the number of cases in each of those groups.
    """
    ranks = np.asarray(ranks).reshape(-1)
    tail_user = np.asarray(tail_user)
    tail_item = np.asarray(tail_item)
    for name, mask in (("tail_user", tail_user), ("tail_item", tail_item)):
        if mask.dtype != bool or mask.shape != ranks.shape:
            raise ValueError(f"{name} must be a bool array of shape {ranks.shape}; got "
                             f"{mask.dtype} {mask.shape}")
    groups = group_masks(tail_user, tail_item)
    out: dict = {name: metrics_from_ranks(ranks[mask], ks) for name, mask in groups.items()}
    out["counts"] = {name: int(mask.sum()) for name, mask in groups.items()}
    return out
