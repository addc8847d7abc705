"""Tables, significance tests and plots from finished runs (the layout of the paper's main table).

Two levels:

- ``group_table`` / ``group_bars`` take ``{label: metrics}`` where ``metrics`` is one run's
  ``metrics.json`` (``{"test": {protocol: {group: {metric: value}, "counts": {...}}}, ...}``);
  the demo uses them.
- ``write_report`` (``llmesr report``) takes run directories, groups them into variants (same
  settings, several seeds), and writes mean ± std tables, paired tests against a baseline on
  per-user metrics (Holm-corrected), the five-bucket breakdowns and the plots.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmesr.errors import LlmesrError

GROUPS = ("overall", "tail_item", "head_item", "tail_user", "head_user")
GROUP_TITLES = {"overall": "overall", "tail_item": "tail item", "head_item": "head item",
                "tail_user": "tail user", "head_user": "head user"}


def _save_fig(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _cell(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.4f}"


def _protocols(results: dict[str, dict[str, Any]]) -> list[str]:
    if not results:
        raise LlmesrError("no runs to report")
    seen: list[str] = []
    for metrics in results.values():
        for p in metrics.get("test", {}):
            if p not in seen:
                seen.append(p)
    if not seen:
        raise LlmesrError("the runs have no test metrics (metrics.json has no 'test' entry)")
    return seen


def group_table(results: dict[str, dict[str, Any]], metrics: tuple[str, str] = (
        "HR@10", "NDCG@10")) -> str:
    """A Markdown table: one row per run and protocol, one column per group (H / N)."""
    head = "| model | protocol | " + " | ".join(GROUP_TITLES[g] for g in GROUPS) + " |"
    lines = [head, "|---" * (len(GROUPS) + 2) + "|"]
    for protocol in _protocols(results):
        for label, m in results.items():
            res = m.get("test", {}).get(protocol)
            if res is None:
                continue
            cells = [" / ".join(_cell(res[g].get(k)) for k in metrics) for g in GROUPS]
            lines.append(f"| {label} | {protocol} | " + " | ".join(cells) + " |")
    counts = next(iter(results.values()))["test"][_protocols(results)[0]].get("counts", {})
    note = ", ".join(f"{GROUP_TITLES[g]} {counts[g]:,}" for g in GROUPS if g in counts)
    return "\n".join(lines) + (f"\n\ncells: {' / '.join(metrics)}; test cases: {note}"
                               if note else "")


def group_bars(results: dict[str, dict[str, Any]], path: str | Path,
               metric: str = "HR@10", title: str | None = None) -> Path:
    """A PNG of grouped bars: one panel per protocol, groups on the x axis, one bar per run."""
    plt = _pyplot()
    protocols = _protocols(results)
    labels = list(results)
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.5 * len(protocols), 3.8),
                             squeeze=False)
    width = 0.8 / len(labels)
    for ax, protocol in zip(axes[0], protocols):
        for j, label in enumerate(labels):
            res = results[label].get("test", {}).get(protocol)
            if res is None:
                continue
            values = [res[g].get(metric, float("nan")) for g in GROUPS]
            xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(GROUPS))]
            ax.bar(xs, values, width=width, label=label)
        ax.set_xticks(range(len(GROUPS)), [GROUP_TITLES[g] for g in GROUPS])
        ax.set_title(f"{protocol} ranking" if protocol == "full" else f"{protocol} (100 negatives)")
        ax.set_ylabel(metric)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save_fig(fig, Path(path))


# ------------------------------------------------------------------------------------------------
# multi-seed reports: llmesr report RUN_DIR ...

MAIN_METRICS = ("HR@10", "NDCG@10")
USER_BUCKETS = ((0, 5), (5, 10), (10, 15), (15, 20), (20, None))       # history length, SPEC §2
ITEM_BUCKETS = ((0, 10), (10, 30), (30, 60), (60, 100), (100, None))   # target popularity
# settings that do not make two runs different models
# exclude_seen is how a run is evaluated, not what it is: the report reads the evaluation a
# run's metrics.json records (see build_report) and refuses to mix them
_NOT_VARIANT = {("train", "seed"), ("train", "device"), ("train", "eval_batch_size"),
                ("train", "amp"), ("train", "exclude_seen")}
ALPHA = 0.05


def _bucket_names(edges: tuple[tuple[int, int | None], ...]) -> list[str]:
    return [f"<{hi}" if lo == 0 else (f">={lo}" if hi is None else f"{lo}-{hi - 1}")
            for lo, hi in edges]


def _bucket_of(values: np.ndarray, edges: tuple[tuple[int, int | None], ...]) -> np.ndarray:
    return np.searchsorted(np.array([lo for lo, _ in edges[1:]]), values, side="right")


@dataclass
class RunResult:
    """One finished run directory: its config, metrics and per-case test ranks."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    users: np.ndarray                      # (n,) user ids (1-based) of the test cases
    ranks: dict[str, np.ndarray]           # protocol -> (n,) 0-based ranks

    @property
    def model(self) -> str:
        return self.config["configs"]["model"]["model"]

    @property
    def backbone(self) -> str:
        return self.config["configs"]["model"]["backbone"]

    @property
    def seed(self) -> int:
        return int(self.config["configs"]["train"]["seed"])

    def settings(self) -> dict[tuple[str, str], Any]:
        """The settings that make a variant (all but the seed and the hardware), with the
        defaults of settings added to llmesr after the run was made."""
        from llmesr.models.config import configs_from_dict, configs_to_dict

        try:
            full = configs_to_dict(*configs_from_dict(self.config["configs"]))
        except (KeyError, TypeError, LlmesrError) as e:
            raise LlmesrError(f"{self.path / 'config.json'} has settings this llmesr does not "
                              f"know ({e})") from None
        from llmesr.models.config import inert_settings

        # settings with no effect on this model (another model's switches) make no variant
        inert = {("model", k) for k in inert_settings(full["model"]["model"])}
        return {(part, k): (list(v) if isinstance(v, tuple) else v)
                for part in ("model", "train") for k, v in full[part].items()
                if (part, k) not in _NOT_VARIANT and (part, k) not in inert}


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LlmesrError(f"{path.parent} has no {path.name}: {what}") from None
    except (OSError, ValueError) as e:    # JSONDecodeError and UnicodeDecodeError included
        raise LlmesrError(f"cannot read {path} ({e}); it is damaged") from None
    if not isinstance(obj, dict):
        raise LlmesrError(f"{path} is damaged (a JSON {type(obj).__name__}, not an object)")
    return obj


