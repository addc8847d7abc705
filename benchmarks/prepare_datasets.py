"""Prepare every local named dataset, time it and print the statistics as JSON.

    python benchmarks/prepare_datasets.py [--out results.json] [--workdir DIR]

Each dataset is prepared in a fresh process-local temporary directory; the wall time covers
reading, checksum verification, filtering, grouping and writing the artifact.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from _common import emit

from llmesr.data.pipeline import prepare
from llmesr.data.registry import ENTRIES

LOCAL = [name for name, entry in ENTRIES.items() if entry.files]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--workdir", help="where to write the artifacts (default: a temp dir)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per dataset (best kept)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="llmesr-bench-"))
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "platform": platform.platform()}, "datasets": {}}
    for name in LOCAL:
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            m = prepare(name, work / name, overwrite=True, log=lambda *a: None)
            times.append(time.perf_counter() - t0)
        g, c = m["groups"], m["counts"]
        results["datasets"][name] = {
            "users": c["users"], "items": c["items"], "interactions": c["interactions"],
            "mean_length": c["mean_length"], "ts_user": g["ts_user"], "ts_item": g["ts_item"],
            "threshold_source": g["threshold_source"],
            "tail_user": g["tail_user"], "head_user": g["head_user"],
            "tail_item": g["tail_item"], "head_item": g["head_item"],
            "items_with_text": m["text"]["items_with_any_text"],
            "prepare_seconds_best": round(min(times), 3),
            "prepare_seconds_all": [round(t, 3) for t in times],
        }
    emit(results, args.out)


if __name__ == "__main__":
    main()
