"""Crash safety of folder swaps (checkpoint/, and the mechanism behind added_items/ and
bundle/): whatever instant a kill hits, the next start finds the folder whole and leftovers
never block it. A kill is simulated by copying the folder's parent at each step of a swap (the
state a kill at that instant leaves) and recovering each copy; a real SIGKILL runs in a child
process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from llmesr.training import checkpoint as ck
from llmesr.training.checkpoint import (load_training_state, recover_checkpoint,
                                        recover_directory, replace_directory,
                                        save_training_state)

STEPS = ["filling", "filled", "committed", "aside", "swapped", "cleaning", "cleaned"]
#: from this step on the new content is the live one
COMMITTED = STEPS.index("committed")


def _write(folder: Path, version: str, files: int = 3) -> None:
    for i in range(files):
        (folder / f"part{i}.txt").write_text(version)


def _version(folder: Path) -> str:
    texts = {p.read_text() for p in folder.iterdir()}
    assert len(texts) == 1 and len(list(folder.iterdir())) == 3, sorted(folder.iterdir())
    return texts.pop()


def _snapshots(monkeypatch, parent: Path, target: Path, version: str, out: Path
               ) -> dict[str, Path]:
    """Replace ``target`` with ``version``, copying ``parent`` at each step of the swap."""
    shots: dict[str, Path] = {}

    def shoot(step: str) -> None:
        shots[step] = shutil.copytree(parent, out / step, symlinks=True)
        if step == "swapped":       # a kill while the old copy is being removed
            old = ck.swap_names(target)[2]
            if old.exists():
                half = shutil.copytree(parent, out / "cleaning", symlinks=True)
                (half / old.name / "part0.txt").unlink()
                shots["cleaning"] = half

    def fill(folder: Path) -> None:
        (folder / "part0.txt").write_text(version)         # a kill in the middle of filling
        shoot("filling")
        _write(folder, version)

    monkeypatch.setattr(ck, "STEP_HOOK", shoot)
    replace_directory(target, fill)
    monkeypatch.setattr(ck, "STEP_HOOK", None)
    return shots


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".")
                  and not p.name.endswith(".lock"))


@pytest.mark.parametrize("first", [False, True], ids=["replace", "create"])
def test_a_kill_at_every_step_of_a_swap_is_recovered(tmp_path, monkeypatch, first):
    parent = tmp_path / "run"
    target = parent / "thing"
    parent.mkdir()
    if not first:
        target.mkdir()
        _write(target, "v1")
    shots = _snapshots(monkeypatch, parent, target, "v2", tmp_path / "shots")
    assert set(shots) == set(STEPS) - ({"aside", "cleaning"} if first else set())
    assert _version(target) == "v2" and _leftovers(parent) == []
    for step, shot in shots.items():
        t = shot / "thing"
        assert recover_directory(t) == (not first or STEPS.index(step) >= COMMITTED), step
        if STEPS.index(step) >= COMMITTED:
            assert _version(t) == "v2", step               # committed: rolled forward
        elif not first:
            assert _version(t) == "v1", step               # not committed: rolled back
        assert _leftovers(shot) == [], (step, _leftovers(shot))
        assert recover_directory(t) == t.is_dir()          # idempotent
        replace_directory(t, lambda f: _write(f, "v3"))    # the next write is not blocked
        assert _version(t) == "v3" and _leftovers(shot) == []


def test_an_error_while_filling_leaves_the_old_folder(tmp_path):
    target = tmp_path / "thing"
    target.mkdir()
    _write(target, "v1")

    def fill(folder):
        _write(folder, "v2")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_directory(target, fill)
    assert _version(target) == "v1" and _leftovers(tmp_path) == []


# ---- checkpoints ---------------------------------------------------------------------------
def _model():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    return model, opt


def _train_step(model, opt):
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).sum().backward()
    opt.step()


def _save(folder: Path, epoch: int, model=None, opt=None) -> None:
    if model is None:
        model, opt = _model()
    for _ in range(epoch):
        _train_step(model, opt)
    save_training_state(folder, model, opt, {"epoch": epoch}, np.random.default_rng(epoch))


def _load(folder: Path) -> dict:
    model, opt = _model()
    return load_training_state(folder, model, opt, np.random.default_rng(0))


def test_a_kill_at_every_step_of_a_checkpoint_swap_is_resumable(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _save(run / "checkpoint", 1)
    shots: dict[str, Path] = {}
    monkeypatch.setattr(ck, "STEP_HOOK", lambda step: shots.setdefault(
        step, shutil.copytree(run, tmp_path / "shots" / step)))
    _save(run / "checkpoint", 2)
    monkeypatch.setattr(ck, "STEP_HOOK", None)
    assert set(shots) == {"filled", "committed", "aside", "swapped", "cleaned"}
    for step, shot in shots.items():
        expected = 2 if STEPS.index(step) >= COMMITTED else 1
        assert recover_checkpoint(shot / "checkpoint"), step
        assert _load(shot / "checkpoint")["epoch"] == expected, step
        assert _leftovers(shot) == [] and sorted(p.name for p in shot.iterdir()) == \
            ["checkpoint"], step
        _save(shot / "checkpoint", 3)                      # the next epoch saves normally
        assert _load(shot / "checkpoint")["epoch"] == 3


def _legacy_temp(run: Path, epoch: int, whole: bool = True) -> Path:
    """The temporary folder llmesr 0.1 filled before renaming it to checkpoint/."""
    tmp = run / ".checkpoint.k3x_9q2a"
    _save(tmp, epoch)                                      # (written as a folder of its own)
    if not whole:
        (tmp / "state.json").write_text('{"epoch": ')     # killed while writing it
    return tmp


@pytest.mark.parametrize("state, epoch", [
    # killed after renaming checkpoint -> checkpoint.old, before the new one replaced it
    ("old and whole temp", 2),
    ("old and half temp", 1),
    ("old only", 1),
    # killed while removing checkpoint.old: the next save failed with "Directory not empty"
    ("checkpoint and old", 2),
])
def test_what_older_versions_left_is_recovered(tmp_path, state, epoch):
    run = tmp_path / "run"
    if state == "checkpoint and old":
        _save(run / "checkpoint", 2)
        _save(run / "checkpoint.old", 1)
    else:
        _save(run / "checkpoint", 1)
        os.replace(run / "checkpoint", run / "checkpoint.old")
        if "temp" in state:
            _legacy_temp(run, 2, whole="whole" in state)
    assert recover_checkpoint(run / "checkpoint")
    assert _load(run / "checkpoint")["epoch"] == epoch
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint"]
    _save(run / "checkpoint.old", 9)                       # a stale copy in the way again
    _save(run / "checkpoint", 3)                           # does not fail
    assert _load(run / "checkpoint")["epoch"] == 3
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint"]


def test_no_checkpoint_and_an_unusable_one_are_told_apart(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert not recover_checkpoint(run / "checkpoint")
    _legacy_temp(run, 2, whole=False)                      # only a half-written temporary
    assert not recover_checkpoint(run / "checkpoint")
    assert list(run.iterdir()) == []                       # removed


_CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import numpy as np, torch
    from llmesr.training import checkpoint as ck

    run, step = Path(sys.argv[1]), sys.argv[2]
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    ck.save_training_state(run / "checkpoint", model, opt, {"epoch": 1}, np.random.default_rng(1))
    ck.STEP_HOOK = lambda s: os.kill(os.getpid(), signal.SIGKILL) if s == step else None
    ck.save_training_state(run / "checkpoint", model, opt, {"epoch": 2}, np.random.default_rng(2))
""")


