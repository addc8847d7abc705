"""Full ranking from factored scores (states @ items.T) in bounded tiles, against the
score_fn driver that ranks one whole (batch, N + 1) score block at a time.

Exactness. A block matmul may round a score differently from one whole-row matmul (by an ulp;
it does on CPU for random floats), so the cases compared with ``full_ranking_ranks`` use small
integers (states and items in -4..4, hidden 16): every product and partial sum is an integer
below 2^24, exact in float32 whatever the kernel's order of summation, and the two drivers
see bit-identical scores. Such data also has many exact ties, which the tie policies and the
top-k tie order must handle. The tie-free variant adds ``item_id / 2048`` (a dyadic number,
also exact) through one extra hidden column.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmesr.errors import LlmesrError
from llmesr.evaluation import protocols
from llmesr.evaluation.protocols import (
    default_block_cells,
    default_item_block,
    full_ranking_ranks,
    full_ranking_ranks_factored,
)

N_USERS, N_ITEMS, HIDDEN = 150, 389, 16
TIES = ("pessimistic", "optimistic", "average")
# (batch_size, item_block, block_cells): one block and one tile; blocks that do not divide the
# catalogue; one-item blocks; tiles smaller than a batch (and than the block width, so the
# targets' matmul needs several column blocks); a batch larger than all the cases.
LAYOUTS = [(64, 1000, 1 << 20), (64, 100, 1 << 20), (17, 389, 1 << 20), (150, 1, 1 << 20),
           (1000, 33, 200), (40, 128, 1000), (7, 50, 8)]


def _data(tie_free: bool = False, seed: int = 0):
    """Integer-valued states (N_USERS, H) and items (N + 2, H: row 0 padding, row N + 1 a
    mask token scoring high), with duplicated item rows, a NaN user and a NaN item; targets
    that fall on the duplicated rows; exclusion lists with repeats, targets and 0 inside."""
    rng = np.random.default_rng(seed)
    states = rng.integers(-4, 5, (N_USERS, HIDDEN)).astype(np.float32)
    items = rng.integers(-4, 5, (N_ITEMS + 2, HIDDEN)).astype(np.float32)
    items[[5, 77, 300]] = items[42]                  # exact ties with item 42
    items[200:260] = items[199]                      # a long run of identical items
    items[0] = 50.0                                  # padding and mask token: never candidates
    items[N_ITEMS + 1] = 50.0
    if tie_free:
        # one column more: states 1, items id / 2048 (< 1, dyadic): all scores distinct
        states = np.concatenate([states, np.ones((N_USERS, 1), np.float32)], axis=1)
        items = np.concatenate([items, (np.arange(N_ITEMS + 2, dtype=np.float32)
                                        / 2048)[:, None]], axis=1)
    else:
        states[3] = np.nan                            # a user whose every score is NaN
        items[17] = np.nan                            # an item NaN for every user
    targets = rng.integers(1, N_ITEMS + 1, N_USERS)
    targets[:10] = 42
    targets[10:20] = 230
    targets[20] = 17                                  # a NaN target
    exclude = []
    for i in range(N_USERS):
        ex = rng.integers(0, N_ITEMS + 1, rng.integers(0, 40))
        ex = np.concatenate([ex, ex[: len(ex) // 3], [0, targets[i]]])   # repeats, 0, target
        exclude.append(rng.permutation(ex))
    exclude[4] = np.array([], dtype=np.int64)
    exclude[10] = np.arange(200, 260)                 # the target's whole tie run excluded
    exclude[11] = np.arange(1, N_ITEMS + 1)           # everything but the target
    users = rng.permutation(N_USERS)
    return torch.from_numpy(states), torch.from_numpy(items), users, targets, exclude


def _score_fn(states, items):
    return lambda rows, candidates: states[rows] @ items.T


def _states_fn(states):
    return lambda rows: states[rows]


def _reference_top(scores: np.ndarray, targets, exclude, k: int) -> np.ndarray:
    """Per-case top-k by score descending, ties by id ascending (plain numpy)."""
    out = np.zeros((len(scores), k), dtype=np.int64)
    for i, row in enumerate(scores):
        ok = ~np.isnan(row[: N_ITEMS + 1])
        ok[0] = False
        ex = np.asarray(exclude[i], dtype=np.int64)
        ok[ex[ex != targets[i]]] = False
        ids = np.flatnonzero(ok)
        ids = ids[np.lexsort((ids, -row[ids]))][:k]
        out[i, : len(ids)] = ids
    return out


@pytest.mark.parametrize("ties", TIES)
@pytest.mark.parametrize("batch_size,item_block,cells", LAYOUTS)
def test_ranks_equal_the_score_fn_driver(ties, batch_size, item_block, cells):
    states, items, users, targets, exclude = _data()
    want = full_ranking_ranks(_score_fn(states, items), users, targets, N_ITEMS,
                              batch_size=64, exclude=exclude, ties=ties, progress=False)
    got = full_ranking_ranks_factored(_states_fn(states), items, users, targets, N_ITEMS,
                                      batch_size=batch_size, item_block=item_block,
                                      block_cells=cells, exclude=exclude, ties=ties,
                                      progress=False)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    # and without exclusions
    want = full_ranking_ranks(_score_fn(states, items), users, targets, N_ITEMS,
                              ties=ties, progress=False)
    got = full_ranking_ranks_factored(_states_fn(states), items, users, targets, N_ITEMS,
                                      batch_size=batch_size, item_block=item_block,
                                      block_cells=cells, ties=ties, progress=False)
    np.testing.assert_array_equal(got, want)


def test_ranks_by_hand_on_ties_nan_and_exclusions():
    states, items, users, targets, exclude = _data()
    ranks = {t: full_ranking_ranks_factored(_states_fn(states), items, users, targets, N_ITEMS,
                                            item_block=50, exclude=exclude, ties=t,
                                            progress=False) for t in TIES}
    for i, (u, t) in enumerate(zip(users, targets)):
        row = (states[u] @ items.T).numpy()
        ex = np.asarray(exclude[i])
        cand = np.setdiff1d(np.arange(1, N_ITEMS + 1), np.append(ex[ex != t], t))
        if np.isnan(row[t]):
            assert ranks["pessimistic"][i] == ranks["optimistic"][i] == len(cand)
            continue
        higher = int((row[cand] > row[t]).sum())
        not_lower = len(cand) - int((row[cand] < row[t]).sum())    # ties and NaN count ahead
        assert ranks["optimistic"][i] == higher
        assert ranks["pessimistic"][i] == not_lower
        assert ranks["average"][i] == (higher + not_lower) / 2
    # case 11 excluded every item but its target: rank 0 under every policy
    assert {ranks[t][11] for t in TIES} == {0}


@pytest.mark.parametrize("k", [1, 3, 10, N_ITEMS])
@pytest.mark.parametrize("batch_size,item_block,cells", LAYOUTS)
def test_topk_equals_the_score_fn_driver_without_ties(k, batch_size, item_block, cells):
    states, items, users, targets, exclude = _data(tie_free=True)
    want_ranks, want = full_ranking_ranks(_score_fn(states, items), users, targets, N_ITEMS,
                                          exclude=exclude, progress=False, topk=k)
    ranks, top = full_ranking_ranks_factored(_states_fn(states), items, users, targets,
                                             N_ITEMS, batch_size=batch_size,
                                             item_block=item_block, block_cells=cells,
                                             exclude=exclude, progress=False, topk=k)
    assert top.dtype == np.int64 and top.shape == (N_USERS, k)
    np.testing.assert_array_equal(top, want)
    np.testing.assert_array_equal(ranks, want_ranks)


@pytest.mark.parametrize("k", [1, 4, 25, N_ITEMS])
@pytest.mark.parametrize("batch_size,item_block,cells", LAYOUTS)
def test_topk_with_ties_lists_lowest_ids_first(k, batch_size, item_block, cells):
    """With ties, the lists follow (score desc, id asc) whatever the blocks; the score_fn
    driver's ``torch.topk`` orders ties arbitrarily, so only its scores must agree."""
    states, items, users, targets, exclude = _data()
    scores = (states[users] @ items.T).numpy()
    _, top = full_ranking_ranks_factored(_states_fn(states), items, users, targets, N_ITEMS,
                                         batch_size=batch_size, item_block=item_block,
                                         block_cells=cells, exclude=exclude, progress=False,
                                         topk=k)
    np.testing.assert_array_equal(top, _reference_top(scores, targets, exclude, k))
    _, old = full_ranking_ranks(_score_fn(states, items), users, targets, N_ITEMS,
                                exclude=exclude, progress=False, topk=k)

    def listed(t):
        return np.where(t > 0, np.take_along_axis(scores, t, axis=1), -np.inf)

    np.testing.assert_array_equal(listed(top), listed(old))
    assert not (top[list(users).index(3)] > 0).any()       # the NaN user: an empty list
    assert not (top == 17).any()                           # the NaN item: never listed


