"""How much should LLM-ESR's semantic view weigh in the score? A post-hoc check on trained runs.

    python benchmarks/view_weights.py RUN_DIR [RUN_DIR ...] [--data DIR] [--plot FILE]
        [--threads N] [--out FILE]

An ``llmesr`` run scores ``u_co·e_co + u_se·e_se``: both views weigh the same. The diagnosis
(docs/diagnosis.md) found the semantic part singles tail-item targets out better than the
collaborative part but spreads its scores a third as wide, so in the sum it decides little.
Two post-hoc re-weightings, each over a small grid chosen on **validation** NDCG@10 (full
ranking, the run's protocol); the test split is evaluated for the run as trained and for the
validation-chosen point only. Tail items here are those with fewer than ``ts_item``
*training* interactions (no evaluation target counted).

- ``view_weights`` (``llmesr`` runs): ``u_co·e_co + λ_i u_se·e_se`` with ``λ_i = λ_head``
  for head items and ``λ_tail`` for tail items (λ_tail on a grid of ratios to λ_head);
- ``tail_bonus`` (every run, the comparator): ``score + β`` for tail items, β a constant.
  What the semantic re-weighting gives beyond this is the text's own contribution; what a
  bonus gives alone is a trade between head and tail that any model could make;
- ``semantic_added`` (with ``--semantic-from LLMESR_RUN``, for each run that is not llmesr):
  the run's score plus ``λ u_se·e_se`` of that llmesr run's semantic tower (state and rows),
  λ on a grid from 0: whether the text view holds anything the run's own model lacks.

JSON on stdout (and ``--out``).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch
from _common import clean_errors, emit, parse_with_runtime, split_metrics

from llmesr.errors import LlmesrError
from llmesr.training.trainer import run_trainer

HEAD = (0.5, 0.75, 1.0, 1.25, 1.5)
RATIO = (0.75, 1.0, 1.25, 1.5, 1.75, 2.0)           # λ_tail / λ_head
BONUS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5)



def _search(tr, points: list[dict], set_point) -> dict:
    """Validation over ``points`` (``set_point(p)`` applies one); test for the first point
    (the run as trained) and for the validation-best one."""
    grid = []
    for p in points:
        set_point(p)
        grid.append({**p, "valid": split_metrics(tr, "valid")})
    best = max(grid, key=lambda r: r["valid"]["overall"]["NDCG@10"])
    set_point({k: v for k, v in best.items() if k != "valid"})
    chosen = {**best, "test": split_metrics(tr, "test")}
    set_point(points[0])
    trained = {**grid[0], "test": split_metrics(tr, "test")}
    return {"trained": trained, "validation_chosen": chosen, "grid": grid}


def weigh(run_dir: str, data_dir: str | None, device: str | None,
          semantic_from: str | None = None) -> dict:
    tr = run_trainer(run_dir, data_dir=data_dir, device=device, log=lambda *a: None)
    tr.eval_bars = False
    model = tr.model
    counts = np.asarray(tr.train_counts)
    tail = torch.zeros(model.table_rows, dtype=torch.bool)
    tail[:len(counts)] = torch.from_numpy(counts < tr.ds.ts_item)
    tail[0] = False
    tail = tail.to(model._device())
    out = {"run": str(run_dir), "model": tr.mcfg.model, "seed": tr.tcfg.seed,
           "ts_item": int(tr.ds.ts_item)}

    # the additive bonus: one more dimension, 1 in every user state and β·[tail] in the rows
    bonus = {"beta": 0.0}
    states_fn, table_fn = tr.user_states, model.item_embeddings

    def states(rows, hist):
        u = states_fn(rows, hist)
        return torch.cat([u, u.new_ones(len(u), 1)], dim=1)

    def table(ids=None):
        e = table_fn(ids)
        t = tail if ids is None else tail[ids]
        return torch.cat([e, (t.to(e.dtype) * bonus["beta"])[..., None]], dim=-1)

    tr.user_states, model.item_embeddings = states, table
    try:
        out["tail_bonus"] = _search(tr, [{"beta": b} for b in BONUS], bonus.update)
    finally:
        del tr.user_states, model.item_embeddings

    if semantic_from is not None and model.se is None:
        other = run_trainer(semantic_from, data_dir=data_dir, device=device,
                            log=lambda *a: None)
        if other.model.co is None or other.model.se is None:
            raise LlmesrError(f"--semantic-from {semantic_from}: not a two-view llmesr run")
        if other.ds.num_items != tr.ds.num_items:
            raise LlmesrError(f"--semantic-from {semantic_from}: another dataset")
        h, lam = other.mcfg.hidden, {"lambda": 0.0}

        def added_states(rows, hist):
            u = states_fn(rows, hist)
            se = other.user_states(rows, hist)[:, h:].to(u.device, u.dtype)
            return torch.cat([u, lam["lambda"] * se], dim=1)

        def added_table(ids=None):
            e = table_fn(ids)
            return torch.cat([e, other.model.se_rows(ids).to(e.device, e.dtype)], dim=-1)

        tr.user_states, model.item_embeddings = added_states, added_table
        try:
            with torch.no_grad():
                out["semantic_added"] = _search(
                    tr, [{"lambda": v} for v in (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)],
                    lam.update)
            out["semantic_added"]["from"] = str(semantic_from)
        finally:
            del tr.user_states, model.item_embeddings

    if model.co is not None and model.se is not None:
        rows_fn = model.se_rows
        weight = {"lambda_head": 1.0, "lambda_tail": 1.0}

        def scaled(ids=None):
            rows = rows_fn(ids)
            t = tail if ids is None else tail[ids]
            lam = torch.where(t, weight["lambda_tail"], weight["lambda_head"]).to(rows.dtype)
            return rows * lam[..., None]

        model.se_rows = scaled
        try:
            points = [{"lambda_head": 1.0, "lambda_tail": 1.0}] + [
                {"lambda_head": h, "lambda_tail": h * r} for h, r in itertools.product(HEAD, RATIO)
                if (h, r) != (1.0, 1.0)]
            out["view_weights"] = _search(tr, points, weight.update)
        finally:
            del model.se_rows
    return out


def plot(results: list[dict], path: str) -> None:
    """Validation tail-item NDCG@10 against overall NDCG@10: each run's tail-bonus curve
    (β rising to the left) and, for llmesr, its view-weight points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    colors = plt.get_cmap("tab10").colors
    for i, r in enumerate(results):
        c = colors[i % len(colors)]
        g = r["tail_bonus"]["grid"]
        ax.plot([p["valid"]["overall"]["NDCG@10"] for p in g],
                [p["valid"]["tail_item"]["NDCG@10"] for p in g], "-o", ms=3, color=c,
                label=f"{r['model']} s{r['seed']}: tail bonus")
        if "view_weights" in r:
            g = r["view_weights"]["grid"]
            ax.scatter([p["valid"]["overall"]["NDCG@10"] for p in g],
                       [p["valid"]["tail_item"]["NDCG@10"] for p in g], marker="x", s=14,
                       color=c, label=f"{r['model']} s{r['seed']}: view weights")
    ax.set_xlabel("validation NDCG@10, overall (full ranking)")
    ax.set_ylabel("validation NDCG@10, tail items")
    ax.set_title("Tail items against overall accuracy, post hoc")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="finished run directories")
    ap.add_argument("--data", help="the runs' dataset directory, if it moved")
    ap.add_argument("--plot", help="also draw tail-item against overall NDCG@10 (PNG)")
    ap.add_argument("--semantic-from", metavar="LLMESR_RUN",
                    help="also add this llmesr run's semantic tower to every other run")
    args = parse_with_runtime(ap)
    with clean_errors("view_weights"):
        results = [weigh(r, args.data, None if args.device == "auto" else args.device,
                         args.semantic_from) for r in args.runs]
    if args.plot:
        plot(results, args.plot)
    emit({"benchmark": "view_weights", "runs": results,
          "command": "python benchmarks/view_weights.py " + " ".join(
              str(Path(r)) for r in args.runs)
          + (f" --semantic-from {args.semantic_from}" if args.semantic_from else "")},
         args.out)


if __name__ == "__main__":
    main()