def expand_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run directories from ``paths``; a folder without config.json contributes its sub-folders
    that have one (so ``llmesr report OUT/runs`` reports a whole grid)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / "config.json").is_file():
            out.append(p)
        elif p.is_dir() and (found := sorted(q for q in p.iterdir()
                                             if (q / "config.json").is_file())):
            out.extend(found)
        else:
            raise LlmesrError(f"{p} is not a run directory (no config.json) and holds none")
    return out


def load_run_result(path: str | Path) -> RunResult:
    path = Path(path)
    config = _read_json(path / "config.json", "not a run directory")
    if not (isinstance(config.get("configs"), dict) and isinstance(config.get("dataset"), dict)
            and all(isinstance(config["configs"].get(k), dict) for k in ("model", "train"))):
        raise LlmesrError(f"{path / 'config.json'} is not an llmesr run's config (no "
                          "configs.model / configs.train / dataset)")
    metrics = _read_json(path / "metrics.json", "the run has not finished (train it to the end, "
                         "or run 'llmesr evaluate' on it)")
    if not isinstance(metrics.get("test"), dict) or not metrics["test"]:
        raise LlmesrError(f"{path / 'metrics.json'} has no test metrics")
    try:
        users = np.load(path / "ranks_test_users.npy", allow_pickle=False)
        ranks = {p: np.load(path / f"ranks_test_{p}.npy", allow_pickle=False)
                 for p in metrics["test"]}
    except (OSError, ValueError) as e:
        raise LlmesrError(f"{path}: cannot read the per-user ranks ({e}); run 'llmesr evaluate "
                          f"{path}' to write them again") from None
    for p, r in ranks.items():
        if r.shape != users.shape:
            raise LlmesrError(f"{path}: ranks_test_{p}.npy has {len(r)} cases but "
                              f"ranks_test_users.npy {len(users)}; run 'llmesr evaluate' again")
    return RunResult(path, config, metrics, users, ranks)


@dataclass
class Variant:
    """The runs of one model configuration, one per seed."""

    label: str
    backbone: str
    model: str
    runs: list[RunResult]
    #: the variant's name in the report's tables, unique in the report: the label, with the
    #: backbone in front when the report has several (labels repeat across backbones)
    key: str = ""

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


