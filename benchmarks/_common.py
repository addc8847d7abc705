"""Shared output for the benchmark scripts: JSON on stdout (and optionally a file)."""

from __future__ import annotations

import json
import resource
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
