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