def group_variants(runs: list[RunResult]) -> list[Variant]:
    """Runs with the same settings but the seed form one variant, labelled by its model name
    plus whatever setting sets it apart from the other variants of the same backbone/model."""
    if not runs:
        raise LlmesrError("no runs to report")
    sha = {r.config["dataset"].get("manifest_sha256") for r in runs}
    if len(sha) > 1:
        names = sorted({r.config["dataset"].get("name", "?") for r in runs})
        raise LlmesrError(f"the runs come from different datasets ({', '.join(names)}); report "
                          "each dataset separately")
    buckets: dict[str, list[RunResult]] = {}
    for r in runs:
        key = json.dumps(sorted((f"{a}.{b}", v) for (a, b), v in r.settings().items()),
                         default=str)
        buckets.setdefault(key, []).append(r)
    variants = []
    for members in buckets.values():
        seeds = [r.seed for r in members]
        if len(set(seeds)) != len(seeds):
            dup = sorted({s for s in seeds if seeds.count(s) > 1})
            raise LlmesrError("two runs have the same settings and seed "
                              f"{dup[0]}: {', '.join(str(r.path) for r in members if r.seed == dup[0])}")
        members.sort(key=lambda r: r.seed)
        variants.append(Variant(members[0].model, members[0].backbone, members[0].model, members))
    # disambiguate variants of the same backbone and model: by preset, then by the settings
    # that differ (the preset's own switches aside)
    from llmesr.models.config import PRESETS

    preset_keys = {(part, k) for p in PRESETS.values() for part in ("model", "train")
                   for k in p[part]}

    def preset_of(settings: dict[tuple[str, str], Any]) -> str:
        for name in sorted(PRESETS, key=lambda n: -sum(map(len, PRESETS[n].values()))):
            if all(settings.get((part, k)) == (list(v) if isinstance(v, tuple) else v)
                   for part in ("model", "train") for k, v in PRESETS[name][part].items()
                   if (part, k) not in _NOT_VARIANT and (part, k) in settings):
                return name
        return "custom"

    for v in variants:
        same = [w for w in variants if (w.backbone, w.model) == (v.backbone, v.model)]
        if len(same) > 1:
            mine = v.runs[0].settings()
            presets = {preset_of(w.runs[0].settings()) for w in same}
            # a preset's own switches are named by the preset; a run that matches no preset
            # names them like any other setting
            skip = preset_keys if preset_of(mine) != "custom" else set()
            diff = [f"{k[1]}={mine[k]}" for k in sorted(mine) if k not in skip and
                    any(w.runs[0].settings().get(k) != mine[k] for w in same if w is not v)]
            if len(presets) > 1:
                diff.insert(0, preset_of(mine))
            v.label = f"{v.model} ({', '.join(diff[:3])})" if diff else v.model
    order = {m: i for i, m in enumerate(("id", "cities", "melt", "llminit", "rlmrec", "llmesr"))}
    variants.sort(key=lambda v: (v.backbone, order.get(v.model, 9), v.label))
    multi = len({v.backbone for v in variants}) > 1
    for v in variants:
        v.key = f"{v.backbone} {v.label}" if multi else v.label
    return variants


@dataclass
class CaseInfo:
    """Per test case: user-group and item-group membership and the bucket indices."""

    tail_user: np.ndarray
    tail_item: np.ndarray
    user_bucket: np.ndarray
    item_bucket: np.ndarray

    def masks(self) -> dict[str, np.ndarray]:
        from llmesr.evaluation.protocols import group_masks

        return group_masks(self.tail_user, self.tail_item)


def case_info(run: RunResult, data_dir: str | Path | None = None) -> CaseInfo:
    """Group membership of ``run``'s test cases, from its dataset (or ``data_dir``)."""
    from llmesr.data.artifact import load_dataset

    path = Path(data_dir) if data_dir else Path(run.config["dataset"]["path"])
    if not (path / "manifest.json").is_file():
        raise LlmesrError(f"the dataset of {run.path} is not at {path}; pass --data DIR")
    ds = load_dataset(path)
    users = ds.users
    rows = run.users - 1
    if len(rows) and (rows.min() < 0 or rows.max() >= len(users)):
        raise LlmesrError(f"{run.path} has test users outside the dataset at {path}")
    hist = users["test_history_len"].to_numpy()[rows]
    target = users["test_item"].to_numpy()[rows]
    pop = np.concatenate([[0], ds.item_table["popularity"].to_numpy()])[target]
    info = CaseInfo(users["tail_user"].to_numpy()[rows].astype(bool), pop < ds.ts_item,
                    _bucket_of(hist, USER_BUCKETS), _bucket_of(pop, ITEM_BUCKETS))
    counts = next(iter(run.metrics["test"].values())).get("counts", {})
    got = {g: int(m.sum()) for g, m in info.masks().items()}
    if any(counts.get(g, got[g]) != got[g] for g in got):
        raise LlmesrError(f"the dataset at {path} does not match {run.path} (group sizes "
                          f"{got} against {counts}); pass the run's dataset with --data")
    return info