def test_topk_small_catalogue_pads_with_zero_and_lists_minus_inf():
    items = torch.tensor([[0.0], [1.0], [5.0], [3.0], [4.0], [2.0], [99.0]])   # N = 5
    states = torch.tensor([[1.0], [-1.0]])
    ranks, top = full_ranking_ranks_factored(_states_fn(states), items, np.array([0, 1]),
                                             np.array([4, 3]), 5, item_block=2,
                                             progress=False, topk=5,
                                             exclude=[np.array([1, 2, 5]), np.array([4])])
    assert top.tolist() == [[4, 3, 0, 0, 0], [1, 5, 3, 2, 0]]
    assert ranks.tolist() == [0, 2]
    # a genuine -inf score is listed (last), a NaN never
    items = torch.tensor([[0.0], [1.0], [float("-inf")], [float("nan")], [2.0]])
    _, top = full_ranking_ranks_factored(_states_fn(torch.ones(1, 1)), items, np.array([0]),
                                         np.array([1]), 4, item_block=1, progress=False,
                                         topk=4)
    assert top.tolist() == [[4, 1, 2, 0]]


@pytest.mark.parametrize("pending", [0, 1, 1000])
@pytest.mark.parametrize("trend", [1.0, -1.0, 0.0])
@pytest.mark.parametrize("k", [1, 10])
def test_topk_merge_paths_agree_with_the_reference(trend, k, pending, monkeypatch):
    """Scores growing with the item id (every block beats the lists: the dense fallback),
    falling with it (no later block enters) and without a trend (a few entries of each block
    are picked out, left pending and merged in batches), with ties, NaN, -inf and exclusions:
    the lists are the reference's, and each path was taken. ``pending``: merge at every
    block's entries (0), after about the lists' size (1, the default), or once a tile (1000).
    """
    rng = np.random.default_rng(5)
    n_items, n_users = 2000, 90
    items = rng.normal(size=(n_items + 1, 8)).astype(np.float32)
    items[:, 0] = trend * np.arange(n_items + 1)                # the trend
    items[[7, 900]] = np.nan
    items[300:320] = items[299]                                 # ties
    items[1500] = 0.0
    items[1500, 0] = -np.inf                                    # -inf for every user
    states = rng.normal(size=(n_users, 8)).astype(np.float32)
    states[:, 0] = 8.0                                          # steps of 8 between ids
    states[5] = np.nan                                          # a NaN row
    targets = rng.integers(1, n_items + 1, n_users)
    exclude = [rng.integers(0, n_items + 1, rng.integers(0, 300)) for _ in range(n_users)]
    exclude[9] = np.arange(1, n_items - 3)                      # a list with empty slots
    states, items = torch.from_numpy(states), torch.from_numpy(items)
    scores = (states @ items.T).numpy()
    scores[:, 0] = np.nan
    dense, picked, merges = [], [], []
    real_top = protocols._block_top
    real_add, real_flush = protocols._RunningTop.add, protocols._RunningTop.flush
    monkeypatch.setattr(protocols, "_block_top",
                        lambda s, start, kk: dense.append(len(s)) or real_top(s, start, kk))
    monkeypatch.setattr(protocols._RunningTop, "add", lambda self, r, v, i:
                        picked.append(len(r)) or real_add(self, r, v, i))
    monkeypatch.setattr(protocols._RunningTop, "flush", lambda self:
                        merges.append(self.n_pending) or real_flush(self))
    monkeypatch.setattr(protocols._RunningTop, "PENDING", pending)
    _, top = full_ranking_ranks_factored(_states_fn(states), items, np.arange(n_users),
                                         targets, n_items, batch_size=64, item_block=256,
                                         exclude=exclude, progress=False, topk=k)
    np.testing.assert_array_equal(top, _reference_top_n(scores, targets, exclude, k))
    blocks, first = 8, [64, 26]                                 # 2 batches of 8 blocks
    assert dense[0] == 64 and first[1] in dense
    if trend > 0:
        assert len(dense) == 2 * blocks and not picked          # every block, whole
    elif trend < 0:
        assert not picked and max(dense[1:blocks]) <= 2         # the NaN and the open row
    else:
        assert len(picked) >= blocks and max(dense[1:blocks]) <= 2
        batched = [m for m in merges if m]
        assert sum(batched) == sum(picked)                      # every entry merged once
        if pending == 0:
            assert len(batched) == len(picked)                  # a merge after each block
        else:                                                   # several blocks a merge
            assert len(batched) < len(picked)
        if pending == 1000:
            assert len(batched) == 2                            # once a tile


