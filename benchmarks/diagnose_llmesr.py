"""Where LLM-ESR's full-ranking accuracy goes: each view's share of the score, by group.

    python benchmarks/diagnose_llmesr.py RUN_DIR [RUN_DIR ...] [--data DIR] [--plot FILE]
        [--threads N] [--out FILE]

For every finished run (any model; the dual-view measurements only for ``llmesr``), on the
test split under the run's own full-ranking protocol (``exclude_seen`` as it was evaluated):

(``--exclude-seen`` / ``--no-exclude-seen`` override it.)

- ``views``: HR@10 / NDCG@10 per long-tail group, and what the top 10 holds (coverage,
  tail-item share, ARP), when ranking by the whole score ``u·c = u_co·e_co + u_se·e_se`` and
  by each part alone (the same trained weights: which view carries the ranking, not a
  retrained ablation);
- ``contributions``: per group of test cases, the mean of each part's score for the target,
  the mean (over cases) of each part's standard deviation over the catalogue (how much of
  the ranking it decides), and the target's z-score under each part ((target - catalogue
  mean) / catalogue std: how well that view alone singles the target out);
- ``scale``: mean L2 norm of the item rows of each view (tail vs head items) and of each
  half of the user state: the adapter's output scale against the ID table's;
- ``popularity``: Spearman correlation between an item's training popularity and its mean
  score over the test users, per part (a view that leans on popularity correlates high).

A run of ``id`` or ``llminit`` gets the one-view rows (``co`` = its ID table), for
comparison. ``matches_run_ranks``: how many test cases the whole score ranks elsewhere than
the run's own ``ranks_test_full.npy`` (a check of the split; two products summed round
differently from one concatenated product, so a near-tie may move by one). JSON on stdout; ``--plot`` draws HR@10 by group for each run and view.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from _common import clean_errors, emit, parse_with_runtime
from scipy.stats import spearmanr

from llmesr.evaluation.protocols import full_ranking_ranks, group_masks
from llmesr.training.trainer import run_trainer

GROUPS = ("overall", "tail_item", "head_item", "tail_user", "head_user")


def evaluated_excluding_seen(run_dir: str) -> bool | None:
    """How the run's last full-ranking test treated the history (metrics.json), if recorded."""
    try:
        m = json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return (m.get("evaluation") or {}).get("exclude_seen")