def full_ranking_excludes_seen(runs: list[RunResult]) -> bool:
    """Whether the runs' full-ranking test left the history's items out (metrics.json
    ``evaluation.exclude_seen``; runs made before it was recorded: no). Runs evaluated both
    ways cannot share a table: an error names one of each."""
    flags = {r.path: bool((r.metrics.get("evaluation") or {}).get("exclude_seen", False))
             for r in runs}
    if len(set(flags.values())) > 1:
        on = next(p for p, f in flags.items() if f)
        off = next(p for p, f in flags.items() if not f)
        raise LlmesrError(f"{on} was ranked without the history's items and {off} with them; "
                          "evaluate them the same way first (llmesr evaluate RUN "
                          "--exclude-seen or --no-exclude-seen)")
    return next(iter(flags.values()))


def build_report(runs: list[RunResult], *, baseline: str | None = "id",
                 data_dir: str | Path | None = None,
                 metrics: tuple[str, ...] = MAIN_METRICS,
                 require_baseline: bool = False) -> dict[str, Any]:
    """Mean ± std over seeds per variant, protocol and group; paired tests against
    ``baseline`` (a variant label or model name, compared within each backbone); the
    five-bucket breakdowns. Returns a JSON-ready dict (see :func:`write_report`).

    Any set of runs can be reported: when no run matches ``baseline`` the tables are made
    without tests and ``significance`` says why (``require_baseline=True`` makes it an error
    instead, for a baseline the user named). Backbones without a baseline run are not tested.
    """
    from llmesr.evaluation.stats import holm, paired_tests, per_case

    variants = group_variants(runs)
    info = case_info(variants[0].runs[0], data_dir)
    users = variants[0].runs[0].users
    for v in variants:
        for r in v.runs:
            if not np.array_equal(r.users, users):
                raise LlmesrError(f"{r.path} was tested on other users than "
                                  f"{variants[0].runs[0].path}; they cannot be compared")
    protocols = [p for p in ("full", "sampled")
                 if all(p in r.ranks for v in variants for r in v.runs)]
    if not protocols:
        raise LlmesrError("the runs share no test protocol")
    excluded = full_ranking_excludes_seen(runs) if "full" in protocols else None
    base = {}
    if baseline:
        for v in variants:
            if v.label == baseline or (v.model == baseline and baseline not in
                                       {w.label for w in variants}):
                if v.backbone in base:
                    raise LlmesrError(f"--baseline {baseline} matches more than one variant of "
                                      f"{v.backbone}; use one of the labels: "
                                      f"{', '.join(w.label for w in variants)}")
                base[v.backbone] = v
        if not base and require_baseline:
            raise LlmesrError(f"no run matches --baseline {baseline!r}; labels: "
                              f"{', '.join(v.label for v in variants)}")
    labels = ", ".join(dict.fromkeys(v.label for v in variants))
    if not baseline:
        significance = "not asked for (--baseline none)"
    elif not base:
        significance = (f"skipped: no run is the baseline {baseline!r} (the models are: "
                        f"{labels}); pass --baseline with one of them to test the others "
                        "against it")
    else:
        untested = sorted({v.backbone for v in variants} - set(base))
        others = [v for v in variants if base.get(v.backbone) not in (None, v)]
        significance = (f"{len(others)} model(s) tested against {baseline!r}" if others else
                        f"skipped: only the baseline {baseline!r} was given")
        if untested:
            significance += (f"; not tested (no {baseline!r} run): {', '.join(untested)}")
    masks = info.masks()
    out: dict[str, Any] = {
        "dataset": variants[0].runs[0].config["dataset"].get("name"),
        "baseline": baseline if base else None, "significance": significance,
        "alpha": ALPHA, "metrics": list(metrics),
        "full_excludes_seen": excluded,
        "counts": {g: int(m.sum()) for g, m in masks.items()},
        "user_buckets": _bucket_names(USER_BUCKETS), "item_buckets": _bucket_names(ITEM_BUCKETS),
        "user_bucket_counts": np.bincount(info.user_bucket, minlength=5).tolist(),
        "item_bucket_counts": np.bincount(info.item_bucket, minlength=5).tolist(),
        "variants": [{"label": v.label, "key": v.key, "backbone": v.backbone,
                      "model": v.model,
                      "seeds": v.seeds, "runs": [str(r.path) for r in v.runs],
                      "epochs": [r.metrics.get("epochs") for r in v.runs],
                      "best_epoch": [r.metrics.get("best_epoch") for r in v.runs],
                      "train_seconds": [r.metrics.get("train_seconds") for r in v.runs]}
                     for v in variants],
        "protocols": {},
    }
    for p in protocols:
        table: dict[str, Any] = {}
        tests: list[dict[str, Any]] = []
        # (seeds, cases) per variant and metric, computed once (a baseline serves many rows)
        values = {v.key: {m: np.stack([per_case(r.ranks[p], m) for r in v.runs])
                          for m in metrics} for v in variants}
        for v in variants:
            per_seed = values[v.key]
            cell: dict[str, Any] = {}
            for g, mask in masks.items():
                cell[g] = {}
                for m in metrics:
                    vals = per_seed[m][:, mask].mean(axis=1) if mask.any() else \
                        np.full(len(v.runs), np.nan)
                    cell[g][m] = _stat(vals)
            for name, bucket in (("user_buckets", info.user_bucket),
                                 ("item_buckets", info.item_bucket)):
                cell[name] = {m: [float(per_seed[m][:, bucket == b].mean())
                                  if (bucket == b).any() else None for b in range(5)]
                              for m in metrics}
            table[v.key] = cell
            ref = base.get(v.backbone)
            if ref is None or ref is v:
                continue
            ref_seed = values[ref.key]
            for g, mask in masks.items():
                for m in metrics:
                    t = paired_tests(per_seed[m].mean(axis=0)[mask],
                                     ref_seed[m].mean(axis=0)[mask])
                    tests.append({"variant": v.label, "key": v.key, "backbone": v.backbone,
                                  "baseline": ref.label, "group": g, "metric": m, **t})
        for key in ("p_ttest", "p_wilcoxon"):          # one family per protocol
            adj = holm([t[key] for t in tests])
            for t, a in zip(tests, adj):
                t[f"{key}_holm"] = None if np.isnan(a) else float(a)
        for t in tests:
            for key in ("p_ttest", "p_wilcoxon"):
                if isinstance(t[key], float) and np.isnan(t[key]):
                    t[key] = None
            sig = all(t[k] is not None and t[k] < ALPHA for k in ("p_ttest_holm",
                                                                  "p_wilcoxon_holm"))
            t["mark"] = ("↑" if t["mean_diff"] > 0 else "↓") if sig else ""
        out["protocols"][p] = {"table": table, "tests": tests}
    out["beyond"] = beyond_table(variants)
    return out


