"""Seconds per training step (and per epoch, extrapolated) by model, backbone and preset.

    python benchmarks/train_speed.py DATA_DIR [--models id llminit llmesr]
        [--backbones sasrec] [--presets paper default] [--steps 20] [--threads N] [--out F]

DATA_DIR is a prepared and embedded dataset (``llmesr prepare`` + ``llmesr embed``). For each
combination it builds the trainer, draws the batches of ``--steps`` + 2 steps of a real epoch
(batch 128, the preset's settings), runs 2 warm-up steps, then times the rest and reports the
median and mean step time, the epoch estimate (steps per epoch x mean), the FLOPs of a step
and the peak RSS. (The timing code is shared with ``suite.py``, the full benchmark suite.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, parse_with_runtime  # noqa: E402
from suite import peak_matmul, train_speed  # noqa: E402

from llmesr.training.trainer import resolve_device  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--models", nargs="+", default=["id", "llminit", "llmesr"])
    ap.add_argument("--backbones", nargs="+", default=["sasrec"])
    ap.add_argument("--presets", nargs="+", default=["paper", "default"])
    ap.add_argument("--steps", type=int, default=20)
    args = parse_with_runtime(ap)
    peak = peak_matmul(resolve_device(args.device))["flops_per_second"]
    results = [train_speed(args.data, p, b, m, args.steps, peak, args.device)
               for p in args.presets for b in args.backbones for m in args.models]
    emit({"benchmark": "train_speed", "data": args.data, "threads": torch.get_num_threads(),
          "torch": torch.__version__, "results": results}, args.out)


if __name__ == "__main__":
    main()