def diagnose(run_dir: str, data_dir: str | None, device: str | None,
             exclude_seen: bool | None = None) -> dict:
    if exclude_seen is None:
        exclude_seen = evaluated_excluding_seen(run_dir)
    tr = run_trainer(run_dir, data_dir=data_dir, device=device, exclude_seen=exclude_seen,
                     log=lambda *a: None)
    model, h = tr.model, tr.mcfg.hidden
    rows, targets = tr.test_rows, tr.test_targets
    hist = np.maximum(tr.ds.users["length"].to_numpy() - 1, 0)
    with torch.no_grad():
        u = torch.cat([tr.user_states(rows[s:s + 1024], hist).float().cpu()
                       for s in range(0, len(rows), 1024)])
        # the candidates' own halves, as the model scores them (the semantic half with the
        # learnt weight of se_sum_weight, when on)
        table = model.item_embeddings().detach().float().cpu()
        parts = {"co": (table[:, :h], slice(0, h))} if model.co is not None else {}
        if model.se is not None:
            cols = slice(h, 2 * h) if model.co is not None else slice(0, h)
            parts["se"] = (table[:, cols], cols)
    n_items = tr.ds.num_items
    seen = [tr.view.items[tr.starts[r]:tr.starts[r] + hist[r]] for r in rows] \
        if tr.exclude_seen else None
    tail_user, tail_item = tr._tails(rows, targets)
    masks = group_masks(tail_user, tail_item)
    pop = tr.pop                                   # (N + 1,), 0 = padding

    def ranking(names: tuple[str, ...]) -> dict:
        def score(idx: torch.Tensor, candidates):
            return sum(u[idx][:, sl] @ table.T for table, sl in (parts[k] for k in names))
        ranks, top = full_ranking_ranks(score, np.arange(len(rows)), targets, n_items,
                                        batch_size=1024, exclude=seen, ties=tr.tcfg.ties,
                                        progress=False, topk=10)
        grouped = tr.grouped(ranks, rows, targets)
        beyond = tr.beyond(top, rows, targets)
        if len(names) == len(parts):
            whole[0] = ranks
        return {g: {"HR@10": round(grouped[g]["HR@10"], 5),
                    "NDCG@10": round(grouped[g]["NDCG@10"], 5),
                    **({k: round(v, 4) for k, v in beyond[g].items()} if g in beyond else {})}
                for g in GROUPS}

    whole: list = [None]
    views = {"+".join(parts): ranking(tuple(parts))}
    # a check of the split: the whole score ranks exactly as the run's own test did (when it
    # was ranked the same way)
    saved = Path(run_dir) / "ranks_test_full.npy"
    matches = None
    if saved.is_file() and evaluated_excluding_seen(run_dir) == tr.exclude_seen:
        delta = np.abs(np.load(saved).astype(np.int64) - whole[0])
        matches = {"cases_differing": int((delta > 0).sum()), "max_rank_difference":
                   int(delta.max(initial=0))}
    if len(parts) > 1:
        for k in parts:
            views[f"{k} only"] = ranking((k,))
    # per-case statistics of each part's scores over the catalogue (items 1..N)
    contrib, item_sum = {}, {}
    for k, (table, sl) in parts.items():
        tgt, std, z = [], [], []
        s_sum = torch.zeros(n_items, dtype=torch.float64)
        for s in range(0, len(rows), 1024):
            sc = u[s:s + 1024, sl] @ table[1:n_items + 1].T            # (b, N)
            t = sc.gather(1, torch.as_tensor(targets[s:s + 1024] - 1)[:, None])[:, 0]
            mu, sd = sc.mean(1), sc.std(1)
            tgt.append(t)
            std.append(sd)
            z.append((t - mu) / sd.clamp_min(1e-12))
            s_sum += sc.double().sum(0)
        tgt, std, z = (torch.cat(x).numpy() for x in (tgt, std, z))
        contrib[k] = {g: {"target_score": round(float(tgt[m].mean()), 4),
                          "catalogue_std": round(float(std[m].mean()), 4),
                          "target_z": round(float(z[m].mean()), 4)}
                      for g, m in masks.items() if m.any()}
        item_sum[k] = (s_sum / len(rows)).numpy()
    items_tail = pop[1:] < tr.ds.ts_item
    scale = {k: {"item_norm_tail": round(float(table[1:n_items + 1][items_tail].norm(dim=1)
                                               .mean()), 4),
                 "item_norm_head": round(float(table[1:n_items + 1][~items_tail].norm(dim=1)
                                               .mean()), 4),
                 "user_norm": round(float(u[:, sl].norm(dim=1).mean()), 4)}
             for k, (table, sl) in parts.items()}
    popularity = {k: round(float(spearmanr(pop[1:], v).statistic), 4)
                  for k, v in item_sum.items()}
    return {"run": str(run_dir), "model": tr.mcfg.model, "seed": tr.tcfg.seed,
            "exclude_seen": tr.exclude_seen, "matches_run_ranks": matches, "views": views, "contributions": contrib,
            "scale": scale, "popularity_spearman": popularity}


def plot(results: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(f"{r['model']} s{r['seed']}: {v}", r["views"][v]) for r in results
            for v in r["views"]]
    fig, ax = plt.subplots(figsize=(12, 4))
    width = 0.8 / len(bars)
    x = np.arange(len(GROUPS))
    colors = plt.get_cmap("tab20").colors
    for i, (label, vals) in enumerate(bars):
        ax.bar(x + i * width, [vals[g]["HR@10"] for g in GROUPS], width, label=label,
               color=colors[i % len(colors)])
    ax.set_xticks(x + 0.4 - width / 2, [g.replace("_", " ") for g in GROUPS])
    ax.set_ylabel("test HR@10 (full ranking)")
    ax.set_title("Ranking by each view's part of the score")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="finished run directories")
    ap.add_argument("--data", help="the runs' dataset directory, if it moved")
    ap.add_argument("--plot", help="also draw HR@10 by group per run and view (PNG)")
    ap.add_argument("--exclude-seen", action=argparse.BooleanOptionalAction, default=None,
                    help="leave the history out of the ranking (default: as the run's "
                         "metrics.json was evaluated)")
    args = parse_with_runtime(ap)
    with clean_errors("diagnose_llmesr"):
        results = [diagnose(r, args.data, None if args.device == "auto" else args.device,
                            args.exclude_seen) for r in args.runs]
    if args.plot:
        plot(results, args.plot)
    emit({"benchmark": "diagnose_llmesr", "runs": results,
          "command": "python benchmarks/diagnose_llmesr.py " + " ".join(
              str(Path(r)) for r in args.runs)}, args.out)


if __name__ == "__main__":
    main()