BEYOND = ("coverage@10", "tail_share@10", "ARP@10")
BEYOND_TITLES = {"coverage@10": "coverage", "tail_share@10": "tail share", "ARP@10": "ARP"}


def beyond_table(variants: list[Variant]) -> dict[str, Any]:
    """Mean ± std over seeds of each run's beyond-accuracy metrics (metrics.json ``beyond``,
    full ranking, top 10) per variant and group; variants with a run without them (made
    before llmesr computed them: ``llmesr evaluate RUN`` adds them) are left out."""
    table: dict[str, Any] = {}
    for v in variants:
        per_run = [r.metrics.get("beyond", {}).get("full") for r in v.runs]
        if any(b is None for b in per_run):
            continue
        table[v.key] = {g: {m: _stat([b[g][m] for b in per_run]) for m in BEYOND}
                          for g in GROUPS if all(g in b for b in per_run)}
    return table


def _stat(vals) -> dict[str, Any]:
    """Mean, sample std (None for one seed) and the per-seed values."""
    a = np.asarray(vals, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else None,
            "seeds": a.tolist()}


def _fmt(stat: dict[str, Any]) -> str:
    if stat["mean"] is None or np.isnan(stat["mean"]):
        return "-"
    return f"{stat['mean']:.4f}" + (f" ± {stat['std']:.4f}" if stat.get("std") is not None
                                    else "")


