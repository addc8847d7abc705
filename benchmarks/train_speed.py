"""Seconds per training step (and per epoch, extrapolated) by model, backbone and preset.

    python benchmarks/train_speed.py DATA_DIR [--models id llminit llmesr]
        [--backbones sasrec] [--presets paper default] [--steps 20] [--threads N] [--out F]

DATA_DIR is a prepared and embedded dataset (``llmesr prepare`` + ``llmesr embed``). For each
combination it builds the trainer, draws the batches of ``--steps`` + 2 steps of a real epoch
(batch 128, the preset's settings), runs 2 warm-up steps, then times the rest and reports the
median and mean step time, the epoch estimate (steps per epoch x mean), and the peak RSS.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

from llmesr.models.config import build_configs  # noqa: E402
from llmesr.training.trainer import Trainer  # noqa: E402


def time_steps(data: str, preset: str, backbone: str, model: str, steps: int) -> dict:
    mcfg, tcfg = build_configs(preset, backbone, model, {"epochs": "1"})
    with tempfile.TemporaryDirectory() as run:
        tr = Trainer(data, mcfg, tcfg, run, overwrite=True, progress=False,
                     log=lambda *a: None)
        samples = tr.builder.epoch_samples()
        bs = tcfg.batch_size
        per_epoch = -(-len(samples) // bs)
        batches = [tr.builder.train_batch(samples[i * bs:(i + 1) * bs])
                   for i in range(min(steps + 2, per_epoch))]
        tr.model.train()
        for b in batches[:2]:
            tr._step(b)
        times = []
        for b in batches[2:]:
            t0 = time.perf_counter()
            tr._step(b)
            times.append(time.perf_counter() - t0)
    mean = statistics.fmean(times)
    return {"preset": preset, "backbone": backbone, "model": model, "steps_timed": len(times),
            "step_seconds_median": round(statistics.median(times), 4),
            "step_seconds_mean": round(mean, 4), "steps_per_epoch": per_epoch,
            "epoch_seconds_estimate": round(mean * per_epoch, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--models", nargs="+", default=["id", "llminit", "llmesr"])
    ap.add_argument("--backbones", nargs="+", default=["sasrec"])
    ap.add_argument("--presets", nargs="+", default=["paper", "default"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [time_steps(args.data, p, b, m, args.steps)
               for p in args.presets for b in args.backbones for m in args.models]
    emit({"benchmark": "train_speed", "data": args.data, "threads": torch.get_num_threads(),
          "torch": torch.__version__, "results": results}, args.out)


if __name__ == "__main__":
    main()