def _reference_top_n(scores: np.ndarray, targets, exclude, k: int) -> np.ndarray:
    out = np.zeros((len(scores), k), dtype=np.int64)
    for i, row in enumerate(scores):
        ok = ~np.isnan(row)
        ex = np.asarray(exclude[i], dtype=np.int64)
        ok[ex[ex != targets[i]]] = False
        ids = np.flatnonzero(ok)
        ids = ids[np.lexsort((ids, -np.nan_to_num(row[ids], neginf=-3e38)))][:k]
        out[i, : len(ids)] = ids
    return out


def test_a_target_rounded_apart_is_counted_again(monkeypatch):
    """If a kernel rounded a target's score differently in its own block than in the targets'
    matmul, the tile is counted again against the sweep's values: same ranks."""
    states, items, users, targets, exclude = _data()
    want = full_ranking_ranks(_score_fn(states, items), users, targets, N_ITEMS,
                              exclude=exclude, progress=False)
    real = protocols._target_scores
    sweeps = []
    real_sweep = protocols._sweep
    monkeypatch.setattr(protocols, "_target_scores",
                        lambda *a: real(*a) + 0.5)        # every target off by half a point
    monkeypatch.setattr(protocols, "_sweep",
                        lambda *a: sweeps.append(1) or real_sweep(*a))
    got = full_ranking_ranks_factored(_states_fn(states), items, users, targets, N_ITEMS,
                                      batch_size=64, item_block=100, exclude=exclude,
                                      progress=False)
    np.testing.assert_array_equal(got, want)
    assert len(sweeps) == 2 * 3                             # 3 tiles, each swept twice