def report_markdown(rep: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    """The report as Markdown: the paper's main-table layout per protocol, then buckets."""
    variants = rep["variants"]
    multi_bb = len({v["backbone"] for v in variants}) > 1
    seeds = sorted({s for v in variants for s in v["seeds"]})
    lines = [f"# {rep['dataset']}: {len(variants)} model{'s' * (len(variants) != 1)}, "
             f"seed{'s' * (len(seeds) != 1)} {', '.join(map(str, seeds))}",
             ""]
    c = rep["counts"]
    lines.append("Test cases: " + ", ".join(f"{GROUP_TITLES[g]} {c[g]:,}" for g in GROUPS)
                 + ". Cells: mean ± standard deviation over seeds.")
    tested = any(res["tests"] for res in rep["protocols"].values())
    if rep["baseline"] and tested:
        lines.append(f"↑ / ↓: better / worse than `{rep['baseline']}` (same backbone) under "
                     "both a paired t-test and a Wilcoxon signed-rank test on per-user "
                     f"values (averaged over seeds), Holm-corrected over the table, p < "
                     f"{rep['alpha']}.")
    if rep.get("significance") and not (tested and "not tested" not in rep["significance"]):
        lines.append(f"Significance tests: {rep['significance']}.")
    names = {"full": "Full ranking (all items but the user's history)"
             if rep.get("full_excludes_seen") else "Full ranking (all items)",
             "sampled": "Sampled ranking (target + 100 sampled negatives, the paper's protocol)"}
    short = {"HR@10": "H@10", "NDCG@10": "N@10"}
    for p, res in rep["protocols"].items():
        marks = {(t["variant"], t["backbone"], t["group"], t["metric"]): t["mark"]
                 for t in res["tests"]}
        lines += ["", f"## {names.get(p, p)}", ""]
        head = ["backbone"] * multi_bb + ["model", "seeds"] + [
            f"{GROUP_TITLES[g]} {short.get(m, m)}" for g in GROUPS for m in rep["metrics"]]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|---" * len(head) + "|")
        for v in variants:
            cell = res["table"][v["key"]]
            row = [v["backbone"]] * multi_bb + [v["label"], str(len(v["seeds"]))]
            for g in GROUPS:
                for m in rep["metrics"]:
                    mark = marks.get((v["label"], v["backbone"], g, m), "")
                    row.append(_fmt(cell[g][m]) + (f" {mark}" if mark else ""))
            lines.append("| " + " | ".join(row) + " |")
        for kind, title in (("user_buckets", "history length"),
                            ("item_buckets", "target popularity")):
            counts = rep[f"{kind[:-8]}_bucket_counts"]
            lines += ["", f"{names.get(p, p).split(' (')[0]}, HR@10 by {title} (mean over seeds):",
                      ""]
            head = ["backbone"] * multi_bb + ["model"] + [
                f"{b} ({n:,})" for b, n in zip(rep[kind], counts)]
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|---" * len(head) + "|")
            for v in variants:
                vals = res["table"][v["key"]][kind]["HR@10"]
                lines.append("| " + " | ".join([v["backbone"]] * multi_bb + [v["label"]] + [
                    "-" if x is None else f"{x:.4f}" for x in vals]) + " |")
    beyond = rep.get("beyond") or {}
    if beyond:
        bgroups = ("overall", "tail_user", "head_user")
        lines += ["", "## What the top 10 holds (full ranking)", "",
                  "Coverage: distinct recommended items / catalogue; tail share: share of the "
                  "recommended slots holding a tail item; ARP: average recommended popularity "
                  "(training interactions). Per group of test users; mean ± std over seeds.",
                  ""]
        head = ["backbone"] * multi_bb + ["model"] + [
            f"{GROUP_TITLES[g]} {BEYOND_TITLES[m]}" for g in bgroups for m in BEYOND]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|---" * len(head) + "|")
        for v in variants:
            if v["key"] not in beyond:
                continue
            cell = beyond[v["key"]]
            row = [v["backbone"]] * multi_bb + [v["label"]]
            for g in bgroups:
                for m in BEYOND:
                    st = cell[g][m]
                    digits = 1 if m == "ARP@10" else 4
                    row.append(f"{st['mean']:.{digits}f}" + (
                        f" ± {st['std']:.{digits}f}" if st["std"] is not None else ""))
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Runs", "", "| model | seed | epochs (best) | train time | run |",
              "|---|---|---|---|---|"]
    for v in variants:
        for s, e, b, t, r in zip(v["seeds"], v["epochs"], v["best_epoch"], v["train_seconds"],
                                 v["runs"]):
            mins = "-" if t is None else f"{t / 60:.1f} min"
            lines.append(f"| {v['key']} | {s} | {e} ({b}) | {mins} | `{r}` |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{k}]({v})" for k, v in plots.items()]
    return "\n".join(lines) + "\n"


