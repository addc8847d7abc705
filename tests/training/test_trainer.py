"""Training on a real subset of beauty-s3rec: every model x backbone, determinism, resume,
reloading a run from its directory alone."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from llmesr.cli import main
from llmesr.errors import LlmesrError
from llmesr.models.config import build_configs
from llmesr.training.trainer import Trainer, load_run

pytestmark = pytest.mark.shared_data
USERS = 600   # the beauty_subset fixture (conftest.py)


def _train(data, out, model="llmesr", backbone="sasrec", preset="default", **over):
    # short windows and 3 teachers keep CI fast; the paper's 200 / 10 are benchmarked
    settings = {"epochs": "2", "patience": "2", "max_len": "30", "sd_teachers": "3",
                **{k: str(v) for k, v in over.items()}}
    mcfg, tcfg = build_configs(preset, backbone, model, settings)
    return Trainer(data, mcfg, tcfg, out, progress=False, log=lambda *a: None, **(
        {"overwrite": True}))


@pytest.mark.parametrize("backbone", ["sasrec", "bert4rec", "gru4rec"])
@pytest.mark.parametrize("model", ["id", "llminit", "llmesr", "rlmrec", "cities", "melt"])
def test_every_model_and_backbone_trains(beauty_subset, tmp_path, model, backbone):
    extra = {"cities": {"cities_epochs": 2}, "melt": {"melt_epochs": 1}}.get(model, {})
    m = _train(beauty_subset, tmp_path / "run", model, backbone, epochs=1, **extra).fit()
    for protocol in ("full", "sampled"):
        res = m["test"][protocol]
        assert res["counts"]["overall"] == USERS
        assert 0.0 <= res["overall"]["NDCG@10"] <= res["overall"]["HR@10"] <= 1.0
    rows = list(csv.DictReader(open(tmp_path / "run" / "train_log.csv")))
    assert len(rows) == (2 if model == "melt" else 1)
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    if model == "llmesr":
        # the default preset has no self-distillation (alpha 0): its log has no sd value
        assert rows[0]["sd"] == ""
    if model == "rlmrec":
        assert float(rows[0]["align"]) > 0
    if model == "cities":
        rec = json.loads((tmp_path / "run" / "cities.json").read_text())
        assert rec["replaced"] > 0 and m["cities"] == rec
    if model == "melt":
        # stage 1 (the backbone) logs no branch loss; stage 2 logs both
        assert rows[0]["melt_user"] == "" and float(rows[1]["melt_item"]) > 0
        assert float(rows[1]["melt_user"]) > 0 and m["melt"]["head_users"] > 0
        assert m["melt"]["stage1"]["epochs"] == 1 and m["epochs"] == 2


def test_same_seed_same_losses(beauty_subset, tmp_path):
    logs = []
    for k in range(2):
        _train(beauty_subset, tmp_path / f"r{k}", "llmesr", "sasrec", "paper").fit()
        logs.append([(r["loss"], r["valid_NDCG@10"])
                     for r in csv.DictReader(open(tmp_path / f"r{k}" / "train_log.csv"))])
    assert logs[0] == logs[1]
    other = _train(beauty_subset, tmp_path / "r2", "llmesr", "sasrec", "paper", seed=7)
    other.fit()
    assert [r["loss"] for r in csv.DictReader(open(tmp_path / "r2" / "train_log.csv"))] != \
        [a for a, _ in logs[0]]


def test_resume_continues_exactly(beauty_subset, tmp_path):
    _train(beauty_subset, tmp_path / "straight", epochs=2, patience=5).fit()
    _train(beauty_subset, tmp_path / "split", epochs=1, patience=5).fit()
    mcfg, tcfg = build_configs("default", "sasrec", "llmesr", {
        "epochs": "2", "patience": "5", "max_len": "30", "sd_teachers": "3"})
    Trainer(beauty_subset, mcfg, tcfg, tmp_path / "split", resume=True, progress=False,
            log=lambda *a: None).fit()
    a = list(csv.DictReader(open(tmp_path / "straight" / "train_log.csv")))
    b = list(csv.DictReader(open(tmp_path / "split" / "train_log.csv")))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_resume_logs_each_epoch_once_in_tensorboard(beauty_subset, tmp_path):
    """A run killed after logging an epoch but before its checkpoint logs that epoch again on
    resume; the resumed writer purges the orphan, so TensorBoard shows each epoch once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    _train(beauty_subset, run, "id", epochs=1, patience=5).fit()
    orphan = SummaryWriter(str(run / "tensorboard"))       # the killed epoch 2's line
    orphan.add_scalar("loss", 999.0, 2)
    orphan.close()
    mcfg, tcfg = build_configs("default", "sasrec", "id", {
        "epochs": "2", "patience": "5", "max_len": "30", "sd_teachers": "3"})
    Trainer(beauty_subset, mcfg, tcfg, run, resume=True, progress=False,
            log=lambda *a: None).fit()
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("loss")
    assert [e.step for e in events] == [1, 2]
    logged = [float(r["loss"]) for r in csv.DictReader(open(run / "train_log.csv"))]
    assert [e.value for e in events] == pytest.approx(logged, rel=1e-5)