def test_ranks_do_not_depend_on_the_layout_for_random_floats():
    """Random float scores (no exactness trick): the tiles' own values make the ranks, so
    they do not change with batch_size, item_block or block_cells."""
    rng = np.random.default_rng(1)
    states = torch.from_numpy(rng.standard_normal((300, 64)).astype(np.float32))
    items = torch.from_numpy(rng.standard_normal((2003, 64)).astype(np.float32))
    items[500:510] = items[100]
    targets = rng.integers(1, 2002, 300)
    targets[:5] = 100
    exclude = list(rng.integers(0, 2002, (300, 20)))
    runs = [full_ranking_ranks_factored(_states_fn(states), items, np.arange(300), targets,
                                        2001, batch_size=bs, item_block=ib, block_cells=bc,
                                        exclude=exclude, progress=False, topk=10)
            for bs, ib, bc in [(300, 4096, 1 << 20), (64, 512, 1 << 20), (100, 700, 5000)]]
    for ranks, top in runs[1:]:
        np.testing.assert_array_equal(ranks, runs[0][0])
        np.testing.assert_array_equal(top, runs[0][1])
    # the duplicates of target 100 tie with it exactly: pessimistic counts them all ahead
    old = full_ranking_ranks(_score_fn(states, items), np.arange(300), targets, 2001,
                             exclude=exclude, progress=False)
    for i in range(5):
        assert runs[0][0][i] >= len(set(range(500, 510)) - set(exclude[i].tolist()))
    assert np.abs(runs[0][0] - old).max() <= 1               # at most an ulp's near-tie


