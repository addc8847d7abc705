from __future__ import annotations

import itertools

import numpy as np
import pytest

from llmesr.models.chunking import plan_chunks


def cost(groups, lengths, overhead, quadratic):
    return sum(overhead + len(i) * w * (1 + w / quadratic) for i, w in groups)


def check_cover(groups, lengths):
    seen = np.concatenate([i for i, _ in groups]) if groups else np.array([], int)
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for idx, w in groups:
        assert w == max(int(np.maximum(lengths[idx], 1).max()), 1)


@pytest.mark.parametrize("seed", range(5))
def test_groups_cover_every_row_once_with_their_width(seed):
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.geometric(0.1, size=1300), 200)
    lengths[:3] = 0
    groups = plan_chunks(lengths)
    check_cover(groups, lengths)
    # far fewer padded tokens than cropping everything to the longest row
    padded = sum(len(i) * w for i, w in groups)
    assert padded < 0.5 * len(lengths) * lengths.max()


def brute_force(lengths, overhead, quadratic):
    values = np.unique(np.maximum(lengths, 1))
    best = None
    for k in range(len(values)):
        for cuts in itertools.combinations(range(1, len(values)), k):
            edges = [0, *cuts, len(values)]
            c = 0.0
            for a, b in zip(edges, edges[1:]):
                w = values[b - 1]
                n = np.isin(np.maximum(lengths, 1), values[a:b]).sum()
                c += overhead + n * w * (1 + w / quadratic)
            best = c if best is None else min(best, c)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_plan_is_optimal_for_the_cost_model(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 12, size=rng.integers(1, 30))  # <= 11 distinct: 2**10 plans
    overhead, quadratic = float(rng.choice([0, 5, 50])), float(rng.choice([10, 300]))
    groups = plan_chunks(lengths, overhead, quadratic)
    check_cover(groups, lengths)
    assert cost(groups, lengths, overhead, quadratic) == pytest.approx(
        brute_force(lengths, overhead, quadratic))


def test_overhead_extremes_and_row_cap():
    lengths = np.array([1, 2, 3, 50, 50, 4])
    assert len(plan_chunks(lengths, overhead=1e9)) == 1               # calls are expensive
    assert len(plan_chunks(lengths, overhead=0.0)) == 5               # one per distinct length
    groups = plan_chunks(np.full(10, 7), max_rows=3)
    assert [len(i) for i, _ in groups] == [3, 3, 3, 1]
    check_cover(groups, np.full(10, 7))
    assert plan_chunks(np.array([], dtype=int)) == []
