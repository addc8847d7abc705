"""``llmesr sweep``: one setting's values x seeds, and a plot of the test metrics against it.

Layout::

    OUT/
      runs/<setting>=<value>-seed<seed>/   one run directory each (see trainer.py)
      sweep.json     settings, and per value: test full-ranking HR@10 / NDCG@10 overall and
                     by long-tail group (each seed's value, mean, std over seeds)
      sweep.png      those means as lines against the value, mean ± std shaded

The runs are trained by the grid runner of ``llmesr reproduce`` (:func:`train_grid`), so a
second call continues the sweep: finished runs are kept, interrupted ones resume. The paper's
alpha and N (sd_teachers) figure is ``--set-grid alpha=0,0.01,0.05,0.1,0.5,1`` and
``--set-grid sd_teachers=1,5,10,20``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from llmesr.data.io import write_json_atomic
from llmesr.errors import LlmesrError
from llmesr.evaluation.report import GROUP_TITLES, GROUPS
from llmesr.models.config import build_configs, setting_value
from llmesr.training.grid import GridRun, grid_status, train_grid

METRICS = ("HR@10", "NDCG@10")


def parse_grid(text: str) -> tuple[str, list[str]]:
    """``alpha=0,0.01,0.1`` -> ("alpha", ["0", "0.01", "0.1"]), each value checked."""
    key, sep, values = text.partition("=")
    key = key.strip()
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key or not vals:
        raise LlmesrError(f"--set-grid needs KEY=V1,V2,..., got {text!r}")
    if key in ("seed", "model", "backbone"):
        raise LlmesrError(f"--set-grid {key}: "
                          + ("seeds come from --seeds" if key == "seed" else
                             "compare models and backbones with 'llmesr reproduce'"))
    parsed = [setting_value(key, v) for v in vals]       # unknown key / bad value: one clear line
    if len({repr(p) for p in parsed}) != len(parsed):
        raise LlmesrError(f"--set-grid {key}: a value is listed twice")
    return key, vals


def _folder(key: str, value: str, seed: int) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", f"{key}={value}") + f"-seed{seed}"


def sweep(data_dir: str | Path, out: str | Path, *, param: str, values: list[str],
          seeds: list[int], model: str | None = None, backbone: str | None = None,
          preset: str | None = None, overrides: dict[str, str] | None = None,
          config: str | Path | None = None, epochs: int | None = None,
          embeddings: str | None = None, jobs: int = 1, progress: bool = True,
          log=print) -> dict[str, Any]:
    """Train ``model`` on ``data_dir`` for every value of setting ``param`` and every seed
    (the other settings: ``preset``, then ``config``, then ``overrides``, as ``llmesr
    train``), then write OUT/sweep.json and OUT/sweep.png. Returns sweep.json's content."""
    data_dir, out = Path(data_dir), Path(out)
    if not (data_dir / "manifest.json").is_file():
        raise LlmesrError(f"{data_dir} is not a dataset directory; run 'llmesr prepare' first")
    param, values = parse_grid(f"{param}={','.join(values)}")
    overrides = dict(overrides or {})
    if epochs is not None:
        overrides["epochs"] = str(epochs)
    if param in overrides:
        raise LlmesrError(f"{param} is both swept (--set-grid) and set (--set); give it once")
    if not seeds:
        raise LlmesrError("give at least one seed (--seeds)")
    if len(set(seeds)) != len(seeds):
        raise LlmesrError("a seed is listed twice")
    mcfg, tcfg = build_configs(preset, backbone, model, overrides, config=config)
    if "full" not in tcfg.test_protocols:
        raise LlmesrError("the sweep plots test full-ranking metrics: test_protocols must "
                          "include full")
    grid = [GridRun(mcfg.backbone, mcfg.model, s, out / "runs" / _folder(param, v, s),
                    {param: v}) for v in values for s in seeds]
    statuses = grid_status(grid, preset, overrides, config)   # every cell checked first
    out.mkdir(parents=True, exist_ok=True)
    log(f"sweep: {param} = {', '.join(values)} x seeds {', '.join(map(str, seeds))} "
        f"({mcfg.model}, {mcfg.backbone})")
    train_grid(data_dir, grid, statuses, preset=preset, overrides=overrides, config=config,
               embeddings=embeddings, jobs=jobs, progress=progress, log=log)
    result = summarise(grid, param, values, seeds)
    result.update(data_dir=str(data_dir.resolve()), model=mcfg.model, backbone=mcfg.backbone,
                  preset=preset or "default", overrides=overrides,
                  config=None if config is None else str(Path(config).resolve()),
                  embeddings=embeddings)
    write_json_atomic(out / "sweep.json", result)
    plot_sweep(result, out / "sweep.png")
    log(f"written: {out / 'sweep.json'}, {out / 'sweep.png'}")
    return result


