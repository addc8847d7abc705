"""Shared output for the benchmark scripts: JSON on stdout (and optionally a file)."""

from __future__ import annotations

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
