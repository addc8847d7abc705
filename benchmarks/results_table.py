"""Markdown table of HR@10 / NDCG@10 by group from finished run directories.

    python benchmarks/results_table.py RUN_DIR [RUN_DIR ...] [--json OUT]

Reads each run's ``metrics.json`` and ``config.json``; prints one Markdown table per test
protocol (rows: runs; columns: overall, tail/head item, tail/head user) plus epochs and
training time, and the same figures as JSON when ``--json`` is given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

GROUPS = ("overall", "tail_item", "head_item", "tail_user", "head_user")


def load(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    c = json.loads((run / "config.json").read_text())["configs"]
    return {"run": run.name, "model": c["model"]["model"], "backbone": c["model"]["backbone"],
            "best_epoch": m["best_epoch"], "epochs": m["epochs"],
            "train_seconds": m["train_seconds"], "stopped_early": m["stopped_early"],
            "test": {p: {g: {k: m["test"][p][g][k] for k in ("HR@10", "NDCG@10")}
                         for g in GROUPS} for p in m["test"]},
            "counts": {p: {g: m["test"][p][g]["count"] for g in GROUPS} for p in m["test"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = [load(r) for r in args.runs]
    for protocol in rows[0]["test"]:
        print(f"\n**{protocol}** (H@10 / N@10; cases: "
              + ", ".join(f"{g} {rows[0]['counts'][protocol][g]:,}" for g in GROUPS) + ")\n")
        print("| run | " + " | ".join(GROUPS) + " | epochs (best) | train time |")
        print("|---" * (len(GROUPS) + 3) + "|")
        for r in rows:
            cells = [f"{r['test'][protocol][g]['HR@10']:.4f} / {r['test'][protocol][g]['NDCG@10']:.4f}"
                     for g in GROUPS]
            print(f"| {r['run']} | " + " | ".join(cells)
                  + f" | {r['epochs']} ({r['best_epoch']}) | {r['train_seconds'] / 60:.1f} min |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
