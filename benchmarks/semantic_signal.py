"""Do the item embeddings carry signal? Mean cosine of attribute-sharing pairs vs random pairs.

    python benchmarks/semantic_signal.py DATA_DIR [--encoder-dir DIR] [--attributes FILE]

On beauty-s3rec, ``Beauty_item2attributes.json`` maps item ids (the S3-Rec ids that llmesr
keeps) to anonymous attribute ids (brand and categories). Pairs of items that share at least
``--min-shared`` attributes should be closer in the embedding space than random pairs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from _common import emit

from llmesr.data.artifact import load_dataset
from llmesr.data.registry import shared_data_root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data_dir")
    ap.add_argument("--encoder-dir", help="DATA_DIR/semantic/<encoder> (default: the only one)")
    ap.add_argument("--attributes", help="item2attributes JSON (default: the shared "
                    "beauty-s3rec file)")
    ap.add_argument("--min-shared", type=int, default=3)
    ap.add_argument("--random-pairs", type=int, default=200_000)
    ap.add_argument("--out")
    args = ap.parse_args()
    ds = load_dataset(args.data_dir)
    enc_dir = Path(args.encoder_dir) if args.encoder_dir else next(
        p for p in sorted((Path(args.data_dir) / "semantic").iterdir())
        if (p / "manifest.json").is_file())
    emb = np.load(enc_dir / "items.npy").astype(np.float64)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    attr_file = Path(args.attributes) if args.attributes else \
        shared_data_root() / "beauty-s3rec" / "Beauty_item2attributes.json"
    raw = json.loads(attr_file.read_text())
    # item ids of the dataset are its raw ids (S3-Rec numbering); map raw id -> row
    row_of = {rid: i for i, rid in enumerate(ds.item_table["raw_id"].tolist())}
    rows, cols = [], []
    for key, attrs in raw.items():
        if key in row_of:
            rows += [row_of[key]] * len(attrs)
            cols += attrs
    a = sp.csr_matrix((np.ones(len(rows)), (rows, cols)),
                      shape=(len(row_of), max(cols) + 1))
    a.data[:] = 1.0
    # Pairs sharing >= min_shared attributes, counted in row blocks so memory stays bounded
    # (broad category attributes are shared by thousands of items).
    at = a.T.tocsr()
    sums, count = 0.0, 0
    for start in range(0, a.shape[0], 512):
        block = sp.triu(a[start:start + 512] @ at, k=start + 1).tocoo()
        keep = block.data >= args.min_shared
        i, j = block.row[keep] + start, block.col[keep]
        sums += float(np.einsum("ij,ij->i", emb[i], emb[j]).sum())
        count += int(keep.sum())
    rng = np.random.default_rng(0)
    ri = rng.integers(0, len(emb), args.random_pairs)
    rj = rng.integers(0, len(emb), args.random_pairs)
    ok = ri != rj
    cos_random = np.einsum("ij,ij->i", emb[ri[ok]], emb[rj[ok]])
    emit({"encoder_dir": str(enc_dir), "encoder": json.loads(
              (enc_dir / "manifest.json").read_text())["encoder"]["identity"],
          "min_shared_attributes": args.min_shared,
          "pairs_sharing": count,
          "mean_cosine_sharing": round(sums / max(count, 1), 4),
          "random_pairs": int(ok.sum()),
          "mean_cosine_random": round(float(cos_random.mean()), 4)}, args.out)


if __name__ == "__main__":
    main()
