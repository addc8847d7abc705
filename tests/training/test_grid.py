"""llmesr reproduce / evaluate / report on a real beauty-s3rec subset."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from llmesr.cli import main
from llmesr.errors import LlmesrError
from llmesr.evaluation.stats import per_case
from llmesr.training.grid import reproduce
from llmesr.training.trainer import evaluate_run

pytestmark = pytest.mark.shared_data
def same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


FAST = {"max_len": "30", "sd_teachers": "3", "patience": "1"}


@pytest.fixture(scope="module")
def grid(beauty_subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "g"
    reproduce(beauty_subset, out, seeds=[1, 2], models=["id", "llmesr"], backbones=["sasrec"],
              epochs=1, overrides=FAST, tsne_items=200, progress=False, log=lambda *a: None)
    return out


def test_grid_layout_and_report_files(grid):
    names = sorted(p.name for p in (grid / "runs").iterdir() if p.is_dir())
    assert names == ["sasrec-id-seed1", "sasrec-id-seed2", "sasrec-llmesr-seed1",
                     "sasrec-llmesr-seed2"]
    rep = grid / "report"
    for f in ("report.md", "report.csv", "report.json", "groups.png", "buckets.png", "tsne.png"):
        assert (rep / f).is_file(), f
    assert (rep / "tsne.png").read_bytes()[:4] == b"\x89PNG"
    md = (rep / "report.md").read_text()
    assert "## Full ranking" in md and "## Sampled ranking" in md
    assert "tail item H@10" in md and "by history length" in md


def test_report_means_are_the_runs_metrics(grid):
    rep = json.loads((grid / "report" / "report.json").read_text())
    for p in ("full", "sampled"):
        cell = rep["protocols"][p]["table"]["llmesr"]
        for seed, value in zip((1, 2), cell["tail_user"]["NDCG@10"]["seeds"]):
            m = json.loads((grid / "runs" / f"sasrec-llmesr-seed{seed}" / "metrics.json")
                           .read_text())
            assert value == pytest.approx(m["test"][p]["tail_user"]["NDCG@10"], abs=1e-12)
        vals = cell["overall"]["HR@10"]["seeds"]
        assert cell["overall"]["HR@10"]["mean"] == pytest.approx(np.mean(vals))
        assert cell["overall"]["HR@10"]["std"] == pytest.approx(np.std(vals, ddof=1))
        # bucket counts partition the cases
        assert sum(rep["user_bucket_counts"]) == rep["counts"]["overall"] == 600
        assert sum(rep["item_bucket_counts"]) == 600
        tests = rep["protocols"][p]["tests"]
        assert len(tests) == 5 * 2                          # llmesr vs id: 5 groups x 2 metrics
        assert all(t["baseline"] == "id" for t in tests)
        raw = [t["p_ttest"] for t in tests if t["p_ttest"] is not None]
        adj = [t["p_ttest_holm"] for t in tests if t["p_ttest"] is not None]
        assert all(a >= r - 1e-15 for a, r in zip(adj, raw))
    rows = list(csv.DictReader(open(grid / "report" / "report.csv")))
    assert len(rows) == 2 * 2 * 5 * 2                       # protocols x models x groups x metrics
    assert {r["model"] for r in rows} == {"id", "llmesr"}


def test_paired_test_uses_per_user_values_averaged_over_seeds(grid):
    from scipy import stats

    rep = json.loads((grid / "report" / "report.json").read_text())
    runs = grid / "runs"

    def user_ndcg(model):
        return np.mean([per_case(np.load(runs / f"sasrec-{model}-seed{s}" /
                                         "ranks_test_full.npy"), "NDCG@10") for s in (1, 2)],
                       axis=0)

    a, b = user_ndcg("llmesr"), user_ndcg("id")
    t = next(t for t in rep["protocols"]["full"]["tests"]
             if t["group"] == "overall" and t["metric"] == "NDCG@10")
    assert t["mean_diff"] == pytest.approx(float((a - b).mean()))
    if np.any(a != b):
        assert t["p_ttest"] == pytest.approx(stats.ttest_rel(a, b).pvalue)


def test_rerun_keeps_finished_runs(grid):
    weights = grid / "runs" / "sasrec-id-seed1" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    lines = []
    data = json.loads((grid / "grid.json").read_text())["data_dir"]
    reproduce(data, grid, seeds=[1, 2], models=["id", "llmesr"], backbones=["sasrec"],
              epochs=1, overrides=FAST, tsne=False, progress=False, log=lines.append)
    assert weights.stat().st_mtime_ns == before
    assert "4 already finished, 0 to train" in lines[0]
    with pytest.raises(LlmesrError, match="other settings"):
        reproduce(data, grid, seeds=[1], models=["id"], backbones=["sasrec"], epochs=1,
                  overrides={**FAST, "hidden": "32"}, tsne=False, progress=False,
                  log=lambda *a: None)
    with pytest.raises(LlmesrError, match="unknown model"):
        reproduce(data, grid, seeds=[1], models=["sasrec"], backbones=["sasrec"],
                  log=lambda *a: None)


def test_evaluate_recomputes_the_same_metrics(grid, tmp_path, capsys):
    run = grid / "runs" / "sasrec-llmesr-seed1"
    before = json.loads((run / "metrics.json").read_text())
    ranks = np.load(run / "ranks_test_full.npy")
    after = evaluate_run(run, ("full",), log=lambda *a: None)
    assert same(after["test"]["full"], before["test"]["full"])     # (an empty group is NaN)
    assert same(after["test"]["sampled"], before["test"]["sampled"])  # kept, not recomputed
    assert np.array_equal(np.load(run / "ranks_test_full.npy"), ranks)
    # the run ranked without the history (exclude_seen=auto, no repeats in beauty); keeping
    # the seen items among the candidates can only raise ranks
    assert before["evaluation"]["exclude_seen"] is True
    ex = evaluate_run(run, ("full",), exclude_seen=False, log=lambda *a: None)
    assert ex["evaluation"]["exclude_seen"] is False
    assert np.all(np.load(run / "ranks_test_full.npy") >= ranks)
    assert not np.array_equal(np.load(run / "ranks_test_full.npy"), ranks)
    assert main(["evaluate", str(run), "--protocol", "both", "--exclude-seen"]) == 0
    assert same(json.loads((run / "metrics.json").read_text())["test"], before["test"])
    assert "best epoch" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_report_cli_and_errors(grid, tmp_path, capsys):
    runs = grid / "runs"
    out = tmp_path / "rep"
    code = main(["report", str(runs / "sasrec-id-seed1"), str(runs / "sasrec-id-seed2"),
                 str(runs / "sasrec-llmesr-seed1"), "--out", str(out), "--no-tsne"])
    assert code == 0 and (out / "report.md").is_file() and not (out / "tsne.png").exists()
    assert "| llmesr | 1 |" in capsys.readouterr().out          # one seed of llmesr
    assert main(["report", str(runs), "--baseline", "nope", "--out", str(out)]) == 2
    assert "no run matches --baseline" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing"), "--out", str(out)]) == 2
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((runs / "sasrec-id-seed1" / "config.json")
                                            .read_text())
    assert main(["report", str(unfinished), "--out", str(out)]) == 2
    assert "has not finished" in capsys.readouterr().err


def test_variant_labels_name_the_preset_and_the_differing_settings(grid, tmp_path):
    import shutil

    from llmesr.evaluation.report import group_variants, load_run_result
    from llmesr.models.config import PRESETS

    src = grid / "runs" / "sasrec-llmesr-seed1"
    edits = {"sd": {"model": {"alpha": 0.5}}, "paper": PRESETS["paper"]}
    paths = [src]
    for name, edit in edits.items():
        dst = tmp_path / name
        shutil.copytree(src, dst)
        cfg = json.loads((dst / "config.json").read_text())
        for part, values in edit.items():
            cfg["configs"][part].update(values)
        (dst / "config.json").write_text(json.dumps(cfg))
        paths.append(dst)
    labels = sorted(v.label for v in group_variants([load_run_result(p) for p in paths]))
    # a run off every preset names what differs, its preset switches included
    assert labels == ["llmesr (custom, alpha=0.5, causal=True)", "llmesr (default)",
                      "llmesr (paper)"], labels
    with pytest.raises(LlmesrError, match="same settings and seed"):
        group_variants([load_run_result(src), load_run_result(src)])


def test_config_dir_gives_each_model_its_own_settings(beauty_subset, tmp_path):
    cdir = tmp_path / "configs"
    cdir.mkdir()
    (cdir / "id-sasrec.yaml").write_text("model:\n  dropout: 0.3\n  hidden: 32\n"
                                         "train:\n  lr: 0.002\n")
    out = tmp_path / "g"
    lines: list[str] = []
    reproduce(beauty_subset, out, seeds=[1], models=["id", "llminit"], backbones=["sasrec"],
              epochs=1, overrides={**FAST, "dropout": "0.4"}, config_dir=cdir, tsne=False,
              progress=False, log=lines.append)
    cfg = json.loads((out / "runs" / "sasrec-id-seed1" / "config.json").read_text())["configs"]
    # the file over the preset, --set over the file
    assert cfg["model"]["hidden"] == 32 and cfg["train"]["lr"] == 0.002
    assert cfg["model"]["dropout"] == 0.4
    other = json.loads((out / "runs" / "sasrec-llminit-seed1" / "config.json").read_text())
    assert other["configs"]["model"]["hidden"] == 64 and other["configs"]["train"]["lr"] == 0.001
    assert any("llminit/sasrec: no file" in line for line in lines)
    configs = json.loads((out / "grid.json").read_text())["configs"]
    assert configs["id-sasrec"].endswith("id-sasrec.yaml") and configs["llminit-sasrec"] is None
    # a rerun with the same folder keeps the finished runs; a packaged name resolves
    reproduce(beauty_subset, out, seeds=[1], models=["id", "llminit"], backbones=["sasrec"],
              epochs=1, overrides={**FAST, "dropout": "0.4"}, config_dir=cdir, tsne=False,
              progress=False, log=lines.append)
    assert any("2 already finished, 0 to train" in line for line in lines)
    with pytest.raises(LlmesrError, match="packaged"):
        reproduce(beauty_subset, out, seeds=[1], models=["id"], backbones=["sasrec"],
                  config_dir=tmp_path / "nowhere", log=lambda *a: None)
    with pytest.raises(LlmesrError, match="not a folder"):
        reproduce(beauty_subset, out, seeds=[1], models=["id"], backbones=["sasrec"],
                  config_dir=cdir / "id-sasrec.yaml", log=lambda *a: None)
    # on the command line: one line, exit 2
    rc = main(["reproduce", str(beauty_subset), "--config-dir", str(tmp_path / "nowhere"),
               "--out", str(tmp_path / "g2")])
    assert rc == 2


def test_beyond_accuracy_in_metrics_and_report(grid):
    run = grid / "runs" / "sasrec-id-seed1"
    m = json.loads((run / "metrics.json").read_text())
    beyond = m["beyond"]["full"]
    data = json.loads((grid / "grid.json").read_text())["data_dir"]
    from llmesr.data.artifact import load_dataset

    ds = load_dataset(data)
    assert beyond["overall"]["count"] == m["test"]["full"]["counts"]["overall"]
    for g in ("overall", "tail_user", "head_user", "tail_item", "head_item"):
        b = beyond[g]
        assert b["count"] == m["test"]["full"]["counts"][g]
        if b["count"] == 0:               # an empty group (a small subset)
            assert np.isnan(b["coverage@10"])
            continue
        assert 10 / ds.num_items <= b["coverage@10"] <= 1
        assert 0 <= b["tail_share@10"] <= 1
        pop = ds.item_table["popularity"].to_numpy()
        assert pop.min() <= b["ARP@10"] <= pop.max()
    rep = json.loads((grid / "report" / "report.json").read_text())
    seeds = [json.loads((grid / "runs" / f"sasrec-id-seed{s}" / "metrics.json").read_text())
             ["beyond"]["full"]["overall"]["coverage@10"] for s in (1, 2)]
    assert rep["beyond"]["id"]["overall"]["coverage@10"]["mean"] == pytest.approx(
        np.mean(seeds))
    md = (grid / "report" / "report.md").read_text()
    assert "What the top 10 holds" in md and "tail user coverage" in md


def test_another_models_switches_make_no_variant(grid, tmp_path):
    """An id run made when the default preset's llmesr switches were other values is the
    same model as one made after: those switches do nothing to id."""
    import shutil

    from llmesr.evaluation.report import group_variants, load_run_result

    src = grid / "runs" / "sasrec-id-seed1"
    dst = tmp_path / "id-other-era"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["configs"]["model"].update(alpha=0.7, use_cross_attention=True, rlmrec_tau=0.5)
    cfg["configs"]["train"]["seed"] = 2
    (dst / "config.json").write_text(json.dumps(cfg))
    variants = group_variants([load_run_result(src), load_run_result(dst)])
    assert len(variants) == 1 and len(variants[0].runs) == 2 and variants[0].label == "id"
    cfg["configs"]["model"]["dropout"] = 0.1          # a setting id has: another variant
    (dst / "config.json").write_text(json.dumps(cfg))
    assert len(group_variants([load_run_result(src), load_run_result(dst)])) == 2


def test_every_packaged_configuration_loads_and_is_the_model_its_name_says():
    from importlib import resources

    from llmesr.models.config import build_configs
    root = resources.files("llmesr") / "configs"
    files = sorted(p for d in root.iterdir() if d.is_dir() for p in d.iterdir()
                   if p.name.endswith(".yaml"))
    assert {p.name for p in files} >= {"id-sasrec.yaml", "llminit-sasrec.yaml"}
    for path in files:
        model, backbone = path.name[:-len(".yaml")].split("-")
        mcfg, tcfg = build_configs(config=str(path))
        assert (mcfg.model, mcfg.backbone) == (model, backbone), path
        assert tcfg.exclude_seen == "auto", path    # how runs are evaluated, not tuned
