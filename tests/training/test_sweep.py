"""llmesr sweep: one setting's values x seeds through the reproduce grid runner, sweep.json,
sweep.png, and continuing a sweep."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from llmesr.cli import main
from llmesr.errors import LlmesrError
from llmesr.training.sweep import parse_grid, sweep

pytestmark = pytest.mark.shared_data
FAST = ["--set", "max_len=20", "--set", "hidden=16", "--set", "test_protocols=full",
        "--epochs", "1"]


def _nulls(values):
    return [None if v is None or math.isnan(v) else v for v in values]


def test_sweep_writes_means_plot_and_continues(beauty_subset, tmp_path, capsys):
    out = tmp_path / "sw"
    # the mechanism on the fast plain model; the paper's figure sweeps alpha of llmesr
    rc = main(["sweep", str(beauty_subset), "--model", "id", "--set-grid", "dropout=0,0.5",
               "--seeds", "1", "2", *FAST, "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "sweep.json").read_text())
    assert res["param"] == "dropout" and res["values"] == ["0", "0.5"]
    assert res["seeds"] == [1, 2] and res["model"] == "id" and res["protocol"] == "full"
    runs = sorted(p.name for p in (out / "runs").iterdir() if p.is_dir())
    assert runs == ["dropout=0-seed1", "dropout=0-seed2", "dropout=0.5-seed1",
                    "dropout=0.5-seed2"]
    for i, value in enumerate(("0", "0.5")):
        cfg = json.loads((out / "runs" / f"dropout={value}-seed2" / "config.json").read_text())
        assert cfg["configs"]["model"]["dropout"] == float(value)
        assert cfg["configs"]["train"]["seed"] == 2
        for group in ("overall", "tail_item", "head_item", "tail_user", "head_user"):
            for metric in ("HR@10", "NDCG@10"):
                seeds = [json.loads((out / "runs" / f"dropout={value}-seed{s}" /
                                     "metrics.json").read_text())["test"]["full"][group][metric]
                         for s in (1, 2)]
                cell = res["results"][group][metric]
                assert cell["seeds"][i] == pytest.approx(_nulls(seeds))
                if None in _nulls(seeds):                  # an empty group: no mean
                    assert cell["mean"][i] is None
                    continue
                assert cell["mean"][i] == pytest.approx(np.mean(seeds))
                assert cell["std"][i] == pytest.approx(np.std(seeds, ddof=1))
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"

    # again: nothing to train; a run that lost its metrics resumes (and only that one)
    kept = (out / "runs" / "dropout=0-seed1" / "metrics.json").stat().st_mtime_ns
    (out / "runs" / "dropout=0.5-seed2" / "metrics.json").unlink()
    lines: list[str] = []
    sweep(beauty_subset, out, param="dropout", values=["0", "0.5"], seeds=[1, 2], model="id",
          overrides={"max_len": "20", "hidden": "16", "test_protocols": "full"}, epochs=1,
          progress=False, log=lines.append)
    assert "grid: 4 runs, 3 already finished, 1 to train (1 at a time)" in lines
    assert "[1/1] dropout=0.5-seed2 (resume)" in lines
    assert (out / "runs" / "dropout=0-seed1" / "metrics.json").stat().st_mtime_ns == kept
    assert json.loads((out / "sweep.json").read_text())["results"] == res["results"]


@pytest.mark.parametrize("argv,message", [
    (["--set-grid", "seed=1,2"], "seeds come from --seeds"),
    (["--set-grid", "alpha=0,0.0"], "a value is listed twice"),
    (["--set-grid", "alpha=0,x"], "setting 'alpha' must be a number >= 0, got 'x'"),
    (["--set-grid", "alpah=0,1"], "unknown setting 'alpah'; did you mean 'alpha'?"),
    (["--set-grid", "alpha"], "--set-grid needs KEY=V1,V2,..."),
    (["--set-grid", "alpha=0,1", "--set", "alpha=0.1"], "both swept (--set-grid) and set"),
    (["--set-grid", "alpha=0,1", "--set", "test_protocols=sampled"], "must include full"),
    (["--set-grid", "dropout=0,1"], "setting 'dropout' must be a number in [0, 1), got '1'"),
])
def test_sweep_mistakes_are_one_line_errors(beauty_subset, tmp_path, capsys, argv, message):
    rc = main(["sweep", str(beauty_subset), *argv, "--out", str(tmp_path / "sw")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "sw").exists()


def test_parse_grid():
    assert parse_grid("sd_teachers=1, 5,10") == ("sd_teachers", ["1", "5", "10"])
    with pytest.raises(LlmesrError, match="llmesr reproduce"):
        parse_grid("model=id,llmesr")
