"""One validation of every ModelConfig / TrainConfig field, shared by --set, --config and
Python; config files (flat or in sections, a run's saved config)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from llmesr.cli import main
from llmesr.errors import LlmesrError
from llmesr.models.config import (MODEL_FIELDS, TRAIN_FIELDS, ModelConfig, TrainConfig,
                                  build_configs, configs_to_dict, configs_to_yaml,
                                  load_settings)


def test_every_field_is_declared_once():
    model = {f.name for f in dataclasses.fields(ModelConfig)}
    train = {f.name for f in dataclasses.fields(TrainConfig)}
    assert model == set(MODEL_FIELDS), "declare new ModelConfig fields in MODEL_FIELDS"
    assert train == set(TRAIN_FIELDS), "declare new TrainConfig fields in TRAIN_FIELDS"
    assert not model & train


def test_defaults_and_presets_are_valid():
    for preset in ("default", "paper"):
        for backbone in ("sasrec", "bert4rec", "gru4rec"):
            for model in ("id", "llminit", "llmesr"):
                build_configs(preset, backbone, model)


BAD = [
    ("lr=-1", "setting 'lr' must be a number > 0"),
    ("lr=0", "setting 'lr' must be a number > 0"),
    ("lr=nan", "setting 'lr' must be a number > 0"),
    ("lr=fast", "setting 'lr' must be a number > 0, got 'fast'"),
    ("dropout=2", "setting 'dropout' must be a number in [0, 1)"),
    ("dropout=1", "setting 'dropout' must be a number in [0, 1)"),
    ("batch_size=0", "setting 'batch_size' must be an integer >= 1"),
    ("max_len=0", "setting 'max_len' must be an integer >= 1"),
    ("hidden=1.5", "setting 'hidden' must be an integer >= 1, got '1.5'"),
    ("hidden=abc", "setting 'hidden' must be an integer >= 1, got 'abc'"),
    ("epochs=2.0", "setting 'epochs' must be an integer >= 1"),
    ("patience=0", "setting 'patience' must be an integer >= 1"),
    ("seed=-1", "setting 'seed' must be an integer in [0, 4294967295]"),
    ("alpha=-0.1", "setting 'alpha' must be a number >= 0"),
    ("mask_prob=0", "setting 'mask_prob' must be a number in (0, 1]"),
    ("sd_teachers=0", "setting 'sd_teachers' must be an integer >= 1"),
    ("eval_batch_size=-5", "setting 'eval_batch_size' must be an integer >= 1"),
    ("adapter_layers=3", "setting 'adapter_layers' must be one of 1, 2"),
    ("causal=maybe", "setting 'causal' must be true or false"),
    ("exclude_seen=maybe", "setting 'exclude_seen' must be true, false or auto"),
    ("loss=mse", "setting 'loss' must be one of bce, ce"),
    ("backbone=lstm", "setting 'backbone' must be one of sasrec, bert4rec, gru4rec"),
    ("device=gpu", "setting 'device' must be auto, cpu, cuda, cuda:N or mps"),
    ("test_protocols=full,all", "setting 'test_protocols' must be a comma-separated list"),
    ("test_protocols=full,full", "an entry is repeated"),
    ("valid_protocol=none", "setting 'valid_protocol' must be one of full, sampled"),
    ("lrr=0.1", "unknown setting 'lrr'; did you mean 'lr'?"),
    ("heads=3", "hidden must be divisible by heads"),
]


@pytest.mark.parametrize("setting,message", BAD)
def test_bad_set_values_are_one_line_errors(setting, message, tmp_path, capsys):
    rc = main(["train", str(tmp_path / "no-data"), "--model", "id", "--set", setting,
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("llmesr: error: ") and err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("epochs", ["0", "-3"])
def test_epochs_flag_must_be_positive(epochs, tmp_path, capsys):
    rc = main(["train", str(tmp_path), "--model", "id", "--epochs", epochs,
               "--out", str(tmp_path / "run")])
    assert rc == 2
    assert "setting 'epochs' must be an integer >= 1" in capsys.readouterr().err


def test_python_api_is_checked_too():
    with pytest.raises(LlmesrError, match="dropout"):
        ModelConfig(dropout=2.0)
    with pytest.raises(LlmesrError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(LlmesrError, match="hidden.*integer"):
        ModelConfig(hidden=64.5)
    with pytest.raises(LlmesrError, match="causal"):
        ModelConfig(causal=1)                      # an int is not a bool
    with pytest.raises(LlmesrError, match="max_len"):
        build_configs("default", "sasrec", "id", {"max_len": 0})
    # ints widen to floats; lists become tuples
    m, t = build_configs("default", "sasrec", "id", {"alpha": 0, "test_protocols": ["full"]})
    assert m.alpha == 0.0 and isinstance(m.alpha, float) and t.test_protocols == ("full",)
    cfg = TrainConfig()
    cfg.lr = -1.0
    with pytest.raises(LlmesrError, match="'lr'"):
        cfg.validate()


# ---- config files --------------------------------------------------------------------------
def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_flat_and_sectioned_files(tmp_path):
    flat = _write(tmp_path / "flat.yaml", "model: id\nbackbone: gru4rec\nlr: 1e-3\n"
                  "dropout: 0.25\npatience: 3\ntest_protocols: [full]\n")
    m, t = build_configs(None, None, None, config=flat)
    assert (m.model, m.backbone, m.layers, m.dropout) == ("id", "gru4rec", 1, 0.25)
    assert t.lr == 0.001 and t.patience == 3 and t.test_protocols == ("full",)
    sect = _write(tmp_path / "sect.yaml", "model:\n  model: id\n  hidden: 32\ntrain:\n"
                  "  lr: 0.002\n  epochs: 7\n")
    m, t = build_configs("default", None, None, config=sect)
    assert (m.model, m.hidden, t.lr, t.epochs) == ("id", 32, 0.002, 7)


def test_layers_preset_file_set(tmp_path):
    f = _write(tmp_path / "run.yaml", "model: {model: id}\ntrain: {ties: pessimistic, "
               "epochs: 9, seed: 3}\n")
    # the paper preset's other settings stay below the file
    m, t = build_configs("paper", None, None, {"epochs": "4"}, config=f)
    assert t.ties == "pessimistic" and t.valid_protocol == "sampled" and not m.causal
    assert t.epochs == 4 and t.seed == 3            # --set over the file
    # explicit model / backbone over the file's
    m, _ = build_configs("default", "bert4rec", "llmesr", config=f)
    assert (m.model, m.backbone, m.causal) == ("llmesr", "bert4rec", False)
    p = _write(tmp_path / "p.yaml", "preset: paper\nmodel: id\n")
    _, t = build_configs(None, None, None, config=p)
    assert t.valid_protocol == "sampled"


@pytest.mark.parametrize("text,message", [
    ("lrr: 0.1\n", "unknown setting 'lrr'; did you mean 'lr'?"),
    ("model: {hidden: 32, lr: 0.1}\n", "'lr' is a train setting: put it under 'train:'"),
    ("train: {colour: red}\n", "section 'train': unknown setting 'colour'"),
    ("dropout: 2\n", "setting 'dropout' must be a number in [0, 1), got 2"),
    ("hidden: 64.5\n", "setting 'hidden' must be an integer >= 1, got 64.5"),
    ("use_co_view: maybe\n", "setting 'use_co_view' must be true or false"),
    ("- lr\n- 0.1\n", "expected a mapping of settings"),
    ("lr: [1\n", "not valid YAML"),
    ("preset: faithful\n", "preset must be one of paper, default"),
])
def test_bad_files_name_the_file_and_key(tmp_path, capsys, text, message):
    f = _write(tmp_path / "run.yaml", text)
    rc = main(["train", str(tmp_path), "--config", str(f), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(f) in err and message in err, err


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(LlmesrError, match="settings file not found"):
        load_settings(tmp_path / "nope.yaml")
    (tmp_path / "latin.yaml").write_bytes(b"co_init: caf\xe9\n")
    with pytest.raises(LlmesrError, match="not UTF-8"):
        load_settings(tmp_path / "latin.yaml")
    with pytest.raises(LlmesrError, match="without config.yaml or config.json"):
        load_settings(tmp_path)
    assert load_settings(_write(tmp_path / "empty.yaml", "")) == {}


def test_a_runs_saved_config_is_a_valid_config(tmp_path):
    m0, t0 = build_configs("paper", "gru4rec", "llminit", {"dropout": "0.2", "seed": "5",
                                                          "test_protocols": "full"})
    run = tmp_path / "run"
    run.mkdir()
    # what Trainer._write_config writes (config.json) and its YAML twin (config.yaml)
    (run / "config.json").write_text(json.dumps({"kind": "llmesr-run", "format_version": 1,
                                                  "configs": configs_to_dict(m0, t0),
                                                  "dataset": {"path": "x"}}))
    for source in (run / "config.json", run):           # a folder: its config.json
        m, t = build_configs(None, None, None, config=source)
        assert configs_to_dict(m, t) == configs_to_dict(m0, t0)
    (run / "config.yaml").write_text(configs_to_yaml(m0, t0, "a header\nof two lines"))
    assert (run / "config.yaml").read_text().startswith("# a header\n# of two lines\nmodel:")
    m, t = build_configs(None, None, None, {"seed": "6"}, config=run)     # config.yaml first
    assert t.seed == 6
    t.seed = 5
    assert configs_to_dict(m, t) == configs_to_dict(m0, t0)
    # the Python form takes a mapping
    m, t = build_configs(None, None, None, config=configs_to_dict(m0, t0))
    assert configs_to_dict(m, t) == configs_to_dict(m0, t0)


def test_packaged_configs_are_valid_and_named_for_their_model():
    from llmesr.training.grid import packaged_config_dirs, resolve_config_dir

    dirs = packaged_config_dirs()
    assert "beauty-s3rec" in dirs
    for name, d in dirs.items():
        assert resolve_config_dir(name) == d
        for f in d.glob("*.yaml"):
            model, backbone = f.stem.split("-")
            mcfg, tcfg = build_configs(None, None, None, config=f)
            assert (mcfg.model, mcfg.backbone) == (model, backbone), f
            text = f.read_text()
            assert "llmesr tune" in text and "--out" in text, f"{f} names no study"