def report_rows(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """The report as flat rows (one per protocol, variant, group and metric) for CSV."""
    rows = []
    for p, res in rep["protocols"].items():
        tests = {(t["key"], t["group"], t["metric"]): t for t in res["tests"]}
        for v in rep["variants"]:
            cell = res["table"][v["key"]]
            for g in GROUPS:
                for m in rep["metrics"]:
                    t = tests.get((v["key"], g, m), {})
                    rows.append({"protocol": p, "backbone": v["backbone"], "model": v["label"],
                                 "group": g, "count": rep["counts"][g], "metric": m,
                                 "mean": cell[g][m]["mean"], "std": cell[g][m]["std"],
                                 "seeds": len(v["seeds"]),
                                 "per_seed": " ".join(f"{x:.6f}" for x in cell[g][m]["seeds"]),
                                 "baseline": t.get("baseline", ""),
                                 "mean_diff": t.get("mean_diff", ""),
                                 "p_ttest": t.get("p_ttest", ""),
                                 "p_wilcoxon": t.get("p_wilcoxon", ""),
                                 "p_ttest_holm": t.get("p_ttest_holm", ""),
                                 "p_wilcoxon_holm": t.get("p_wilcoxon_holm", ""),
                                 "mark": t.get("mark", "")})
    return rows


def report_group_bars(rep: dict[str, Any], path: Path, metric: str = "HR@10") -> Path:
    """Per-group bars (mean over seeds, std as error bars), one panel per protocol."""
    plt = _pyplot()
    protocols = list(rep["protocols"])
    keys = [v["key"] for v in rep["variants"]]      # names the backbone when there are several
    fig, axes = plt.subplots(1, len(protocols), figsize=(6 * len(protocols), 4), squeeze=False)
    width = 0.8 / len(keys)
    for ax, p in zip(axes[0], protocols):
        table = rep["protocols"][p]["table"]
        for j, key in enumerate(keys):
            stats = [table[key][g][metric] for g in GROUPS]
            xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(GROUPS))]
            ax.bar(xs, [s["mean"] for s in stats], width=width, label=key,
                   yerr=[s["std"] or 0.0 for s in stats], capsize=2)
        ax.set_xticks(range(len(GROUPS)), [GROUP_TITLES[g] for g in GROUPS])
        ax.set_title("full ranking" if p == "full" else f"{p} (100 negatives)")
        ax.set_ylabel(metric)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{rep['dataset']}: {metric} by long-tail group")
    fig.tight_layout()
    return _save_fig(fig, path)


def report_bucket_curves(rep: dict[str, Any], path: Path, metric: str = "HR@10") -> Path:
    """The five-bucket curves: metric by history length and by target popularity."""
    plt = _pyplot()
    protocols = list(rep["protocols"])
    fig, axes = plt.subplots(len(protocols), 2, figsize=(11, 3.6 * len(protocols)),
                             squeeze=False)
    for row, p in zip(axes, protocols):
        table = rep["protocols"][p]["table"]
        for ax, kind, title in ((row[0], "user_buckets", "history length"),
                                (row[1], "item_buckets", "target item popularity")):
            counts = rep[f"{kind[:-8]}_bucket_counts"]
            for v in rep["variants"]:
                vals = [np.nan if x is None else x for x in table[v["key"]][kind][metric]]
                ax.plot(range(5), vals, marker="o", label=v["key"])
            ax.set_xticks(range(5), [f"{b}\n({n:,})" for b, n in zip(rep[kind], counts)],
                          fontsize=8)
            ax.set_xlabel(title)
            ax.set_ylabel(metric)
            ax.set_title(f"{'full ranking' if p == 'full' else p + ' (100 negatives)'}")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return _save_fig(fig, path)


