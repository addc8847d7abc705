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


# ---- llmesr report on any set of runs ------------------------------------------------------

def _dataset(tmp_path):
    from llmesr.data.pipeline import prepare
    from tests.conftest import write

    inter = write(tmp_path / "inter.csv", "user_id,item_id,ts\n" + "".join(
        f"u{u},i{(3 * u + k) % 25},{k}\n" for u in range(40) for k in range(4 + u % 5)))
    items = write(tmp_path / "items.csv", "item_id,title\n" + "".join(
        f"i{k},item {k}\n" for k in range(25)))
    out = tmp_path / "ds"
    prepare("table", out, source=inter, items=items, reader_options={"time_col": "ts"},
            settings={"kcore_user": 0, "kcore_item": 0}, log=lambda *a: None)
    return out


def _fake_run(ds_dir, out, model, seed, shift=0, backbone="sasrec"):
    """A finished run directory as 'llmesr train' leaves it, minus the weights (enough for a
    report without t-SNE): config.json, metrics.json and the per-case ranks."""
    import json

    from llmesr.data.artifact import load_dataset
    from llmesr.data.io import sha256_file
    from llmesr.models.config import build_configs, configs_to_dict

    ds = load_dataset(ds_dir)
    users = ds.users
    rows = np.flatnonzero(users["evaluated"].to_numpy())
    pop = np.concatenate([[0], ds.item_table["popularity"].to_numpy()])
    tail_user = users["tail_user"].to_numpy()[rows]
    tail_item = pop[users["test_item"].to_numpy()[rows]] < ds.ts_item
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    mcfg, tcfg = build_configs("default", backbone, model, {"seed": str(seed)})
    (out / "config.json").write_text(json.dumps({
        "configs": configs_to_dict(mcfg, tcfg),
        "dataset": {"path": str(ds_dir), "name": "tiny", "num_items": ds.num_items,
                    "manifest_sha256": sha256_file(ds_dir / "manifest.json")}}, default=list))
    test = {}
    for p in ("full", "sampled"):
        ranks = np.maximum(rng.integers(0, 30, size=len(rows)) - shift, 0)
        np.save(out / f"ranks_test_{p}.npy", ranks)
        test[p] = group_metrics(ranks, tail_user, tail_item)
    np.save(out / "ranks_test_users.npy", rows + 1)
    (out / "metrics.json").write_text(json.dumps({"test": test, "epochs": 3, "best_epoch": 2,
                                                  "train_seconds": 1.0}))
    return out


def test_a_report_of_several_backbones_keeps_each_backbone_s_own_numbers(tmp_path):
    """Labels repeat across backbones ('id' on each): the tables used to be keyed by the
    label alone, so every backbone showed the last one's numbers and was tested against
    the last one's baseline."""
    import csv
    import json

    from llmesr.evaluation.report import load_run_result, write_report

    ds = _dataset(tmp_path)
    runs = [_fake_run(ds, tmp_path / "runs" / f"{b}-{m}", m, seed, shift, backbone=b)
            for b, seed in (("sasrec", 1), ("gru4rec", 2)) for m, shift in (("id", 0),
                                                                          ("llminit", 6))]
    rep = write_report(runs, tmp_path / "rep", tsne=False, log=lambda *a: None)
    table = rep["protocols"]["full"]["table"]
    assert sorted(table) == ["gru4rec id", "gru4rec llminit", "sasrec id", "sasrec llminit"]
    for run in runs:
        r = load_run_result(run)
        want = json.loads((run / "metrics.json").read_text())["test"]["full"]["overall"]
        got = table[f"{r.backbone} {r.model}"]["overall"]["HR@10"]["mean"]
        assert got == pytest.approx(want["HR@10"])
    tests = [t for t in rep["protocols"]["full"]["tests"] if t["group"] == "overall"
             and t["metric"] == "HR@10"]
    assert sorted((t["key"], t["baseline"]) for t in tests) == [
        ("gru4rec llminit", "id"), ("sasrec llminit", "id")]
    for t in tests:
        b = t["backbone"]
        diff = table[f"{b} llminit"]["overall"]["HR@10"]["mean"] - \
            table[f"{b} id"]["overall"]["HR@10"]["mean"]
        assert t["mean_diff"] == pytest.approx(diff)
    rows = list(csv.DictReader(open(tmp_path / "rep" / "report.csv")))
    for row in rows:
        if row["protocol"] == "full" and row["group"] == "overall" and \
                row["metric"] == "HR@10":
            assert float(row["mean"]) == pytest.approx(
                table[f"{row['backbone']} {row['model']}"]["overall"]["HR@10"]["mean"])
            assert (row["baseline"] == "id") == (row["model"] == "llminit")
    md = (tmp_path / "rep" / "report.md").read_text()
    for b in ("sasrec", "gru4rec"):
        hr = table[f"{b} id"]["overall"]["HR@10"]["mean"]
        assert f"| {b} | id | 1 | {hr:.4f} |" in md


