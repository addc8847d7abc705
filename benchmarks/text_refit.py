"""Can an item's text stand in for its trained ID row? A test of the semantic view's premise.

    python benchmarks/text_refit.py RUN_DIR [RUN_DIR ...] [--embeddings DIR] [--data DIR]
        [--threads N] [--out FILE]

For every finished run with an ID table (``id``, ``llminit``, ``melt``, ``llmesr``'s
collaborative view), with the text embeddings of ``--embeddings`` (a ``llmesr embed``
folder; default: the run's own), and items split by their *training* count at the
dataset's tail-item threshold ``ts_item`` (no evaluation target is counted):

- ``predictability``: a ridge map from the text embedding (the full encoder output) to the
  trained ID row, fitted on 80% of the head items and scored on the other 20% (R², the share
  of the rows' variance it explains, and the mean cosine between predicted and trained rows),
  and the same cosine on the tail items. A map that explains little cannot lift tail items.
- ``refit``: the rows of rarely trained items replaced by, or averaged with, the map's
  prediction (the map fitted on items with at least ``head_min`` training interactions, the
  rows of items with fewer than ``tail_max`` replaced, ``w`` the prediction's weight), a
  small grid chosen on **validation** NDCG@10 (full ranking, the run's protocol); the test
  split is evaluated for the untouched run and for the validation-chosen setting only.

JSON on stdout (and ``--out``). A post-hoc measurement on trained weights, not a retrained
model: a zero or negative result says the linear text signal is weaker than what the ID
rows already hold.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from _common import clean_errors, emit, parse_with_runtime, split_metrics

from llmesr.errors import LlmesrError
from llmesr.models.melt import ridge_fit
from llmesr.training.trainer import run_trainer




def _text_table(tr, emb_dir: str | None) -> torch.Tensor:
    """(N + 1, d) text embeddings by item id (row 0 zero)."""
    if emb_dir is None:
        cfg = json.loads((Path(tr.run_dir) / "config.json").read_text())
        if not cfg.get("embeddings"):
            raise LlmesrError(f"{tr.run_dir} was trained without embeddings: pass "
                              "--embeddings DIR (a 'llmesr embed' folder)")
        emb_dir = cfg["embeddings"]["path"]
    path = Path(emb_dir) / "items.npy"
    if not path.is_file():
        raise LlmesrError(f"no items.npy in {emb_dir}")
    x = torch.from_numpy(np.load(path)).double()
    n = tr.ds.num_items
    if len(x) == n:
        x = torch.cat([x.new_zeros(1, x.shape[1]), x])
    if len(x) != n + 1:
        raise LlmesrError(f"{path} has {len(x)} rows; the run's dataset has {n} items")
    return x


def _predict(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_ones(len(x), 1)], dim=1) @ w


def refit(run_dir: str, emb_dir: str | None, data_dir: str | None, device: str | None,
          seed: int = 0) -> dict:
    tr = run_trainer(run_dir, data_dir=data_dir, device=device, log=lambda *a: None)
    tr.eval_bars = False
    if tr.model.co is None:
        raise LlmesrError(f"{run_dir}: the model has no ID table")
    table = tr.model.co.embedding.weight
    orig = table.detach().clone()
    y = orig.double().cpu()
    x = _text_table(tr, emb_dir)
    counts = torch.from_numpy(np.asarray(tr.train_counts))
    ids = torch.arange(1, tr.ds.num_items + 1)
    ts = int(tr.ds.ts_item)
    head, tail = ids[counts[1:] >= ts], ids[counts[1:] < ts]

    # predictability on held-out head items
    perm = head[torch.randperm(len(head), generator=torch.Generator().manual_seed(seed))]
    cut = int(0.8 * len(perm))
    fit_ids, held = perm[:cut], perm[cut:]
    pred_ok = {}
    for ridge in (1e-3, 1e-1):
        w = ridge_fit(x[fit_ids], y[fit_ids], ridge)
        p, t = _predict(x[held], w), y[held]
        r2 = 1.0 - float(((p - t) ** 2).sum() / ((t - t.mean(0)) ** 2).sum())
        cos_held = float(torch.nn.functional.cosine_similarity(p, t, dim=1).mean())
        cos_tail = float(torch.nn.functional.cosine_similarity(_predict(x[tail], w), y[tail],
                                                               dim=1).mean())
        pred_ok[f"ridge={ridge:g}"] = {"r2_held_out_head": round(r2, 4),
                                       "cosine_held_out_head": round(cos_held, 4),
                                       "cosine_tail": round(cos_tail, 4)}

    def apply(head_min: int, tail_max: int, ridge: float, w: float) -> int:
        src, dst = ids[counts[1:] >= head_min], ids[counts[1:] < tail_max]
        m = ridge_fit(x[src], y[src], ridge)
        new = (1 - w) * y[dst] + w * _predict(x[dst], m)
        with torch.no_grad():
            table.copy_(orig)
            table[dst.to(table.device)] = new.to(table.dtype).to(table.device)
        return len(dst)

    base = {"valid": split_metrics(tr, "valid")}
    grid = []
    for head_min, tail_max, ridge, w in itertools.product((ts, 2 * ts), (max(ts // 2, 1), ts),
                                                         (1e-3, 1e-1), (0.5, 1.0)):
        n = apply(head_min, tail_max, ridge, w)
        grid.append({"head_min": head_min, "tail_max": tail_max, "ridge": ridge, "w": w,
                     "replaced": n, "valid": split_metrics(tr, "valid")})
    best = max(grid, key=lambda r: r["valid"]["overall"]["NDCG@10"])
    apply(best["head_min"], best["tail_max"], best["ridge"], best["w"])
    chosen = {**best, "test": split_metrics(tr, "test")}
    with torch.no_grad():
        table.copy_(orig)
    base["test"] = split_metrics(tr, "test")
    return {"run": str(run_dir), "model": tr.mcfg.model, "seed": tr.tcfg.seed, "ts_item": ts,
            "head_items": len(head), "tail_items": len(tail), "text_dim": x.shape[1],
            "predictability": pred_ok, "untouched": base, "grid": grid,
            "validation_chosen": chosen}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="finished run directories")
    ap.add_argument("--embeddings", help="a 'llmesr embed' folder (default: the run's own)")
    ap.add_argument("--data", help="the runs' dataset directory, if it moved")
    args = parse_with_runtime(ap)
    with clean_errors("text_refit"):
        results = [refit(r, args.embeddings, args.data,
                         None if args.device == "auto" else args.device) for r in args.runs]
    emit({"benchmark": "text_refit", "runs": results,
          "command": "python benchmarks/text_refit.py " + " ".join(
              str(Path(r)) for r in args.runs)
          + (f" --embeddings {args.embeddings}" if args.embeddings else "")}, args.out)


if __name__ == "__main__":
    main()