def _metric(m: dict[str, Any], group: str, metric: str) -> float:
    v = m["test"]["full"].get(group, {}).get(metric)
    return math.nan if v is None else float(v)


def summarise(grid: list[GridRun], param: str, values: list[str], seeds: list[int]
              ) -> dict[str, Any]:
    """Per group and metric: each value's seeds, mean and std (ddof 1; 0 for one seed;
    None where a group is empty)."""
    import json

    by_value = {v: [json.loads((r.path / "metrics.json").read_text()) for r in grid
                    if r.settings[param] == v] for v in values}
    results: dict[str, Any] = {}
    for g in GROUPS:
        results[g] = {}
        for metric in METRICS:
            runs = [[_metric(m, g, metric) for m in by_value[v]] for v in values]
            arr = np.array(runs, dtype=float)
            with np.errstate(invalid="ignore"):
                mean = arr.mean(axis=1)
                std = arr.std(axis=1, ddof=1) if arr.shape[1] > 1 else np.zeros(len(values))
            results[g][metric] = {"mean": _nulls(mean), "std": _nulls(std),
                                  "seeds": [_nulls(r) for r in arr]}
    first = by_value[values[0]][0]
    return {"kind": "llmesr-sweep", "param": param, "values": values, "seeds": seeds,
            "protocol": "full", "split": "test",
            "counts": first["test"]["full"]["counts"],
            "results": results,
            "runs": {v: [str(r.path) for r in grid if r.settings[param] == v] for v in values}}


def _nulls(a: Any) -> list[float | None]:
    return [None if not math.isfinite(float(x)) else float(x) for x in a]


def plot_sweep(result: dict[str, Any], path: str | Path) -> Path:
    """HR@10 and NDCG@10 (test, full ranking) against the swept value: one line per group,
    mean ± std over seeds shaded. Values sit at even spacing, labelled (a grid such as
    0, 0.01, 0.05, 0.1, 0.5, 1 has no useful linear or log axis)."""
    from llmesr.evaluation.report import _pyplot, _save_fig

    plt = _pyplot()
    x = np.arange(len(result["values"]))
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5.2 * len(METRICS), 3.8))
    for ax, metric in zip(np.atleast_1d(axes), METRICS):
        for g in GROUPS:
            cell = result["results"][g][metric]
            mean = np.array([np.nan if v is None else v for v in cell["mean"]])
            std = np.array([0.0 if v is None else v for v in cell["std"]])
            (line,) = ax.plot(x, mean, marker="o", lw=2.2 if g == "overall" else 1.4,
                              label=f"{GROUP_TITLES[g]} ({result['counts'][g]})")
            ax.fill_between(x, np.maximum(mean - std, 0), mean + std, alpha=0.12,
                            color=line.get_color())
        ax.set_xticks(x, result["values"])
        ax.set_xlabel(result["param"])
        ax.set_ylabel(f"test {metric} (full ranking)")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8, title="group (test cases)", title_fontsize=8)
    n = len(result["seeds"])
    fig.suptitle(f"{result.get('model', '')} / {result.get('backbone', '')}: "
                 f"{result['param']} sweep, mean ± std over {n} seed{'s' if n > 1 else ''}",
                 fontsize=10)
    fig.tight_layout()
    return _save_fig(fig, Path(path))


__all__ = ["sweep", "parse_grid", "summarise", "plot_sweep"]