def test_report_without_the_baseline_skips_significance(tmp_path, capsys):
    """'llmesr report RUN_DIR' on one llmesr run used to stop with "no run matches --baseline
    'id'"; it now writes the tables and plots and says the tests were skipped."""
    import json

    from llmesr.cli import main

    ds = _dataset(tmp_path)
    run = _fake_run(ds, tmp_path / "runs" / "llmesr-1", "llmesr", 1)
    out = tmp_path / "rep"
    assert main(["report", str(run), "--out", str(out), "--no-tsne"]) == 0
    stdout, err = capsys.readouterr()
    assert "Traceback" not in err and "significance tests: skipped" in err
    for f in ("report.md", "report.csv", "report.json", "groups.png", "buckets.png"):
        assert (out / f).is_file(), f
    md = (out / "report.md").read_text()
    assert "Significance tests: skipped: no run is the baseline 'id'" in md
    assert "# tiny: 1 model, seed 1" in md and "| llmesr | 1 |" in stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["baseline"] is None and rep["significance"].startswith("skipped")
    assert all(not res["tests"] for res in rep["protocols"].values())
    # a baseline the user names must be there
    assert main(["report", str(run), "--out", str(out), "--no-tsne", "--baseline", "id"]) == 2
    assert "no run matches --baseline 'id'" in capsys.readouterr().err
    # with an id run present, the tests run as before
    _fake_run(ds, tmp_path / "runs" / "id-1", "id", 1, shift=5)
    assert main(["report", str(tmp_path / "runs"), "--out", str(out), "--no-tsne"]) == 0
    capsys.readouterr()
    rep = json.loads((out / "report.json").read_text())
    assert rep["baseline"] == "id" and rep["protocols"]["full"]["tests"]
    assert "Significance tests" not in (out / "report.md").read_text()
    # --baseline none: no tests, said so
    assert main(["report", str(tmp_path / "runs"), "--out", str(out), "--no-tsne",
                 "--baseline", "none"]) == 0
    capsys.readouterr()
    assert "not asked for" in (out / "report.md").read_text()


def test_report_names_the_full_ranking_and_refuses_mixed_ones(tmp_path, capsys):
    import json

    from llmesr.cli import main

    ds = _dataset(tmp_path)
    runs = [_fake_run(ds, tmp_path / "runs" / f"{m}-1", m, 1) for m in ("id", "llmesr")]
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path / "runs"), "--out", str(out), "--no-tsne"]) == 0
    assert "## Full ranking (all items)" in (out / "report.md").read_text()
    for run in runs:       # both ranked without the history's items: said so in the heading
        m = json.loads((run / "metrics.json").read_text())
        m["evaluation"] = {"exclude_seen": True}
        (run / "metrics.json").write_text(json.dumps(m))
    assert main(["report", str(tmp_path / "runs"), "--out", str(out), "--no-tsne"]) == 0
    assert "## Full ranking (all items but the user's history)" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["full_excludes_seen"] is True
    (runs[0] / "metrics.json").write_text(json.dumps(
        {**json.loads((runs[0] / "metrics.json").read_text()), "evaluation": {}}))
    capsys.readouterr()
    assert main(["report", str(tmp_path / "runs"), "--out", str(out), "--no-tsne"]) == 2
    err = capsys.readouterr().err
    assert "without the history's items" in err and "--exclude-seen" in err


def test_report_damaged_run_files_are_one_line_errors(tmp_path, capsys):
    from llmesr.cli import main

    ds = _dataset(tmp_path)
    for name, text in (("list", "[]"), ("latin1", b"\xff"), ("empty", "{}")):
        run = _fake_run(ds, tmp_path / name, "llmesr", 1)
        if isinstance(text, bytes):
            (run / "metrics.json").write_bytes(text)
        else:
            (run / "config.json").write_text(text)
        assert main(["report", str(run), "--out", str(tmp_path / "rep"), "--no-tsne"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    run = _fake_run(ds, tmp_path / "ok", "llmesr", 1)
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert main(["report", str(run), "--out", str(blocker / "rep"), "--no-tsne"]) == 2
    assert "cannot create the report folder" in capsys.readouterr().err
    assert main(["report", str(run), "--out", str(tmp_path / "rep"), "--tsne-items", "1"]) == 2
    assert "--tsne-items must be at least 4" in capsys.readouterr().err


def test_tsne_shows_progress(tmp_path, capsys, monkeypatch):
    """t-SNE takes seconds to a minute per model: a bar counts the maps."""
    import torch

    import llmesr.training.trainer as trainer
    from llmesr.evaluation.report import write_report

    class FakeModel:
        def item_embeddings(self, ids):
            return torch.from_numpy(np.random.default_rng(0).normal(
                size=(len(ids), 8)).astype(np.float32))

    monkeypatch.setattr(trainer, "load_run", lambda path, device="cpu": (FakeModel(), {}))
    ds = _dataset(tmp_path)
    run = _fake_run(ds, tmp_path / "runs" / "llmesr-1", "llmesr", 1)
    write_report([run], tmp_path / "rep", tsne_items=20, progress=True, log=lambda *a: None)
    err = capsys.readouterr().err
    assert "t-SNE (20 items)" in err and "1/1" in err
    assert (tmp_path / "rep" / "tsne.png").read_bytes()[:4] == b"\x89PNG"
