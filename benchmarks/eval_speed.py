"""Seconds for one test-split evaluation of all users, full ranking and sampled.

    python benchmarks/eval_speed.py DATA_DIR [--models id llmesr] [--preset default]
        [--threads N] [--out F]

DATA_DIR is a prepared and embedded dataset. Each model is freshly initialised (the cost of
evaluation does not depend on the weights) and evaluated on every test user with both
protocols; the JSON gives the seconds of each and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, parse_with_runtime  # noqa: E402
from suite import eval_speed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--models", nargs="+", default=["id", "llmesr"])
    ap.add_argument("--preset", default="default")
    args = parse_with_runtime(ap)
    results = [r for m in args.models for r in eval_speed(args.data, m, args.device,
                                                          args.preset)]
    emit({"benchmark": "eval_speed", "data": args.data, "threads": torch.get_num_threads(),
          "results": results}, args.out)


if __name__ == "__main__":
    main()
