"""Time `prepare` on a synthetic raw Amazon 2014 dump (default 400,000 reviews) and print JSON.

    python benchmarks/raw_prepare.py [--reviews 400000] [--items 50000] [--users 80000]

The dump mimics the real files: gzipped JSON review lines with ~300-character texts, and a
gzipped metadata file of Python dict literals (twice as many items as are reviewed, as in the
real dumps, with related-item lists and category paths). Item and user activity are Zipf-like
so the paper's 5-core leaves a realistic dataset. Two runs are timed: the paper's Beauty recipe
(`amazon2014-beauty`) and the plain format with no filtering.
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import emit

from llmesr.data.pipeline import prepare

WORDS = np.array("great product skin hair smell love would buy again price quality bottle "
                 "small size works well my the and it is a for this not very nice".split())


def _text(rng: np.random.Generator, n_chars: int) -> str:
    return " ".join(rng.choice(WORDS, size=max(1, n_chars // 5)))


def make_dump(folder: Path, n_reviews: int, n_items: int, n_users: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    asins = np.array([f"B{k:09d}" for k in rng.permutation(10**6)[: 2 * n_items]])
    users = np.array([f"A{k:012X}" for k in rng.permutation(10**7)[:n_users]])
    item_p = 1.0 / np.arange(1, n_items + 1) ** 0.9
    user_p = 1.0 / np.arange(1, n_users + 1) ** 0.7
    it = rng.choice(n_items, size=n_reviews, p=item_p / item_p.sum())
    us = rng.choice(n_users, size=n_reviews, p=user_p / user_p.sum())
    times = 1_000_000_000 + rng.integers(0, 4 * 10**8, size=n_reviews)
    texts = [_text(rng, 300) for _ in range(512)]  # a pool: generation speed is not the point
    with gzip.open(folder / "reviews_Beauty.json.gz", "wt", compresslevel=1) as f:
        for k in range(n_reviews):
            f.write(json.dumps({
                "reviewerID": users[us[k]], "asin": asins[it[k]], "reviewerName": "J. Doe",
                "helpful": [0, 1], "reviewText": texts[k % 512], "overall": float(1 + k % 5),
                "summary": texts[(k * 7) % 512][:30], "unixReviewTime": int(times[k]),
                "reviewTime": "01 2, 2013"}) + "\n")
    with gzip.open(folder / "meta_Beauty.json.gz", "wt", compresslevel=1) as f:
        for k, a in enumerate(asins):
            rec = {"asin": str(a), "description": texts[k % 512], "title": texts[k % 97][:60],
                   "price": round(float(k % 5000) / 100, 2),
                   "related": {"also_bought": [str(x) for x in asins[(k + 1):(k + 21)]]},
                   "salesRank": {"Beauty": k}, "brand": "Coxlures",
                   "categories": [["Beauty", "Skin Care", "Face"], ["Beauty", "Makeup"]]}
            f.write(repr(rec) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reviews", type=int, default=400_000)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--users", type=int, default=80_000)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmesr-raw-") as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        t0 = time.perf_counter()
        make_dump(raw, args.reviews, args.items, args.users)
        gen = time.perf_counter() - t0
        result = {"reviews": args.reviews, "generate_seconds": round(gen, 2), "runs": {}}
        for name, settings in (("amazon2014-beauty", {}),
                               ("amazon2014", {"kcore_user": 0, "kcore_item": 0,
                                               "min_history": 0})):
            t0 = time.perf_counter()
            m = prepare(name, Path(tmp) / name, source=raw, settings=settings,
                        log=lambda *a: None)
            result["runs"][name] = {
                "seconds": round(time.perf_counter() - t0, 2),
                "read_seconds": m["timing_seconds"]["read"],
                "users": m["counts"]["users"], "items": m["counts"]["items"],
                "interactions": m["counts"]["interactions"]}
    emit(result, args.out)


if __name__ == "__main__":
    main()