def test_bfloat16_table_is_widened_like_the_trainer():
    states, items, users, targets, _ = _data()
    table = items.to(torch.bfloat16)
    want = full_ranking_ranks(lambda r, c: (states[r].to(table.dtype) @ table.T).float(),
                              users, targets, N_ITEMS, progress=False)
    got = full_ranking_ranks_factored(_states_fn(states), table, users, targets, N_ITEMS,
                                      item_block=64, progress=False)
    np.testing.assert_array_equal(got, want)


def test_bounded_defaults():
    assert default_block_cells("cpu") <= 1 << 24 and default_block_cells("cuda") <= 1 << 24
    for bs in (1, 1024, 1 << 30):
        assert 1 <= default_item_block(bs, "cuda") and \
            bs * default_item_block(bs, "cuda") <= max(bs, 1 << 24)
    assert 1 <= default_item_block(1024, "cpu") <= 1 << 24


def test_tiles_stay_within_block_cells(monkeypatch):
    states, items, users, targets, exclude = _data()
    shapes, bufs = [], []
    real = protocols._block_scores

    def spy(s, r, buf=None):
        shapes.append((len(s), len(r)))
        if buf is not None:
            bufs.append(buf)
        return real(s, r, buf)

    monkeypatch.setattr(protocols, "_block_scores", spy)
    full_ranking_ranks_factored(_states_fn(states), items, users, targets, N_ITEMS,
                                batch_size=150, item_block=100, block_cells=1000,
                                exclude=exclude, progress=False, topk=5)
    assert shapes and max(a * b for a, b in shapes) <= 1000
    # the float32 blocks are written into one workspace, itself within block_cells
    assert bufs and len({b.data_ptr() for b in bufs}) == 1 and bufs[0].numel() <= 1000
    assert {b for _, b in shapes} == {98}                   # 389 items: 4 balanced blocks


@pytest.mark.parametrize("op", [torch.lt, torch.gt])
def test_counts_in_the_float_workspace_equal_the_bool_counts(op):
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(37, 301, generator=g)
    scores[3, 5], scores[4, :] = float("nan"), float("inf")
    scores[5, ::2] = float("-inf")
    edge = scores[:, 7:8].clone()
    edge[6] = float("nan")
    scores[8, :50] = edge[8]                                # ties count on neither side
    want = op(scores, edge).sum(dim=1)
    work = torch.full((40 * 301,), 7.0)                     # stale values are overwritten
    cols = scores[:, :250]                                  # a cut block (not contiguous)
    for s, w in ((scores, want), (cols, op(cols, edge).sum(dim=1))):
        acc = torch.full((37,), 5.0, dtype=torch.float64)   # the counts are added to it
        protocols._count(op, s, edge, work, acc)
        assert torch.equal(acc, w.to(torch.float64) + 5)
    acc = torch.zeros(37, dtype=torch.float64)
    protocols._count(op, scores, edge, None, acc)
    assert torch.equal(acc, want.to(torch.float64))