@pytest.mark.parametrize("step, epoch", [("filled", 1), ("aside", 2)])
def test_a_real_sigkill_during_a_checkpoint_swap(tmp_path, step, epoch):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(run), step], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    if step == "aside":
        assert not (run / "checkpoint").exists()           # the state the kill left
    assert recover_checkpoint(run / "checkpoint")
    assert _load(run / "checkpoint")["epoch"] == epoch
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint"]


def test_train_log_rows_of_an_epoch_done_again_are_dropped(tmp_path):
    log = tmp_path / "train_log.csv"
    log.write_text("epoch,loss\n1,0.5\n2,0.4\n3,0.3\n")
    ck.trim_train_log(log, 2)
    assert log.read_text() == "epoch,loss\n1,0.5\n2,0.4\n"


def test_run_progress_tells_what_a_run_directory_holds(tmp_path):
    run = tmp_path / "run"
    assert ck.run_progress(run) == "empty"
    run.mkdir()
    assert ck.run_progress(run) == "empty"
    (run / "config.json").write_text(json.dumps({"kind": "llmesr-run"}))
    (run / "bundle").mkdir()
    assert ck.run_progress(run) == "started"
    (run / ".bundle.partial").mkdir()                      # a leftover of ours
    assert ck.run_progress(run) == "started"
    _save(run / "checkpoint", 1)
    os.replace(run / "checkpoint", run / "checkpoint.old")  # killed mid-swap (llmesr 0.1)
    assert ck.run_progress(run) == "checkpoint"
    (run / "metrics.json").write_text("{}")
    shutil.rmtree(run / "checkpoint")
    assert ck.run_progress(run) == "other"
    other = tmp_path / "notes"
    other.mkdir()
    (other / ".git").mkdir()
    assert ck.run_progress(other) == "other"
    (other / "config.json").write_text("{}")
    ck.clear_run(other)                                    # not an llmesr run: untouched
    assert sorted(p.name for p in other.iterdir()) == [".git", "config.json"]


