"""``llmesr reproduce``: a models × backbones × seeds grid of training runs, then the report.

Layout::

    OUT/
      grid.json               the grid's settings (written first)
      runs/<backbone>-<model>-seed<seed>/    one run directory each (see trainer.py)
      runs/<...>.log          the run's output when runs go in parallel (--jobs > 1)
      report/                 report.md, report.csv, report.json, groups.png, buckets.png,
                              tsne.png (see llmesr.evaluation.report)

Running the command again continues the grid: finished runs (metrics.json present, same
settings) are kept, interrupted ones resume from their last epoch, the rest start.

:func:`train_grid` is the runner behind it, shared with ``llmesr sweep``
(:mod:`llmesr.training.sweep`), whose grid is one setting's values x seeds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmesr.data.io import write_json_atomic
from llmesr.errors import LlmesrError
from llmesr.models.config import BACKBONES, MODELS, build_configs

# Rough relative cost of one run, to start the long ones first when runs go in parallel.
_COST = {"id": 1, "llminit": 1, "llmesr": 6, "rlmrec": 1.5, "cities": 1.2, "melt": 3}


@dataclass
class GridRun:
    backbone: str
    model: str
    seed: int
    path: Path
    #: this run's own settings (``--set`` strings) over the grid's
    settings: dict[str, str] = field(default_factory=dict)
    #: this run's own settings file (``--config-dir``), in place of the grid's ``config``
    config: Path | None = None

    @property
    def name(self) -> str:
        return self.path.name


def plan_grid(out: Path, models: list[str], backbones: list[str], seeds: list[int]
              ) -> list[GridRun]:
    for m in models:
        if m not in MODELS:
            raise LlmesrError(f"unknown model {m!r}; models: {', '.join(MODELS)}")
    for b in backbones:
        if b not in BACKBONES:
            raise LlmesrError(f"unknown backbone {b!r}; backbones: {', '.join(BACKBONES)}")
    if not models or not backbones or not seeds:
        raise LlmesrError("the grid is empty: give at least one model, backbone and seed")
    if len(set(seeds)) != len(seeds):
        raise LlmesrError("a seed is listed twice")
    return [GridRun(b, m, s, out / "runs" / f"{b}-{m}-seed{s}")
            for b in backbones for m in models for s in seeds]


def _run_settings(run: GridRun, overrides: dict[str, str]) -> dict[str, str]:
    return {**overrides, **run.settings, "seed": str(run.seed)}


def _status(run: GridRun, preset: str | None, overrides: dict[str, str],
            config: str | Path | None = None) -> str:
    """done | resume | new for a planned run (raises if the folder holds another run)."""
    from llmesr.training.trainer import same_settings

    mcfg, tcfg = build_configs(preset, run.backbone, run.model, _run_settings(run, overrides),
                               config=run.config or config)
    if not run.path.exists() or not any(run.path.iterdir()):
        return "new"
    if not (run.path / "config.json").is_file():
        return "new"        # died before writing anything useful
    if not same_settings(run.path, mcfg, tcfg):
        raise LlmesrError(f"{run.path} holds a run with other settings; use another --out or "
                          "remove it")
    if (run.path / "metrics.json").is_file():
        return "done"
    return "resume" if (run.path / "checkpoint" / "state.json").is_file() else "new"


def grid_status(grid: list[GridRun], preset: str | None, overrides: dict[str, str],
                config: str | Path | None = None) -> dict[str, str]:
    """Each run's status (see :func:`_status`); checks every run's settings before anything
    starts."""
    return {run.name: _status(run, preset, overrides, config) for run in grid}


def _train_args(data_dir: Path, run: GridRun, preset: str | None, overrides: dict[str, str],
                status: str, embeddings: str | None, config: str | Path | None = None
                ) -> list[str]:
    args = [str(data_dir), "--model", run.model, "--backbone", run.backbone, "--out",
            str(run.path)]
    if preset:
        args += ["--preset", preset]
    if config is not None:
        args += ["--config", str(config)]
    for k, v in overrides.items():
        args += ["--set", f"{k}={v}"]
    if embeddings:
        args += ["--embeddings", embeddings]
    args.append("--resume" if status == "resume" else "--overwrite")
    return args


def train_grid(data_dir: Path, grid: list[GridRun], statuses: dict[str, str], *,
               preset: str | None, overrides: dict[str, str],
               config: str | Path | None = None, embeddings: str | None = None, jobs: int = 1,
               progress: bool = True, log=print) -> None:
    """Train every run of ``grid`` that is not ``done`` (resuming the interrupted ones), one
    at a time in this process or ``jobs`` at a time as ``llmesr train`` subprocesses (each
    with cores / jobs threads and its output in ``<run>.log``)."""
    if jobs < 1:
        raise LlmesrError("--jobs must be at least 1")
    todo = [r for r in grid if statuses[r.name] != "done"]
    log(f"grid: {len(grid)} runs, {len(grid) - len(todo)} already finished, {len(todo)} to "
        f"train ({jobs} at a time)")
    failed: list[str] = []
    t0 = time.perf_counter()
    if jobs == 1:
        from llmesr.training.trainer import Trainer

        for i, run in enumerate(todo, 1):
            log(f"[{i}/{len(todo)}] {run.name} ({statuses[run.name]})")
            mcfg, tcfg = build_configs(preset, run.backbone, run.model,
                                       _run_settings(run, overrides),
                                       config=run.config or config)
            Trainer(data_dir, mcfg, tcfg, run.path, embeddings=embeddings,
                    resume=statuses[run.name] == "resume", overwrite=True, progress=progress,
                    log=log).fit()
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        todo.sort(key=lambda r: -_COST.get(r.model, 1))

        def work(run: GridRun) -> None:
            args = _train_args(data_dir, run, preset, _run_settings(run, overrides),
                               statuses[run.name], embeddings, run.config or config)
            logfile = run.path.parent / f"{run.name}.log"
            logfile.parent.mkdir(parents=True, exist_ok=True)
            log(f"start {run.name} ({statuses[run.name]}; output in {logfile})")
            with open(logfile, "a") as f:
                rc = subprocess.run([sys.executable, "-m", "llmesr.cli", "train", *args,
                                     "--quiet"], stdout=f, stderr=subprocess.STDOUT,
                                    env=env).returncode
            if rc != 0:
                failed.append(f"{run.name} (exit {rc}; see {logfile})")
            log(f"{'FAILED' if rc else 'finished'} {run.name} "
                f"({(time.perf_counter() - t0) / 60:.1f} min into the grid)")

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(work, todo))
    if failed:
        raise LlmesrError(f"{len(failed)} run(s) failed: {'; '.join(failed)}. The finished runs "
                          "are kept; run the same command again to retry")
    log(f"training done in {(time.perf_counter() - t0) / 60:.1f} min")


def packaged_config_dirs() -> dict[str, Path]:
    """The tuned settings shipped with llmesr (``llmesr/configs/<dataset>/``), by name."""
    root = Path(__file__).resolve().parent.parent / "configs"
    return {d.name: d for d in sorted(root.iterdir()) if d.is_dir()
            and any(d.glob("*.yaml"))} if root.is_dir() else {}


def resolve_config_dir(name: str | Path) -> Path:
    """A folder of ``<model>-<backbone>.yaml`` files: a path, else the name of a packaged one
    (see :func:`packaged_config_dirs`)."""
    path = Path(name)
    if path.is_dir():
        return path
    if path.exists():
        raise LlmesrError(f"--config-dir {name}: not a folder")
    packaged = packaged_config_dirs()
    if str(name) in packaged:
        return packaged[str(name)]
    raise LlmesrError(f"--config-dir {name}: no such folder, and not a packaged configuration "
                      f"(packaged: {', '.join(packaged) or 'none'})")


def config_files(config_dir: Path, grid: list[GridRun]) -> dict[tuple[str, str], Path | None]:
    """Each (model, backbone) of ``grid``: ``config_dir/<model>-<backbone>.yaml`` when it is
    there (else None: the preset alone)."""
    found = {}
    for run in grid:
        f = config_dir / f"{run.model}-{run.backbone}.yaml"
        found[(run.model, run.backbone)] = f if f.is_file() else None
    return found


def reproduce(data_dir: str | Path, out: str | Path, *, seeds: list[int],
              models: list[str] | None = None, backbones: list[str] | None = None,
              preset: str = "default", epochs: int | None = None,
              overrides: dict[str, str] | None = None, embeddings: str | None = None,
              jobs: int = 1, baseline: str | None = "id", tsne: bool = True,
              tsne_items: int = 3000, config_dir: str | Path | None = None,
              progress: bool = True, log=print) -> dict[str, Any]:
    """Train every (backbone, model, seed) not finished yet, then write OUT/report/.

    ``config_dir``: a folder (or the name of a packaged one, e.g. ``beauty-s3rec``) of
    ``<model>-<backbone>.yaml`` settings files; a run whose file is there trains with it over
    the preset (``--set`` still on top), the others with the preset alone."""
    from llmesr.evaluation.report import write_report

    data_dir, out = Path(data_dir), Path(out)
    if not (data_dir / "manifest.json").is_file():
        raise LlmesrError(f"{data_dir} is not a dataset directory; run 'llmesr prepare' first")
    models = list(models or MODELS)
    backbones = list(backbones or BACKBONES)
    overrides = dict(overrides or {})
    if epochs is not None:
        overrides["epochs"] = str(epochs)
    if jobs < 1:
        raise LlmesrError("--jobs must be at least 1")
    grid = plan_grid(out, models, backbones, seeds)
    files: dict[tuple[str, str], Path | None] = {}
    if config_dir is not None:
        files = config_files(resolve_config_dir(config_dir), grid)
        for run in grid:
            run.config = files[(run.model, run.backbone)]
        for (m, b), f in files.items():
            log(f"{m}/{b}: " + (f"settings from {f}" if f else "no file in the config "
                                "folder: the preset's settings"))
    statuses = grid_status(grid, preset, overrides)   # checks every setting before anything
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "grid.json", {
        "kind": "llmesr-grid", "data_dir": str(data_dir.resolve()), "preset": preset,
        "models": models, "backbones": backbones, "seeds": seeds, "overrides": overrides,
        "embeddings": embeddings,
        "configs": {f"{m}-{b}": None if f is None else str(f.resolve())
                    for (m, b), f in files.items()}})
    train_grid(data_dir, grid, statuses, preset=preset, overrides=overrides,
               embeddings=embeddings, jobs=jobs, progress=progress, log=log)
    log("writing the report")
    return write_report([r.path for r in grid], out / "report", baseline=baseline, tsne=tsne,
                        tsne_items=tsne_items, log=log)