def test_input_errors_and_empty():
    states, items, *_ = _data()
    fn = _states_fn(states)
    with pytest.raises(LlmesrError, match="outside 1..389"):
        full_ranking_ranks_factored(fn, items, np.array([0]), np.array([390]), N_ITEMS,
                                    progress=False)
    with pytest.raises(LlmesrError, match="outside 0..389"):
        full_ranking_ranks_factored(fn, items, np.array([0]), np.array([1]), N_ITEMS,
                                    exclude=[np.array([390])], progress=False)
    with pytest.raises(LlmesrError, match="topk"):
        full_ranking_ranks_factored(fn, items, np.array([0]), np.array([1]), N_ITEMS,
                                    topk=N_ITEMS + 1, progress=False)
    with pytest.raises(LlmesrError, match="item block"):
        full_ranking_ranks_factored(fn, items, np.array([0]), np.array([1]), N_ITEMS,
                                    item_block=0, progress=False)
    with pytest.raises(LlmesrError, match="batch size"):
        full_ranking_ranks_factored(fn, items, np.array([0]), np.array([1]), N_ITEMS,
                                    batch_size=0, progress=False)
    with pytest.raises(LlmesrError, match="tie policy"):
        full_ranking_ranks_factored(fn, items, np.array([0]), np.array([1]), N_ITEMS,
                                    ties="random", progress=False)
    with pytest.raises(ValueError, match="items must be"):
        full_ranking_ranks_factored(fn, items[:N_ITEMS], np.array([0]), np.array([1]),
                                    N_ITEMS, progress=False)
    with pytest.raises(ValueError, match="states_fn returned"):
        full_ranking_ranks_factored(lambda r: states[r, :3], items, np.array([0]),
                                    np.array([1]), N_ITEMS, progress=False)
    with pytest.raises(ValueError, match="exclude has"):
        full_ranking_ranks_factored(fn, items, np.array([0]), np.array([1]), N_ITEMS,
                                    exclude=[], progress=False)
    calls = []
    out = full_ranking_ranks_factored(lambda r: calls.append(r) or states[r], items,
                                      np.array([], dtype=np.int64),
                                      np.array([], dtype=np.int64), N_ITEMS, progress=False,
                                      ties="average", topk=3)
    assert out[0].shape == (0,) and out[0].dtype == np.float64 and out[1].shape == (0, 3)
    assert not calls


# ------------------------------------------------------------------------------------------------
# the trainer


@pytest.mark.shared_data
@pytest.mark.parametrize("preset", ["default", "paper"])
def test_trainer_full_evaluation_ranks_unchanged(beauty_subset, tmp_path, monkeypatch,
                                                 preset):
    """Trainer.evaluate (factored) gives the ranks and top-k of full_ranking_ranks with the
    trainer's score_fn, on a trained model: exclude_seen on (default) and off (paper). Real
    float scores: this also checks that the tiles' matmuls round as the whole-row one does
    wherever it matters here. Small defaults force several item blocks and user tiles."""
    from llmesr.models.config import build_configs
    from llmesr.training.trainer import Trainer

    monkeypatch.setattr(protocols, "ITEM_BLOCK_CPU", 700)
    monkeypatch.setattr(protocols, "BLOCK_CELLS_CPU", 700 * 50)
    sweeps = []
    real_sweep = protocols._sweep
    monkeypatch.setattr(protocols, "_sweep", lambda *a: sweeps.append(len(a[0])) or
                        real_sweep(*a))

    mcfg, tcfg = build_configs(preset, "sasrec", "llmesr",
                               {"epochs": "1", "max_len": "30", "sd_teachers": "3",
                                "eval_batch_size": "128"})
    tr = Trainer(beauty_subset, mcfg, tcfg, tmp_path / "run", progress=False,
                 log=lambda *a: None, overwrite=True)
    tr.fit()
    lengths = tr.ds.users["length"].to_numpy()
    for split in ("valid", "test"):
        ranks, rows, top = tr.evaluate(split, "full", topk=10)
        if split == "valid":
            targets = tr.valid_targets
            hist = np.where(lengths >= 3, lengths - 2, lengths)
        else:
            targets = tr.test_targets
            hist = np.maximum(lengths - 1, 0)
        seen = [tr.view.items[tr.starts[r]:tr.starts[r] + hist[r]] for r in rows] \
            if tr.exclude_seen else None
        tr.model.eval()
        want, want_top = full_ranking_ranks(tr._score_fn(hist), rows, targets,
                                            tr.ds.num_items, batch_size=128, exclude=seen,
                                            ties=tr.tcfg.ties, progress=False, topk=10)
        np.testing.assert_array_equal(ranks, want)
        np.testing.assert_array_equal(top, want_top)
    assert tr.ds.num_items > 2 * 700 and sweeps and max(sweeps) < 128   # tiles < a batch
