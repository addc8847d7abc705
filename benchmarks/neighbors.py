"""Time the top-K similar-user backends on synthetic clustered embeddings; print JSON.

    python benchmarks/neighbors.py [--users 100000] [--dim 384] [--k 100] [--out FILE]
                                   [--backends exact,faiss,faiss-ivf,faiss-hnsw]

The users are ``--centres`` seeded Gaussian centres plus Gaussian noise (``--noise`` times the
centre scale), so that neighbours are meaningful. ``exact`` (blocked torch) is the reference:
every other backend reports recall@10 and recall@100 against it. Faiss backends report the
index build time and the search time separately (``seconds`` also counts normalisation);
defaults as in ``top_k_similar``: nlist=int(4*sqrt(U)), nprobe=16, M=32, efSearch=128.

faiss-cpu wheels run their matrix products on a bundled OpenBLAS, which picks its kernels from
the CPU model; on CPUs newer than that OpenBLAS (e.g. Xeon "Emerald Rapids", model 207) it falls
back to slow generic kernels. ``OPENBLAS_CORETYPE=SkylakeX`` (AVX-512 CPUs) or ``Haswell``
(AVX2) in the environment restores fast kernels; the JSON records the value in use.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from _common import emit, peak_rss_mib

from llmesr.semantic.neighbors import (
    BACKENDS,
    _build_faiss_index,
    _import_faiss,
    _search_faiss,
    normalise_rows,
    recall_at,
    top_k_similar,
)


def clustered_users(users: int, dim: int, centres: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim), dtype=np.float32)
    labels = rng.integers(0, centres, users)
    emb = rng.standard_normal((users, dim), dtype=np.float32)
    emb *= np.float32(noise)
    emb += c[labels]
    return emb


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines()
                        if ":" in line)
    except OSError:
        return None
    info = {key.strip(): value.strip() for key, value in info.items()}
    return f"{info.get('model name')} (family {info.get('cpu family')}, model {info.get('model')})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--centres", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--block-size", type=int, default=4096)
    ap.add_argument("--backends", default=",".join(BACKENDS),
                    help="comma-separated; 'exact' is always run first as the reference")
    ap.add_argument("--progress", action="store_true", help="show the tqdm bars (stderr)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    import torch

    backends = [b for b in args.backends.split(",") if b and b != "exact"]
    emb = clustered_users(args.users, args.dim, args.centres, args.noise, args.seed)
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available(), "python": platform.python_version(),
                    "torch": torch.__version__, "platform": platform.platform(),
                    "cpu_model": _cpu_model(),
                    "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")},
        "params": {"users": args.users, "dim": args.dim, "k": args.k, "centres": args.centres,
                   "noise": args.noise, "seed": args.seed, "block_size": args.block_size},
        "backends": {},
    }
    recall_ks = [r for r in (10, 100) if r <= args.k]

    t0 = time.perf_counter()
    ref, _ = top_k_similar(emb, args.k, backend="exact", block_size=args.block_size,
                           progress=args.progress)
    result["backends"]["exact"] = {"seconds": round(time.perf_counter() - t0, 2),
                                   "peak_rss_mib_so_far": peak_rss_mib()}

    for backend in backends:
        # the same steps as top_k_similar(emb, k, backend=...), timed one by one
        faiss = _import_faiss(backend)
        t0 = time.perf_counter()
        unit = normalise_rows(emb)
        t1 = time.perf_counter()
        index = _build_faiss_index(faiss, backend, unit, nlist=None, nprobe=16, hnsw_m=32,
                                   ef_search=max(128, args.k + 1), seed=args.seed)
        t2 = time.perf_counter()
        idx, _ = _search_faiss(index, unit, args.k, args.block_size, args.progress, backend)
        t3 = time.perf_counter()
        del index, unit
        entry = {"seconds": round(t3 - t0, 2), "build_seconds": round(t2 - t1, 2),
                 "search_seconds": round(t3 - t2, 2), "peak_rss_mib_so_far": peak_rss_mib(),
                 "missing_ids": int((idx < 0).sum())}
        for r in recall_ks:
            entry[f"recall@{r}"] = round(recall_at(ref, idx, r), 4)
        result["backends"][backend] = entry
    emit(result, args.out)


if __name__ == "__main__":
    main()
