"""Cold start on real data: hold items out of training, add them back by text, and measure how
often they are recommended to the users who want them.

    python benchmarks/cold_start.py DATA_DIR --work DIR [--n 200] [--seed 0] [--epochs 30]

1. ``hold_out_items``: pick ``n`` items that are some user's test target and remove every
   interaction with them (``WORK/data``);
2. embed it with DATA_DIR's encoder and prompt settings (DATA_DIR's cache makes the items
   free; users whose history changed are embedded again);
3. ``llmesr train`` LLM-ESR (SASRec, default preset) on it (``WORK/run``; ``--run`` reuses a
   finished run instead);
4. ``evaluate_cold_start``: add the held-out items by their text with each collaborative rule
   (pca = the issue's rule and the default; mapped; zero) and rank each held-out target among
   all items for its user's real history (full ranking, pessimistic ties). Before adding,
   the run cannot recommend them: HR@10 = 0.

JSON on stdout (and --out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="a prepared and embedded dataset, e.g. beauty-s3rec")
    ap.add_argument("--work", required=True, help="working folder")
    ap.add_argument("--n", type=int, default=200, help="items to hold out (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a training setting (repeatable), e.g. co_dropout=0.3")
    ap.add_argument("--run", help="a run already trained on WORK/data (skips training)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    from llmesr.data.holdout import hold_out_items
    from llmesr.semantic.encoders import encoder_from_description
    from llmesr.semantic.pipeline import embed
    from llmesr.semantic.prompts import PromptConfig
    from llmesr.serving.coldstart import evaluate_cold_start

    src, work = Path(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data, run = work / "data", Path(args.run) if args.run else work / "run"
    timing: dict[str, float] = {}
    sem = next(p for p in sorted((src / "semantic").iterdir())
               if (p / "manifest.json").is_file())
    manifest = json.loads((sem / "manifest.json").read_text())

    t0 = time.perf_counter()
    if not (data / "manifest.json").is_file():
        hold_out_items(src, data, n=args.n, seed=args.seed)
    timing["hold_out"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    embed(data, encoder=encoder_from_description(manifest["encoder"]),
          prompt=PromptConfig(**manifest["prompt"]), cache_dir=src / "semantic" / ".cache",
          neighbors=manifest["stages"].get("neighbors", {}).get("k", 100), progress=False)
    timing["embed"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if not (run / "metrics.json").is_file():
        subprocess.run([sys.executable, "-m", "llmesr.cli", "train", str(data), "--model",
                        "llmesr", "--backbone", "sasrec", "--epochs", str(args.epochs),
                        "--set", f"patience={args.patience}", "--out", str(run), "--quiet",
                        *[a for kv in args.set for a in ("--set", kv)],
                        *(["--resume"] if run.exists() else [])],
                       check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    timing["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = {"benchmark": "cold_start", "data": str(src), "n": args.n, "seed": args.seed,
              "train_settings": {"model": "llmesr", "backbone": "sasrec", "preset": "default",
                                 "epochs": args.epochs, "patience": args.patience,
                                 **dict(kv.split("=", 1) for kv in args.set)},
              **evaluate_cold_start(run, data)}
    timing["evaluate"] = time.perf_counter() - t0
    result["timing_seconds"] = {k: round(v, 1) for k, v in timing.items()}
    emit(result, args.out)


if __name__ == "__main__":
    main()