def test_run_directory_reloads_the_model(beauty_subset, tmp_path):
    tr = _train(beauty_subset, tmp_path / "run", epochs=1)
    tr.fit()
    model, cfg = load_run(tmp_path / "run")
    seq = torch.tensor([[0, 3, 5, 9]])
    pos = torch.tensor([[0, 1, 2, 3]])
    tr.model.eval()
    with torch.no_grad():
        assert torch.allclose(model.score_all(seq, pos), tr.model.score_all(seq, pos))
    assert cfg["configs"]["model"]["model"] == "llmesr"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 1
    assert (tmp_path / "run" / "tensorboard").is_dir()


def test_run_dir_protection_and_cli(beauty_subset, tmp_path, capsys):
    _train(beauty_subset, tmp_path / "run", epochs=1).fit()
    mcfg, tcfg = build_configs("default", "sasrec", "llmesr", {"epochs": "1", "max_len": "30"})
    with pytest.raises(LlmesrError, match="not empty"):
        Trainer(beauty_subset, mcfg, tcfg, tmp_path / "run", progress=False)
    code = main(["train", str(beauty_subset), "--model", "id", "--epochs", "1", "--quiet",
                 "--set", "max_len=30", "--out", str(tmp_path / "cli")])
    assert code == 0 and (tmp_path / "cli" / "model.safetensors").is_file()
    code = main(["train", str(beauty_subset), "--model", "id", "--set", "colour=red",
                 "--out", str(tmp_path / "bad")])
    assert code == 2 and "unknown setting 'colour'" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["default", "paper"])
def test_length_grouped_evaluation_equals_one_crop(beauty_subset, tmp_path, monkeypatch,
                                                   preset):
    """Evaluation runs users in length groups; the scores must match one crop per batch."""
    import llmesr.models.recommender as recommender_mod
    tr = _train(beauty_subset, tmp_path / "run", "llmesr", preset=preset, epochs=1)
    hist = np.maximum(tr.ds.users["length"].to_numpy() - 1, 0)
    rows = torch.from_numpy(tr.test_rows[:300])
    tr.model.eval()
    with torch.no_grad():
        grouped = tr._score_fn(hist)(rows, None)
        calls = []
        monkeypatch.setattr(recommender_mod, "plan_chunks", lambda lengths, max_rows=None:
                            calls.append(1) or [
            (np.arange(len(lengths)), int(max(np.max(lengths), 1)))])
        single = tr._score_fn(hist)(rows, None)
    assert calls and torch.allclose(grouped, single, atol=1e-4)


@pytest.mark.parametrize("loss,sampler", [("ce", "uniform"), ("sampled_ce", "popularity"),
                                          ("sampled_ce", "in_batch"), ("gbce", "uniform")])
@pytest.mark.parametrize("backbone,model", [("sasrec", "llmesr"), ("bert4rec", "id"),
                                            ("gru4rec", "llminit")])
