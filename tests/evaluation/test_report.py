from __future__ import annotations

import numpy as np
import pytest

from llmesr.errors import LlmesrError
from llmesr.evaluation.protocols import group_metrics
from llmesr.evaluation.report import group_bars, group_table


def fake(seed: int, protocols=("full", "sampled")) -> dict:
    rng = np.random.default_rng(seed)
    ranks = rng.integers(0, 30, size=40)
    tail_user = np.arange(40) < 10
    tail_item = np.zeros(40, dtype=bool)          # an empty tail-item group: NaN metrics
    return {"test": {p: group_metrics(ranks, tail_user, tail_item) for p in protocols}}


def test_group_table_values_and_empty_groups():
    a, b = fake(0), fake(1, protocols=("full",))
    text = group_table({"A": a, "B": b})
    rows = [line for line in text.splitlines() if line.startswith("| A") or
            line.startswith("| B")]
    assert len(rows) == 3                          # B has no sampled results
    first = rows[0].split("|")
    hr, ndcg = a["test"]["full"]["overall"]["HR@10"], a["test"]["full"]["overall"]["NDCG@10"]
    assert first[3].strip() == f"{hr:.4f} / {ndcg:.4f}"
    assert first[4].strip() == "- / -"             # the empty tail-item group
    assert "tail user 10" in text and "head item 40" in text
    with pytest.raises(LlmesrError, match="no runs"):
        group_table({})
    with pytest.raises(LlmesrError, match="no test metrics"):
        group_table({"A": {"valid": {}}})


def test_group_bars_writes_a_png(tmp_path):
    path = group_bars({"A": fake(0), "B": fake(1)}, tmp_path / "sub" / "g.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(path.parent.glob("*.tmp.png"))
