"""Scale check: a synthetic long-tailed log through prepare, embed, neighbours and one epoch.

    python benchmarks/scale_check.py [--users 1000000] [--items 200000]
        [--interactions 20000000] [--model llmesr] [--encoder hash:256]
        [--backend faiss-hnsw] [--workdir DIR] [--keep] [--out scale.json]

Generates (seeded):

- item popularity from a Zipf-like law (p_i ~ 1 / (i + 10)), so a few items take most of the
  interactions and most items are rare;
- history lengths from a log-normal law with a floor of 3, rescaled to the asked total;
- per-user timestamps in order; short random item texts (3 to 8 words of a 20,000-word
  vocabulary).

It writes ``interactions.parquet`` and ``items.csv``, then runs each stage as the real command
line in its own process and records wall time and peak resident memory (from the process's own
resource usage, via ``os.wait4``):

1. ``llmesr prepare table`` (no k-core: the synthetic log is used as generated);
2. ``llmesr embed`` with a cheap encoder (hashing) and PCA, and the similar-user search;
3. ``llmesr train --epochs 1`` (validation and the final test evaluation included).

Prints JSON (and writes ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, run_cli as stage  # noqa: E402


def generate(folder: Path, users: int, items: int, interactions: int, seed: int) -> dict:
    import pandas as pd

    rng = np.random.default_rng(seed)
    lengths = np.maximum(3, rng.lognormal(mean=2.5, sigma=0.9, size=users))
    lengths = np.maximum(3, np.round(lengths * interactions / lengths.sum())).astype(np.int64)
    total = int(lengths.sum())
    weights = 1.0 / (np.arange(items) + 10.0)
    item_of_rank = rng.permutation(items) + 1          # popularity unrelated to the id
    ranks = rng.choice(items, size=total, p=weights / weights.sum())
    user = np.repeat(np.arange(1, users + 1, dtype=np.int64), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    ts = 1_500_000_000 + (np.arange(total) - starts) * 60 + user % 3600
    pd.DataFrame({"user_id": user, "item_id": item_of_rank[ranks], "ts": ts}).to_parquet(
        folder / "interactions.parquet", index=False)
    vocab = np.array([f"w{k:05d}" for k in range(20_000)])
    n_words = rng.integers(3, 9, size=items)
    words = vocab[rng.integers(0, len(vocab), size=int(n_words.sum()))]
    cut = np.cumsum(n_words)[:-1]
    titles = [" ".join(w) for w in np.split(words, cut)]
    pd.DataFrame({"item_id": np.arange(1, items + 1), "title": titles}).to_csv(
        folder / "items.csv", index=False)
    return {"users": users, "items": items, "interactions": total,
            "mean_length": round(total / users, 2), "max_length": int(lengths.max()),
            "top_1pct_items_share": round(float(np.sort(np.bincount(ranks, minlength=items))
                                                [::-1][:max(1, items // 100)].sum() / total), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--interactions", type=int, default=20_000_000)
    ap.add_argument("--model", default="llmesr")
    ap.add_argument("--encoder", default="hash:256")
    ap.add_argument("--backend", default="faiss-hnsw")
    ap.add_argument("--neighbors", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="llmesr-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = generate(work, args.users, args.items, args.interactions, args.seed)
    stages = [{"stage": "generate", "seconds": round(time.perf_counter() - t0, 1)}]
    ds = work / "data"

    def done(result: dict) -> None:
        # each stage as it ends (stderr, and --out so far): a long run stopped midway
        # keeps the stages it finished
        stages.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps({"benchmark": "scale_check", "partial": True,
                                                  "generated": data, "stages": stages},
                                                 indent=2) + "\n")

    done(stage("prepare", [
        "prepare", "table", "--source", str(work / "interactions.parquet"), "--items",
        str(work / "items.csv"), "--user-col", "user_id", "--item-col", "item_id",
        "--time-col", "ts", "--time-unit", "s", "--text-fields", "title",
        "--kcore-user", "0", "--kcore-item", "0", "--out", str(ds), "--overwrite", "--quiet"]))
    done(stage("embed + PCA + neighbours", [
        "embed", str(ds), "--encoder", args.encoder, "--backend", args.backend,
        "--neighbors", str(args.neighbors), "--quiet"]))
    done(stage(f"train 1 epoch ({args.model}, sasrec, default preset)", [
        "train", str(ds), "--model", args.model, "--epochs", "1",
        "--set", f"sd_teachers={min(10, args.neighbors)}", "--out", str(work / "run"),
        "--overwrite", "--quiet"]))
    emit({"benchmark": "scale_check", "workdir": str(work), "generated": data,
          "stages": stages}, args.out)


if __name__ == "__main__":
    main()