def test_every_objective_learns(beauty_subset, tmp_path, loss, sampler, backbone, model):
    """Each objective learns through the trainer's step: its loss on one repeated batch
    falls. No dropout, and the same torch seed before every step, so each draws the same
    negatives: a fixed problem, which the updates must improve."""
    tr = _train(beauty_subset, tmp_path / "run", model, backbone, loss=loss, dropout=0,
                negative_sampler=sampler, sampled_negatives=64, lr=0.01)
    batch = tr.builder.train_batch(tr.builder.epoch_samples()[:64])
    tr.model.train()
    losses = []
    for _ in range(8):
        torch.manual_seed(0)
        losses.append(tr._step(batch)["rec"])
    first, last = losses[0], losses[-1]
    assert np.isfinite(first) and last < first


def test_full_softmax_run_finishes(beauty_subset, tmp_path):
    m = _train(beauty_subset, tmp_path / "run", "llmesr", "sasrec", epochs=1, loss="ce").fit()
    assert 0.0 < m["test"]["full"]["overall"]["HR@10"] <= 1.0


def test_run_directory_follows_the_umask(beauty_subset, tmp_path):
    """Every file and folder of a run gets the umask's mode (not mkstemp's 0600 / 0700)."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        _train(beauty_subset, tmp_path / "run", "id", "sasrec", epochs=1).fit()
    finally:
        os.umask(old)
    paths = [tmp_path / "run", *(tmp_path / "run").rglob("*")]
    assert any(p.name == "config.yaml" for p in paths)
    for p in paths:
        want = 0o755 if p.is_dir() else 0o644
        assert stat.S_IMODE(p.stat().st_mode) == want, f"{p}: {oct(p.stat().st_mode)}"


def test_exclude_seen_auto_follows_the_data(beauty_subset, tmp_path, monkeypatch):
    from llmesr.data.artifact import SequenceDataset

    assert _train(beauty_subset, tmp_path / "a", "id").exclude_seen is True   # no repeats
    assert _train(beauty_subset, tmp_path / "b", "id", "sasrec", "paper").exclude_seen is False
    assert _train(beauty_subset, tmp_path / "c", "id", exclude_seen="false").exclude_seen \
        is False
    monkeypatch.setattr(SequenceDataset, "has_repeats", property(lambda self: True))
    assert _train(beauty_subset, tmp_path / "d", "id").exclude_seen is False
    assert _train(beauty_subset, tmp_path / "e", "id", exclude_seen="true").exclude_seen is True


def _log_values(run, key):
    return [float(r[key]) for r in csv.DictReader(open(run / "train_log.csv"))]


def test_teacher_cache_refreshed_each_step_equals_exact_teachers(beauty_subset, tmp_path):
    # no dropout: a cache recomputed before every step holds the exact teachers' states
    over = {"dropout": 0, "epochs": 1, "alpha": 0.1}
    _train(beauty_subset, tmp_path / "exact", **over).fit()
    tr = _train(beauty_subset, tmp_path / "cached", teacher_cache=1, **over)
    tr.fit()
    # (after fit: building a batch draws negatives from the run's generator)
    assert "teacher_seq" not in tr.builder.train_batch(np.arange(4))   # rows, not histories
    for key in ("loss", "rec", "sd", "valid_NDCG@10"):
        np.testing.assert_allclose(_log_values(tmp_path / "cached", key),
                                   _log_values(tmp_path / "exact", key), rtol=1e-4, atol=1e-7)


def test_teacher_cache_once_an_epoch(beauty_subset, tmp_path):
    tr = _train(beauty_subset, tmp_path / "run", teacher_cache=-1, epochs=2, alpha=0.1)
    calls = []
    real = tr.refresh_teachers
    tr.refresh_teachers = lambda: (calls.append(1), real())[1]
    tr.fit()
    assert len(calls) == 2                       # once at the start of each epoch
    assert tr._teachers.shape == (USERS, tr.model.state_dim)
    sd = _log_values(tmp_path / "run", "sd")
    assert all(v > 0 and np.isfinite(v) for v in sd)
    _train(beauty_subset, tmp_path / "exact", epochs=2, alpha=0.1).fit()
    assert sd != _log_values(tmp_path / "exact", "sd")   # stale teachers: another loss


def test_pop_gate_trains_and_reloads(beauty_subset, tmp_path):
    tr = _train(beauty_subset, tmp_path / "run", se_pop_gate=True, epochs=1)
    tr.fit()
    model, _ = load_run(tmp_path / "run")
    torch.testing.assert_close(model.log_count, tr.model.log_count.cpu())
    assert float(model.log_count.max()) > 0
    assert not torch.equal(model.pop_gate.detach(), torch.tensor([np.log(np.e - 1), 0.0]))


def test_se_sum_weight_trains_and_reloads(beauty_subset, tmp_path):
    tr = _train(beauty_subset, tmp_path / "run", se_sum_weight=True, epochs=1)
    tr.fit()
    model, _ = load_run(tmp_path / "run")
    w = float(model.se_log_weight)
    assert w != 0.0 and w == float(tr.model.se_log_weight)
    # on in the default preset (it won on validation), off in the paper's
    assert build_configs("default", "sasrec", "llmesr")[0].se_sum_weight
    assert not build_configs("paper", "sasrec", "llmesr")[0].se_sum_weight


def test_cities_stage_reruns_alone_after_a_kill_and_reuses_an_id_run(beauty_subset, tmp_path):
    from safetensors.torch import load_file as _load

    def load_file(path):          # copies: safetensors maps the file, rewritten below
        return {k: v.clone() for k, v in _load(path).items()}

    run = tmp_path / "cities"
    _train(beauty_subset, run, "cities", epochs=1, patience=5, cities_epochs=2).fit()
    first = load_file(str(run / "model.safetensors"))
    backbone = load_file(str(run / "backbone.safetensors"))
    changed = (first["co.embedding.weight"] != backbone["co.embedding.weight"]).any(1)
    rec = json.loads((run / "cities.json").read_text())
    assert int(changed.sum()) == rec["replaced"] > 0
    # killed inside the stage: the best weights are still the backbone's, no record yet
    (run / "cities.json").unlink()
    (run / "metrics.json").unlink()
    (run / "model.safetensors").write_bytes((run / "backbone.safetensors").read_bytes())
    mcfg, tcfg = build_configs("default", "sasrec", "cities", {
        "epochs": "1", "patience": "5", "max_len": "30", "sd_teachers": "3",
        "cities_epochs": "2"})
    Trainer(beauty_subset, mcfg, tcfg, run, resume=True, progress=False,
            log=lambda *a: None).fit()
    again = load_file(str(run / "model.safetensors"))
    rec2 = json.loads((run / "cities.json").read_text())
    assert rec2 == rec
    assert [k for k in first if not torch.equal(first[k], again[k])] == []
    # --init-from: an id run's weights are the backbone, bit for bit
    _train(beauty_subset, tmp_path / "id", "id", epochs=1).fit()
    mcfg, tcfg = build_configs("default", "sasrec", "cities", {
        "max_len": "30", "cities_epochs": "1"})
    m = Trainer(beauty_subset, mcfg, tcfg, tmp_path / "c2", progress=False,
                log=lambda *a: None, init_from=tmp_path / "id").fit()
    idw = load_file(str(tmp_path / "id" / "model.safetensors"))
    bb = load_file(str(tmp_path / "c2" / "backbone.safetensors"))
    assert all(torch.equal(idw[k], bb[k]) for k in idw)
    assert m["epochs"] == 0 and m["backbone_from"] == str(tmp_path / "id")
    mcfg, tcfg = build_configs("default", "sasrec", "cities", {"max_len": "50"})
    with pytest.raises(LlmesrError, match="max_len differ"):
        Trainer(beauty_subset, mcfg, tcfg, tmp_path / "c3", progress=False,
                log=lambda *a: None, init_from=tmp_path / "id").fit()
    mcfg, tcfg = build_configs("default", "sasrec", "llminit", {"max_len": "30"})
    with pytest.raises(LlmesrError, match="model cities"):
        Trainer(beauty_subset, mcfg, tcfg, tmp_path / "c4", progress=False,
                init_from=tmp_path / "id")


def test_melt_resumes_inside_its_second_stage_and_starts_from_an_id_run(beauty_subset,
                                                                        tmp_path):
    settings = {"epochs": "1", "patience": "5", "max_len": "30", "melt_epochs": "2"}
    mcfg, tcfg = build_configs("default", "sasrec", "melt", settings)
    whole = Trainer(beauty_subset, mcfg, tcfg, tmp_path / "a", progress=False,
                    log=lambda *a: None).fit()

    def stop(epoch, _valid):
        if epoch == 2:             # the first epoch of stage 2 is saved, then a kill
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(beauty_subset, mcfg, tcfg, tmp_path / "b", progress=False,
                log=lambda *a: None, on_epoch=stop).fit()
    resumed = Trainer(beauty_subset, mcfg, tcfg, tmp_path / "b", resume=True,
                      progress=False, log=lambda *a: None).fit()
    logs = [[(r["loss"], r["melt_user"], r["valid_NDCG@10"])
             for r in csv.DictReader(open(tmp_path / d / "train_log.csv"))] for d in "ab"]
    assert len(logs[0]) == 3 and logs[0] == logs[1]
    # (json: the empty groups' NaN compare equal)
    assert json.dumps(resumed["test"]) == json.dumps(whole["test"])
    for m in (resumed, whole):
        m["melt"]["stage1"].pop("train_seconds")
    assert resumed["melt"] == whole["melt"]
    # the tail-user threshold travels with the weights
    model, _ = load_run(tmp_path / "a")
    assert float(model.melt.user_thres) == whole["melt"]["user_threshold"] > 0
    # --init-from an id run: no stage 1, the id weights are the backbone bit for bit
    _train(beauty_subset, tmp_path / "id", "id", epochs=1).fit()
    mcfg, tcfg = build_configs("default", "sasrec", "melt", {"max_len": "30",
                                                             "melt_epochs": "1"})
    m = Trainer(beauty_subset, mcfg, tcfg, tmp_path / "c", progress=False,
                log=lambda *a: None, init_from=tmp_path / "id").fit()
    from safetensors.torch import load_file
    idw = load_file(str(tmp_path / "id" / "model.safetensors"))
    bb = load_file(str(tmp_path / "c" / "backbone.safetensors"))
    assert all(torch.equal(idw[k], bb[k]) for k in idw)
    assert m["epochs"] == 1 and m["melt"]["stage1"] == {
        "epochs": 0, "best_epoch": 0, "best_valid_NDCG@10": -1.0, "train_seconds": 0.0,
        "from_run": str(tmp_path / "id")}


def test_melt_patience_stops_stage_two_and_zero_runs_every_epoch(beauty_subset, tmp_path):
    _train(beauty_subset, tmp_path / "id", "id", epochs=1).fit()
    epochs = {}
    for patience in (2, 0):
        # lr 1e-12 and no tail-row update: stage 2 leaves the scores as they are, so only
        # its first epoch improves on the start (-1)
        mcfg, tcfg = build_configs("default", "sasrec", "melt", {
            "max_len": "30", "melt_epochs": "4", "lr": "1e-12", "melt_tail_update": "false",
            "melt_patience": str(patience)})
        m = Trainer(beauty_subset, mcfg, tcfg, tmp_path / f"p{patience}", progress=False,
                    log=lambda *a: None, init_from=tmp_path / "id").fit()
        epochs[patience] = (m["epochs"], m["best_epoch"])
    assert epochs == {2: (3, 1), 0: (4, 1)}
    assert build_configs("default", "sasrec", "melt")[0].melt_patience == 5
    assert build_configs("paper", "sasrec", "melt")[0].melt_patience == 0


def test_melt_s_first_stage_is_the_id_run_of_its_seed(beauty_subset, tmp_path):
    from safetensors.torch import load_file
    _train(beauty_subset, tmp_path / "id", "id", epochs=1).fit()
    _train(beauty_subset, tmp_path / "melt", "melt", epochs=1, melt_epochs=1).fit()
    idw = load_file(str(tmp_path / "id" / "model.safetensors"))
    bb = load_file(str(tmp_path / "melt" / "backbone.safetensors"))
    assert all(torch.equal(idw[k], bb[k]) for k in idw)


def test_melt_replaces_only_tail_rows_and_the_switch_turns_it_off(beauty_subset, tmp_path):
    from safetensors.torch import load_file
    _train(beauty_subset, tmp_path / "id", "id", epochs=1).fit()
    changed = {}
    for on in (True, False):
        # lr 1e-12: SGD moves a row by about 1e-12, the tail-item update replaces it
        mcfg, tcfg = build_configs("default", "sasrec", "melt", {
            "max_len": "30", "melt_epochs": "1", "lr": "1e-12", "melt_tail_update": str(on)})
        out = tmp_path / f"melt-{on}"
        m = Trainer(beauty_subset, mcfg, tcfg, out, progress=False, log=lambda *a: None,
                    init_from=tmp_path / "id").fit()
        new = load_file(str(out / "model.safetensors"))["co.embedding.weight"]
        old = load_file(str(out / "backbone.safetensors"))["co.embedding.weight"]
        changed[on] = set(torch.nonzero(((new - old).abs() > 1e-6).any(1)).ravel().tolist())
        head = m["melt"]["head_items"]
    assert changed[False] == set()
    assert len(changed[True]) > 0 and 0 not in changed[True] and head > 0
    # no head item's row is touched
    from llmesr.data.artifact import load_dataset
    from llmesr.models.melt import split_head_tail
    from llmesr.training.batches import TrainView
    v = TrainView.of(load_dataset(beauty_subset))
    counts = np.bincount(v.owned(np.arange(len(v.train_len)))[1], minlength=v.num_items + 1)
    split = split_head_tail(v.train_len, counts, 0.8)
    assert changed[True] <= set(split.tail_items.tolist())
    assert not changed[True] & set(split.head_items.tolist())


def test_llmesr_frozen_co_tower_starts_from_an_llminit_run_and_stays_it(beauty_subset,
                                                                        tmp_path):
    from safetensors.torch import load_file
    _train(beauty_subset, tmp_path / "init", "llminit", epochs=1).fit()
    mcfg, tcfg = build_configs("default", "sasrec", "llmesr", {
        "epochs": "2", "max_len": "30", "freeze_co": "true", "se_sum_weight": "true"})
    res = Trainer(beauty_subset, mcfg, tcfg, tmp_path / "res", progress=False,
                  log=lambda *a: None, init_from=tmp_path / "init").fit()
    assert res["epochs"] == 2
    init = load_file(str(tmp_path / "init" / "model.safetensors"))
    new = load_file(str(tmp_path / "res" / "model.safetensors"))
    # the collaborative tower is the llminit run's, bit for bit; the semantic one trained
    assert init.keys() < new.keys()
    assert all(torch.equal(init[k], new[k]) for k in init)
    assert float(new["se_log_weight"]) != 0.0
    # so the co half of the user state is the llminit model's state, in training mode too
    a, _ = load_run(tmp_path / "init")
    b, _ = load_run(tmp_path / "res")
    seq = torch.tensor([[0, 0, 3, 7, 9], [2, 4, 6, 8, 10]])
    pos = torch.tensor([[0, 0, 1, 2, 3], [1, 2, 3, 4, 5]])
    a.eval()
    b.train()
    with torch.no_grad():
        want = a.user_state(seq, pos)
        got = b.user_state(seq, pos)[:, :b.cfg.hidden]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert all(not p.requires_grad for mod in b.frozen_co_modules() for p in mod.parameters())
    assert any(p.requires_grad for p in b.se.parameters())
    # freezing needs a start, and the towers apart
    with pytest.raises(LlmesrError, match="--init-from"):
        _train(beauty_subset, tmp_path / "r2", "llmesr", freeze_co="true").fit()
    # on the command line: one line, exit 2, no run folder left
    assert main(["train", str(beauty_subset), "--model", "llmesr", "--set", "freeze_co=true",
                 "--quiet", "--out", str(tmp_path / "r5")]) == 2
    assert not (tmp_path / "r5").exists()
    with pytest.raises(LlmesrError, match="share_encoder=false"):
        build_configs("default", "sasrec", "llmesr", {"freeze_co": "true",
                                                      "share_encoder": "true"})
    mcfg, tcfg = build_configs("default", "sasrec", "llmesr", {"max_len": "30"})
    with pytest.raises(LlmesrError, match="an llminit or id run"):
        Trainer(beauty_subset, mcfg, tcfg, tmp_path / "r3", progress=False,
                log=lambda *a: None, init_from=tmp_path / "res").fit()