def item_embedding_tsne(rep: dict[str, Any], path: Path, *, max_items: int = 3000,
                        seed: int = 0, data_dir: str | Path | None = None,
                        progress: bool | None = None) -> Path:
    """t-SNE maps of the item embeddings (the first seed of each variant), coloured by the
    items' popularity (log scale), tail items as in SPEC §2; the same sampled items in every
    panel. ``progress``: a bar with the time left, one step per map (``None``: only when
    standard error is a terminal); each map takes seconds to a minute."""
    from sklearn.manifold import TSNE

    import torch
    from tqdm.auto import tqdm

    from llmesr.data.artifact import load_dataset
    from llmesr.training.trainer import load_run

    plt = _pyplot()
    variants = rep["variants"]
    first = Path(variants[0]["runs"][0])
    cfg = json.loads((first / "config.json").read_text())
    ds = load_dataset(Path(data_dir) if data_dir else Path(cfg["dataset"]["path"]))
    pop = ds.item_table["popularity"].to_numpy()
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(len(pop), size=min(max_items, len(pop)), replace=False)) + 1
    if len(ids) < 4:
        raise LlmesrError(f"a t-SNE map needs at least 4 items, the dataset has {len(pop)}; "
                          "pass --no-tsne")
    cols = min(3, len(variants))
    rows = -(-len(variants) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.2 * rows), squeeze=False)
    sc = None
    bar = tqdm(total=len(variants), desc=f"t-SNE ({len(ids):,} items)", unit="map",
               disable=None if progress is None else not progress, leave=False,
               mininterval=0)      # each map takes seconds: show every one as it ends
    for ax, v in zip(axes.flat, variants):
        bar.set_postfix_str(v["key"], refresh=True)
        model, _ = load_run(v["runs"][0])
        with torch.no_grad():
            emb = model.item_embeddings(torch.from_numpy(ids)).float().numpy()
        xy = TSNE(n_components=2, init="pca", random_state=seed,
                  perplexity=min(30.0, max(2.0, (len(ids) - 1) / 3))).fit_transform(emb)
        order = np.argsort(pop[ids - 1])        # popular items drawn last, on top
        sc = ax.scatter(xy[order, 0], xy[order, 1], c=np.log10(pop[ids - 1][order]), s=3,
                        cmap="viridis")
        ax.set_title(v["key"])
        ax.set_xticks([])
        ax.set_yticks([])
        bar.update()
    bar.close()
    for ax in list(axes.flat)[len(variants):]:
        ax.axis("off")
    if sc is not None:
        fig.colorbar(sc, ax=axes.ravel().tolist(), label="log10 item popularity", shrink=0.8)
    fig.suptitle(f"{rep['dataset']}: t-SNE of item embeddings ({len(ids):,} items)")
    return _save_fig(fig, path)


def write_report(run_dirs: list[str | Path], out: str | Path, *, baseline: str | None = "id",
                 data_dir: str | Path | None = None, tsne: bool = True,
                 tsne_items: int = 3000, log=print, require_baseline: bool = False,
                 progress: bool | None = None) -> dict[str, Any]:
    """``llmesr report``: report.md, report.csv, report.json and the plots, in ``out``.

    Works on any set of runs of one dataset: without a ``baseline`` run the significance
    tests are skipped (and the report says so). ``progress``: a bar for the t-SNE maps
    (``None``: when standard error is a terminal)."""
    from llmesr.data.io import atomic_file, make_dirs, os_errors_as_user_errors, write_json_atomic

    if tsne and tsne_items < 4:
        raise LlmesrError("--tsne-items must be at least 4 (or pass --no-tsne)")
    runs = [load_run_result(p) for p in expand_run_dirs(run_dirs)]
    rep = build_report(runs, baseline=baseline, data_dir=data_dir,
                       require_baseline=require_baseline)
    if rep["significance"].startswith("skipped") or "not tested" in rep["significance"]:
        log(f"significance tests: {rep['significance']}")
    out = make_dirs(out, "report folder")
    with os_errors_as_user_errors(f"write the report in {out}"):
        plots = {"HR@10 by group": report_group_bars(rep, out / "groups.png").name,
                 "HR@10 by history length and item popularity":
                     report_bucket_curves(rep, out / "buckets.png").name}
        if tsne:
            plots["t-SNE of item embeddings"] = item_embedding_tsne(
                rep, out / "tsne.png", max_items=tsne_items, data_dir=data_dir,
                progress=progress).name
        write_json_atomic(out / "report.json", rep)
        rows = report_rows(rep)
        with atomic_file(out / "report.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        with atomic_file(out / "report.md", "w", encoding="utf-8") as f:
            f.write(report_markdown(rep, plots))
    return rep
