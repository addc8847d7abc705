"""Shared output for the benchmark scripts: JSON on stdout (and optionally a file)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def emit(result: dict[str, Any], out: str | None) -> None:
    result["peak_rss_mib"] = peak_rss_mib()
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


#: the long-tail groups the post-hoc benchmarks report
GROUPS = ("overall", "tail_item", "head_item", "tail_user", "head_user")


def split_metrics(tr, split: str) -> dict[str, dict[str, float]]:
    """HR@10 / NDCG@10 per group of a run's :class:`~llmesr.training.trainer.Trainer` on
    ``split`` ("valid" or "test"), full ranking under the run's own protocol."""
    ranks, rows = tr.evaluate(split, "full")
    targets = tr.valid_targets if split == "valid" else tr.test_targets
    g = tr.grouped(ranks, rows, targets)
    return {k: {"HR@10": round(g[k]["HR@10"], 5), "NDCG@10": round(g[k]["NDCG@10"], 5)}
            for k in GROUPS}


@contextlib.contextmanager
def clean_errors(name: str):
    """An :class:`~llmesr.errors.LlmesrError` (not a run, a moved dataset, ...) ends the
    benchmark with one line on standard error and exit status 2, not a traceback."""
    from llmesr.errors import LlmesrError

    try:
        yield
    except LlmesrError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def parse_with_runtime(ap) -> "argparse.Namespace":
    """Add --device, --threads and --out to a benchmark's parser, parse, and apply --threads."""
    import torch

    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def run_cli(name: str, args: list[str], threads: int | None = None) -> dict[str, Any]:
    """Run ``llmesr ARGS`` in a child process: its wall seconds and peak RSS (``wait4``)."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "llmesr.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"stage {name} failed ({code}):\n{err[-3000:]}")
    return {"stage": name, "seconds": round(seconds, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}
