"""``llmesr tune``: hyper-parameter search with Optuna, on validation only.

Layout::

    OUT/
      study.db          the Optuna study (SQLite): every trial's settings, per-epoch validation
                        NDCG@10 and state; a second call continues it
      trials/NNNN/      one run directory per trial (see trainer.py), the trial's number
      trials.json       one row per trial: state, value, settings, epochs, seconds
      best.yaml         the best trial's full settings, for 'llmesr train --config'

Each trial trains with early stopping on validation full-ranking NDCG@10 (the objective is
the best epoch's value) and reports every epoch's value to a median pruner, which stops
trials that fall behind the earlier ones at the same epoch. The test split is never
evaluated: trials train with ``test_protocols`` empty. The TPE sampler is seeded (``seed``
plus the number of trials before, so a continued study draws new settings rather than the
first ones again).

The budget, ``trials``, counts trials that completed or were pruned; failed ones (a killed
process, an error) are not counted. Give every model compared the same budget, the same
``epochs`` and ``patience`` and the same data.

A study killed at any instant continues: trials that a killed process left running are
marked failed when the next call starts, and their settings queued again, so they are tried
first.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from llmesr.data.io import sha256_file, write_json_atomic
from llmesr.errors import LlmesrError
from llmesr.models.config import (LOSSES, MODEL_FIELDS, TRAIN_FIELDS, ModelConfig, TrainConfig,
                                  build_configs, configs_from_dict, load_settings,
                                  write_config_yaml)

STUDY_NAME = "llmesr-tune"


@dataclass(frozen=True)
class Param:
    """One searched setting: a float or int range (``log`` for a log scale, ``step`` for a
    grid) or categorical ``choices``; ``when`` = (setting, values) searches it only when that
    setting (searched or fixed) has one of those values."""

    kind: str                          #: float | int | choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    when: tuple[str, tuple] | None = None

    def suggest(self, trial, name: str) -> Any:
        if self.kind == "float":
            v = trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)
            return round(v, 10)
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return trial.suggest_categorical(name, list(self.choices))

    def holds(self, v: Any) -> bool:
        """Whether ``v`` is a value this parameter can take."""
        if self.kind == "choice":
            return any(type(v) is type(c) and v == c for c in self.choices)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if not self.low <= v <= self.high:
            return False
        if self.step:
            k = (v - self.low) / self.step
            return abs(k - round(k)) < 1e-9
        return True

    def describe(self) -> str:
        if self.kind == "choice":
            text = "{" + ", ".join(map(str, self.choices)) + "}"
        else:
            text = (f"{'log-' if self.log else ''}{self.kind} [{self.low:g}, {self.high:g}]"
                    + (f" step {self.step:g}" if self.step else ""))
        if self.when is not None:
            text += f" when {self.when[0]} in {{{', '.join(map(str, self.when[1]))}}}"
        return text


def Float(low: float, high: float, log: bool = False, step: float | None = None,  # noqa: N802
          when: tuple | None = None) -> Param:
    return Param("float", low, high, log=log, step=step, when=when)


def Choice(*choices: Any, when: tuple | None = None) -> Param:  # noqa: N802
    return Param("choice", choices=tuple(choices), when=when)


# ---- the declared search spaces ---------------------------------------------------------------
# The losses and their parameters: only those ModelConfig has are searched (see search_space).
_SAMPLED = ("sampled_ce", "gbce")
COMMON: dict[str, Param] = {
    "lr": Float(1e-4, 1e-2, log=True),
    "weight_decay": Choice(0.0, 1e-6, 1e-5, 1e-4),
    "dropout": Float(0.0, 0.7, step=0.1),
    "hidden": Choice(32, 64, 128),
    "max_len": Choice(20, 50, 100, 200),
    "loss": Choice("bce", "ce", "sampled_ce", "gbce"),
    "sampled_negatives": Choice(64, 128, 256, 512, when=("loss", _SAMPLED)),
    "negative_sampler": Choice("uniform", "popularity", when=("loss", _SAMPLED)),
    "gbce_t": Float(0.0, 1.0, step=0.05, when=("loss", ("gbce",))),
}
# LLMInit and LLM-ESR initialise the ID table from the PCA of the LLM embeddings, whose size
# fixes hidden (embed with another --pca-dim to change it).
_NO_HIDDEN = {k: v for k, v in COMMON.items() if k != "hidden"}
SPACES: dict[str, dict[str, Param]] = {
    "id": COMMON,
    "llminit": _NO_HIDDEN,
    "rlmrec": {**COMMON, "rlmrec_weight": Choice(0.001, 0.01, 0.1),
               "rlmrec_tau": Choice(0.1, 0.2, 0.5)},
    # the backbone's space and CITIES' own split and shots (the official 5 and 10 inside)
    "cities": {**COMMON, "cities_head_count": Choice(3, 5, 10),
               "cities_max_shots": Choice(3, 5, 10)},
    # the backbone's space and MELT's branch weights (its README's per-dataset range)
    "melt": {**COMMON, "melt_lambda_u": Choice(0.1, 0.2, 0.3, 0.4),
             "melt_lambda_i": Choice(0.1, 0.2, 0.3, 0.4)},
    "llmesr": {**_NO_HIDDEN,
               # the paper's grid for both (its figure 4)
               "alpha": Choice(0.0, 0.01, 0.05, 0.1, 0.5, 1.0),
               "sd_teachers": Choice(1, 5, 10, 20, when=("alpha", (0.01, 0.05, 0.1, 0.5, 1.0)))},
}


def search_space(model: str, fixed: set[str] = frozenset()) -> dict[str, Param]:
    """The declared space of ``model``, less the settings the user fixed (``--set``) and
    the settings and loss values this ModelConfig does not have."""
    if model not in SPACES:
        raise LlmesrError(f"no search space for model {model!r}; models: {', '.join(SPACES)}")
    space: dict[str, Param] = {}
    for name, p in SPACES[model].items():
        if name in fixed or (name not in MODEL_FIELDS and name not in TRAIN_FIELDS):
            continue
        if name == "loss":
            p = Choice(*[v for v in p.choices if v in LOSSES], when=p.when)
        if p.when is not None and p.when[0] == "loss":
            values = tuple(v for v in p.when[1] if v in LOSSES)
            if not values:
                continue
            p = Param(p.kind, p.low, p.high, p.log, p.step, p.choices, ("loss", values))
        space[name] = p
    return space



def base_values(space: dict[str, Param], base: dict[str, Any]) -> dict[str, Any] | None:
    """The base configuration as a point of ``space`` (the first trial of a new study, so the
    study's best is never below the untuned settings on validation), or None when a base
    value lies outside the space."""
    point: dict[str, Any] = {}
    for name, p in space.items():
        if p.when is not None and point.get(p.when[0], base.get(p.when[0])) not in p.when[1]:
            continue
        v = base.get(name)
        if p.kind == "float" and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not p.holds(v):
            return None
        point[name] = v
    return point


def searched(p: Param, space: dict[str, Param], base: dict[str, Any]) -> bool:
    """Whether a trial can ever suggest ``p``: not when its condition's setting is fixed
    outside the condition (``sampled_negatives`` under ``--set loss=ce``). Such parameters stay
    in the space, so a study keeps its identity and resumes; they are only left out of the
    progress line."""
    return p.when is None or p.when[0] in space or base.get(p.when[0]) in p.when[1]


def suggest(trial, space: dict[str, Param], base: dict[str, Any]) -> dict[str, Any]:
    """This trial's values for ``space``; ``base`` gives the value of a condition that is not
    searched."""
    chosen: dict[str, Any] = {}
    for name, p in space.items():
        if p.when is not None:
            field, values = p.when
            if chosen.get(field, base.get(field)) not in values:
                continue
        chosen[name] = p.suggest(trial, name)
    return chosen


# ---- the study ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _lock(out: Path):
    """One process per study folder: a second one would take the first one's running trials
    for dead ones."""
    try:
        import fcntl
    except ImportError:       # not POSIX: no lock
        yield
        return
    f = open(out / "tune.lock", "w")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise LlmesrError(f"another 'llmesr tune' is working on {out}; wait for it or use "
                              "another --out") from None
        yield
    finally:
        f.close()


def _storage(out: Path):
    import optuna

    return optuna.storages.RDBStorage(
        f"sqlite:///{(out / 'study.db').resolve()}",
        engine_kwargs={"connect_args": {"timeout": 60}})


def _recover(study, out: Path, log) -> None:
    """Trials left running by a killed process: failed, their settings queued again."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        shutil.rmtree(out / "trials" / f"{t.number:04d}", ignore_errors=True)
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        log(f"trial #{t.number:04d} was interrupted (its process ended); queued again")


def tune(data_dir: str | Path, out: str | Path, *, model: str | None = None,
         backbone: str | None = None, trials: int, timeout: float | None = None,
         preset: str | None = None, overrides: dict[str, str] | None = None,
         config: str | Path | None = None, epochs: int | None = None,
         embeddings: str | None = None, seed: int | None = None, prune: bool = True,
         prune_warmup: int = 5, prune_startup: int = 5, command: str | None = None,
         log=print) -> dict[str, Any]:
    """Run (or continue) a study until ``trials`` trials completed or were pruned, or until
    ``timeout`` seconds have passed (no trial starts after it; a running one finishes).

    The settings of every trial: ``preset``, then ``config``, then the searched values, then
    ``overrides`` (which also leave the space: a setting given there is fixed); validation is
    always full ranking and the test split is not evaluated. Writes OUT/best.yaml (the best
    trial's settings, test evaluation back on) and OUT/trials.json. Returns the summary.
    """
    import optuna
    from optuna.trial import TrialState

    data_dir, out = Path(data_dir), Path(out)
    if not (data_dir / "manifest.json").is_file():
        raise LlmesrError(f"{data_dir} is not a dataset directory; run 'llmesr prepare' first")
    if trials < 1:
        raise LlmesrError("--trials must be at least 1")
    if timeout is not None and timeout <= 0:
        raise LlmesrError("--timeout must be positive (seconds)")
    if prune_warmup < 0 or prune_startup < 0:
        raise LlmesrError("--prune-warmup and --prune-startup must be 0 or more")
    fixed = {k: str(v) for k, v in (overrides or {}).items()}
    if epochs is not None:
        fixed["epochs"] = str(epochs)
    if seed is not None:
        fixed["seed"] = str(seed)
    base_m, base_t = build_configs(preset, backbone, model, fixed, config=config)
    space = search_space(base_m.model, set(fixed))
    base = {**_as_dict(base_m), **_as_dict(base_t)}
    forced = {"valid_protocol": "full", "test_protocols": ()}

    def configs(values: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
        # searched values over the base, the user's --set over them, then the tuning rules
        return build_configs(preset, base_m.backbone, base_m.model,
                             {**values, **fixed, **forced}, config=config)

    settings = {
        "data": {"path": str(data_dir.resolve()),
                 "manifest_sha256": sha256_file(data_dir / "manifest.json")},
        "model": base_m.model, "backbone": base_m.backbone, "preset": preset or "default",
        "config": None if config is None else json.loads(json.dumps(load_settings(config))),
        "fixed": fixed, "embeddings": embeddings,
        "space": {k: p.describe() for k, p in space.items()},
        "pruning": {"on": prune, "warmup_epochs": prune_warmup, "startup_trials": prune_startup},
    }
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _lock(out):
        study = optuna.create_study(
            storage=_storage(out), study_name=STUDY_NAME, direction="maximize",
            load_if_exists=True,
            pruner=(optuna.pruners.MedianPruner(n_startup_trials=prune_startup,
                                                n_warmup_steps=prune_warmup)
                    if prune else optuna.pruners.NopPruner()))
        saved = study.user_attrs.get("settings")
        if saved is None:
            study.set_user_attr("settings", settings)
        elif saved != json.loads(json.dumps(settings)):
            diff = sorted(k for k in settings if saved.get(k) != json.loads(
                json.dumps(settings[k])))
            raise LlmesrError(f"{out} holds a study with other settings ({', '.join(diff)} "
                              "differ); use another --out, or the same settings to continue")
        _recover(study, out, log)
        if not study.trials:
            first = base_values(space, base)
            if first is not None:
                study.enqueue_trial(first, user_attrs={"base": True})
                log("trial 1 is the base configuration: " + (_fmt(first) or "nothing searched"))
        sampler_seed = base_t.seed

        def counted() -> int:
            return len(study.get_trials(deepcopy=False,
                                        states=(TrialState.COMPLETE, TrialState.PRUNED)))

        done = counted()
        log(f"tune {base_m.model}/{base_m.backbone}: {done} of {trials} trials done; searching "
            + ("; ".join(f"{k} {p.describe()}" for k, p in space.items()
                         if searched(p, space, base)) or "nothing")
            + (f"; fixed: {', '.join(f'{k}={v}' for k, v in fixed.items())}" if fixed else ""))
        t0 = time.monotonic()
        while done < trials:
            if timeout is not None and time.monotonic() - t0 >= timeout:
                log(f"timeout ({timeout:g} s): stopping after {done} of {trials} trials; run "
                    "the same command again to continue")
                break
            study.sampler = optuna.samplers.TPESampler(
                seed=(sampler_seed * 100_003 + len(study.trials)) % 2**32)
            trial = study.ask()
            _run_trial(study, trial, data_dir, out, space, base, configs, embeddings, done + 1,
                       trials, log)
            done = counted()
            _write_summary(study, out, base_t, command, trials)
        _write_summary(study, out, base_t, command, trials)
        return _summary(study, trials)


def _as_dict(cfg: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(cfg)


def _run_trial(study, trial, data_dir: Path, out: Path, space, base, configs: Callable,
               embeddings, k: int, n: int, log) -> None:
    import optuna
    from optuna.trial import TrialState

    from llmesr.training.trainer import Trainer

    name = f"#{trial.number:04d}"
    run_dir = out / "trials" / f"{trial.number:04d}"
    t0 = time.perf_counter()
    epochs_seen = [0]
    try:
        values = suggest(trial, space, base)
        mcfg, tcfg = configs(values)

        def on_epoch(epoch: int, valid: dict[str, float]) -> None:
            epochs_seen[0] = epoch
            trial.report(valid["NDCG@10"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        trainer = Trainer(data_dir, mcfg, tcfg, run_dir, embeddings=embeddings, overwrite=True,
                          progress=False, log=lambda *a, **kw: None, on_epoch=on_epoch)
        metrics = trainer.fit()
    except optuna.TrialPruned:
        frozen = study.tell(trial, state=TrialState.PRUNED)
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
        last = max(frozen.intermediate_values.items(), default=(0, math.nan))
        log(f"trial {k}/{n} {name} pruned at epoch {epochs_seen[0]}: valid NDCG@10 "
            f"{last[1]:.4f} ({time.perf_counter() - t0:.0f} s)  {_fmt(values)}")
        return
    except KeyboardInterrupt:
        study.tell(trial, state=TrialState.FAIL)       # tried again first on the next call
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        raise
    except LlmesrError as e:
        study.tell(trial, state=TrialState.FAIL)
        raise LlmesrError(f"trial {name} failed: {e}") from None
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    valid = metrics["valid"]["full"]["overall"]
    for key in ("best_epoch", "epochs", "train_seconds"):
        trial.set_user_attr(key, metrics[key])
    trial.set_user_attr("valid_HR@10", valid["HR@10"])
    study.tell(trial, valid["NDCG@10"])
    shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)   # resume is not needed now
    best = study.best_trial
    log(f"trial {k}/{n} {name} complete: valid NDCG@10 {valid['NDCG@10']:.4f} HR@10 "
        f"{valid['HR@10']:.4f}, best epoch {metrics['best_epoch']} of {metrics['epochs']} "
        f"({time.perf_counter() - t0:.0f} s)  {_fmt(values)}  [best #{best.number:04d} "
        f"{best.value:.4f}]")


def _fmt(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in values.items())


def _write_summary(study, out: Path, base_t: TrainConfig, command: str | None,
                   budget: int) -> None:
    """OUT/trials.json, and OUT/best.yaml from the best trial's own config.json."""
    from optuna.trial import TrialState

    rows = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
             **{k: v for k, v in t.user_attrs.items()},
             "last_epoch": max(t.intermediate_values, default=None),
             "seconds": (round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
                         if t.datetime_complete and t.datetime_start else None)}
            for t in study.get_trials(deepcopy=False)]
    write_json_atomic(out / "trials.json", {"kind": "llmesr-tune", "study": str(out / "study.db"),
                                            "budget": budget, "trials": rows})
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return
    best = max(complete, key=lambda t: t.value)
    run_dir = out / "trials" / f"{best.number:04d}"
    if not (run_dir / "config.json").is_file():
        return
    saved = json.loads((run_dir / "config.json").read_text())["configs"]
    mcfg, tcfg = configs_from_dict(saved)
    tcfg.test_protocols = base_t.test_protocols     # train --config evaluates the test split
    n_done = len(study.get_trials(deepcopy=False,
                                  states=(TrialState.COMPLETE, TrialState.PRUNED)))
    header = "\n".join([
        f"llmesr tune: the best of {n_done} trials (budget {budget}) in {out / 'study.db'}",
        f"trial #{best.number:04d} ({run_dir}): validation full-ranking NDCG@10 "
        f"{best.value:.4f}, HR@10 {best.user_attrs.get('valid_HR@10', float('nan')):.4f}, "
        f"best epoch {best.user_attrs.get('best_epoch')}",
        f"searched: {_fmt(best.params)}",
        *([f"made by: {command}"] if command else []),
        "use: llmesr train DATA --config best.yaml --out RUN_DIR",
    ])
    write_config_yaml(out / "best.yaml", mcfg, tcfg, header)


def _summary(study, budget: int) -> dict[str, Any]:
    from optuna.trial import TrialState

    states = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = max(complete, key=lambda t: t.value) if complete else None
    return {"budget": budget, **states,
            "best": None if best is None else {"number": best.number, "value": best.value,
                                               "params": best.params}}


__all__ = ["tune", "search_space", "SPACES", "Param"]