# ---- the trainer -----------------------------------------------------------------------------
def _trainer(data, out, log=lambda *a: None, **kw):
    from llmesr.models.config import build_configs
    from llmesr.training.trainer import Trainer

    settings = {"epochs": str(kw.pop("epochs", 1)), "patience": "5", "max_len": "30",
                "sd_teachers": "3"}
    mcfg, tcfg = build_configs("default", "sasrec", kw.pop("model", "id"), settings)
    return Trainer(data, mcfg, tcfg, out, progress=False, log=log, **kw)


def _epochs(run: Path) -> list[int]:
    import csv

    return [int(r["epoch"]) for r in csv.DictReader(open(run / "train_log.csv"))]


@pytest.mark.shared_data
def test_resume_after_a_kill_in_the_middle_of_a_checkpoint_swap(beauty_subset, tmp_path):
    run = tmp_path / "run"
    _trainer(beauty_subset, run).fit()
    # the state llmesr 0.1 left when killed between its two renames (no checkpoint/), after
    # logging epoch 2 but before its checkpoint replaced epoch 1's
    os.replace(run / "checkpoint", run / "checkpoint.old")
    (run / ".checkpoint.abcd1234").mkdir()
    with open(run / "train_log.csv", "a") as f:
        f.write("2,9.9,9.9,,,0.1,0.1,1,1,True\n")
    logs: list[str] = []
    t = _trainer(beauty_subset, run, epochs=2, resume=True, log=logs.append)
    assert t.resume
    m = t.fit()
    assert "resuming after epoch 1" in logs and m["epochs"] == 2
    assert _epochs(run) == [1, 2]                          # epoch 2 logged once
    assert not [p.name for p in run.iterdir() if "checkpoint" in p.name
                and p.name != "checkpoint"]


@pytest.mark.shared_data
def test_a_failed_train_leaves_nothing_that_blocks_the_next_try(beauty_subset, tmp_path,
                                                               monkeypatch):
    from llmesr.errors import LlmesrError
    from llmesr.training.trainer import Trainer

    def boom(self, batch):
        raise RuntimeError("boom")

    monkeypatch.setattr(Trainer, "_step", boom)
    out = tmp_path / "runs" / "new"
    with pytest.raises(RuntimeError, match="boom"):
        _trainer(beauty_subset, out).fit()
    assert not (tmp_path / "runs").exists()                # made by this try: removed
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError, match="boom"):
        _trainer(beauty_subset, empty).fit()
    assert empty.is_dir() and list(empty.iterdir()) == []  # the user's folder stays
    keep = tmp_path / "keep"                               # the user's files are never removed
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(LlmesrError, match="not empty"):
        _trainer(beauty_subset, keep)
    with pytest.raises(RuntimeError, match="boom"):
        _trainer(beauty_subset, keep, overwrite=True).fit()
    assert (keep / "notes.txt").read_text() == "mine"
    # what a kill in the first epoch leaves (config.json, bundle/) does not block a new try
    started = tmp_path / "started"
    (started / "bundle").mkdir(parents=True)
    (started / "config.json").write_text(json.dumps({"kind": "llmesr-run"}))
    logs: list[str] = []
    assert not _trainer(beauty_subset, started, log=logs.append).resume
    assert "stopped before its first epoch" in logs[0]
    assert not _trainer(beauty_subset, started, resume=True).resume


@pytest.mark.shared_data
def test_resume_without_a_checkpoint_says_so(beauty_subset, tmp_path):
    from llmesr.errors import LlmesrError

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"kind": "llmesr-run"}))
    (run / "metrics.json").write_text("{}")
    with pytest.raises(LlmesrError, match="no checkpoint to resume from") as e:
        _trainer(beauty_subset, run, resume=True)
    assert "pass --resume" not in str(e.value)
