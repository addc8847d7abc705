"""Time `llmesr embed` on a named dataset with a cold cache, then a second (cached) run.

    python benchmarks/embed_dataset.py [--dataset beauty-s3rec] [--encoder default] [--out FILE]

Both runs are the real command line in a subprocess (Python start-up and imports included).
Stage timings come from the first run's manifest.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit

from llmesr.data.pipeline import prepare


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", default="beauty-s3rec")
    ap.add_argument("--encoder", default="default")
    ap.add_argument("--backend", default="exact")
    ap.add_argument("--out")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmesr-embed-") as tmp:
        data = Path(tmp) / args.dataset
        prepare(args.dataset, data, log=lambda *a: None)
        cmd = [sys.executable, "-m", "llmesr.cli", "embed", str(data), "--encoder",
               args.encoder, "--backend", args.backend, "--quiet"]
        first = run(cmd)
        out = next(p for p in (data / "semantic").iterdir() if (p / "manifest.json").is_file())
        m = json.loads((out / "manifest.json").read_text())
        second = run(cmd)
        m2 = json.loads((out / "manifest.json").read_text())
    emit({"dataset": args.dataset, "encoder": m["encoder"]["identity"], "dim": m["dim"],
          "items": m["dataset"]["items"], "users": m["dataset"]["users"],
          "first_run_seconds": round(first, 2), "stage_seconds": m["timing_seconds"],
          "items_computed": m["stages"]["items"]["computed"],
          "users_computed": m["stages"]["users"]["computed"],
          "second_run_seconds": round(second, 2),
          "second_run_computed": m2["stages"]["items"].get("computed", 0)
          if m2["stages"]["items"] != m["stages"]["items"] else 0,
          "example_item_prompt": m["examples"]["item"][0],
          "example_user_prompt": m["examples"]["user"][0][:200]}, args.out)


if __name__ == "__main__":
    main()
