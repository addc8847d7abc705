"""llmesr tune: a study killed with SIGKILL in the middle of a trial continues to its full
budget; trials never evaluate the test split; best.yaml is a valid --config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from optuna.trial import FixedTrial

from llmesr.cli import main
from llmesr.models.config import LOSSES, build_configs
from llmesr.training.tune import searched, base_values, search_space, suggest

TRIALS = 4
# lr and dropout searched; pruning from the second trial on
FAST = ["--set", "max_len=20", "--set", "hidden=16", "--set", "loss=bce", "--set", "patience=3",
        "--epochs", "3", "--prune-startup", "1", "--prune-warmup", "0"]


def _tune(data, out):
    return [sys.executable, "-m", "llmesr.cli", "tune", str(data), "--model", "id",
            "--trials", str(TRIALS), *FAST, "--out", str(out)]


def _study(out):
    import optuna

    return optuna.load_study(study_name="llmesr-tune", storage=f"sqlite:///{out / 'study.db'}")


@pytest.mark.shared_data
def test_killed_study_continues_to_its_budget(beauty_subset, tmp_path, capsys):
    from optuna.trial import TrialState

    out = tmp_path / "tune"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_tune(beauty_subset, out), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, text=True)
    # kill once the third trial has trained an epoch (it has two more to go)
    deadline = time.monotonic() + 240
    while not (out / "trials" / "0002" / "train_log.csv").is_file():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the study did not reach its third trial"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    first = proc.communicate(timeout=60)[0]
    assert proc.returncode == -signal.SIGKILL
    assert first.count("trial ") >= 2, first            # a progress line per trial
    running = [t.number for t in _study(out).get_trials(states=(TrialState.RUNNING,))]

    done = subprocess.run(_tune(beauty_subset, out), capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    study = _study(out)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == TRIALS
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert [t.number for t in failed] == running          # the killed trial, if it was running
    if running:
        assert "was interrupted" in done.stdout
        retry = [t for t in study.trials if t.user_attrs.get("retry_of") == running[0]]
        assert len(retry) == 1 and retry[0].params == failed[0].params
        assert not (out / "trials" / f"{running[0]:04d}").exists()
    assert f"failed (budget {TRIALS})" in done.stdout

    # no trial looked at the test split; validation was full ranking
    for t in finished:
        run = out / "trials" / f"{t.number:04d}"
        assert not list(run.glob("ranks_test_full.npy")) and not list(run.glob("ranks_test_s*"))
        cfg = json.loads((run / "config.json").read_text())["configs"]["train"]
        assert cfg["test_protocols"] == [] and cfg["valid_protocol"] == "full"
        if t.state == TrialState.COMPLETE:
            m = json.loads((run / "metrics.json").read_text())
            assert m["test"] == {} and t.value == m["valid"]["full"]["overall"]["NDCG@10"]
        assert len(t.intermediate_values) >= 1
    # the first trial is the untuned base: the default preset's values
    assert study.trials[0].params == {"lr": 1e-3, "weight_decay": 0.0, "dropout": 0.2}
    assert study.trials[0].user_attrs["base"] is True
    summary = json.loads((out / "trials.json").read_text())
    assert len(summary["trials"]) == len(study.trials)

    # best.yaml: the best trial's settings, test evaluation back on, a valid --config
    best = study.best_trial
    mcfg, tcfg = build_configs(None, None, None, config=out / "best.yaml")
    assert tcfg.test_protocols == ("full", "sampled")
    assert tcfg.lr == pytest.approx(best.params["lr"])
    assert mcfg.dropout == pytest.approx(best.params["dropout"])
    assert mcfg.hidden == 16 and tcfg.epochs == 3
    text = (out / "best.yaml").read_text()
    assert f"trial #{best.number:04d}" in text and "made by: llmesr tune" in text

    # a third call has nothing to do; other settings on the same folder are refused
    assert main(["tune", str(beauty_subset), "--model", "id", "--trials", str(TRIALS), *FAST,
                 "--out", str(out)]) == 0
    assert f"{TRIALS} of {TRIALS} trials done" in capsys.readouterr().out
    assert len(_study(out).trials) == len(study.trials)
    assert main(["tune", str(beauty_subset), "--model", "id", "--trials", str(TRIALS), *FAST,
                 "--set", "dropout=0.1", "--out", str(out)]) == 2
    assert "holds a study with other settings" in capsys.readouterr().err


def test_search_spaces():
    space = search_space("llmesr")
    assert {"lr", "dropout", "max_len", "loss", "alpha", "sd_teachers"} <= set(space)
    assert "hidden" not in space                      # fixed by the PCA size
    assert set(space["loss"].choices) <= set(LOSSES)
    assert "hidden" in search_space("id") and "alpha" not in search_space("id")
    assert "lr" not in search_space("id", {"lr"})     # --set fixes a setting
    base = {"loss": "bce", "alpha": 0.1}
    chosen = suggest(FixedTrial({"lr": 1e-3, "weight_decay": 0.0, "dropout": 0.2, "max_len": 50, "loss": "bce",
                                 "alpha": 0.0}), space, base)
    assert "sd_teachers" not in chosen and "sampled_negatives" not in chosen
    if "sampled_ce" in LOSSES:
        chosen = suggest(FixedTrial({"lr": 1e-3, "weight_decay": 0.0, "dropout": 0.2, "max_len": 50,
                                     "loss": "sampled_ce", "sampled_negatives": 128,
                                     "negative_sampler": "uniform", "alpha": 0.5,
                                     "sd_teachers": 5}), space, base)
        assert chosen["sampled_negatives"] == 128 and chosen["sd_teachers"] == 5


def test_progress_line_leaves_out_what_a_fixed_loss_rules_out():
    space = search_space("id", {"loss"})
    assert "sampled_negatives" in space                 # kept: the study's identity
    shown = [k for k, p in space.items() if searched(p, space, {"loss": "ce"})]
    assert "sampled_negatives" not in shown and "gbce_t" not in shown and "lr" in shown
    shown = [k for k, p in space.items() if searched(p, space, {"loss": "gbce"})]
    assert {"sampled_negatives", "gbce_t"} <= set(shown)
    assert searched(search_space("id")["sampled_negatives"], search_space("id"), {"loss": "ce"})


def test_base_values_is_the_untuned_configuration():
    space = search_space("llmesr")
    base = {"lr": 1e-3, "weight_decay": 0.0, "dropout": 0.2, "max_len": 200, "loss": "ce",
            "alpha": 0.1, "sd_teachers": 10, "sampled_negatives": 256}
    point = base_values(space, base)
    assert point == {"lr": 1e-3, "weight_decay": 0.0, "dropout": 0.2, "max_len": 200,
                     "loss": "ce", "alpha": 0.1, "sd_teachers": 10}   # no sampled_* for ce
    assert base_values(space, {**base, "max_len": 64}) is None        # not a choice
    assert base_values(space, {**base, "dropout": 0.25}) is None      # off the 0.1 grid
    assert base_values(space, {**base, "lr": 0.5}) is None            # out of range
    assert base_values(space, {**base, "alpha": 0.0})["alpha"] == 0.0
    assert "sd_teachers" not in base_values(space, {**base, "alpha": 0.0})
