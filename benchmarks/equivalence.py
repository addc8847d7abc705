"""Exact-loss check of the speed work: the fast training step against the original code's way.

    python benchmarks/equivalence.py DATA_DIR [--presets paper default]
        [--backbones sasrec bert4rec gru4rec] [--models id llminit llmesr] [--steps 10]
        [--set key=value ...] [--device auto] [--threads N] [--out equivalence.json]

For each preset x backbone x model, two copies of the same model (same seed, same initial
weights) are trained for ``--steps`` optimiser steps on the same real batches of the first
epoch: one with llmesr's step (``Trainer._step``), one with
:func:`llmesr.training.reference.reference_step` (every sequence padded to max_len = 200, the
student as a second full pass, the ``B * K`` teachers as one full-length pass with autograd,
then detached: the original code's computation). Dropout is set to 0 (``--set`` may add other
settings) so that nothing random is left in a step but the batch, which both share.

The JSON gives, per combination, both loss trajectories, the largest relative difference of
the total loss and of each part over the steps, the distance between the two models after the
last step as a share of the distance they moved (``update_gap``), and the mean seconds per step of both paths (the reference path's time is the cost
of the original computation with this library's kernels; it excludes the original code's
Python-side batch building and anomaly detection).
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
from _common import emit, parse_with_runtime  # noqa: E402

from llmesr.models.config import build_configs  # noqa: E402
from llmesr.training.reference import reference_step, state_vector, update_gap  # noqa: E402
from llmesr.training.trainer import Trainer  # noqa: E402


def compare(data: str, preset: str, backbone: str, model: str, steps: int, device: str,
            overrides: dict[str, str]) -> dict:
    settings = {"dropout": "0", "epochs": "1", "device": device, **overrides}
    mcfg, tcfg = build_configs(preset, backbone, model, settings)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        fast = Trainer(data, mcfg, tcfg, a, overwrite=True, progress=False, log=lambda *x: None)
        ref = Trainer(data, mcfg, tcfg, b, overwrite=True, progress=False, log=lambda *x: None)
        samples = fast.builder.epoch_samples()
        bs = tcfg.batch_size
        batches = [fast.builder.train_batch(samples[i * bs:(i + 1) * bs]) for i in range(steps)]
        start = state_vector(fast.model)
        same_start = bool(torch.equal(start, state_vector(ref.model)))
        fast.model.train()
        ref.model.train()
        rows, raw, t_fast, t_ref = [], [], [], []
        for batch in batches:
            t0 = time.perf_counter()
            f = fast._step(batch)
            t1 = time.perf_counter()
            r = reference_step(ref, batch)
            t2 = time.perf_counter()
            t_fast.append(t1 - t0)
            t_ref.append(t2 - t1)
            raw.append((f, r))
            rows.append({"fast": {k: float(f"{v:.8g}") for k, v in f.items()},
                         "reference": {k: float(f"{v:.8g}") for k, v in r.items()}})
        gap = update_gap(start, fast.model, ref.model)
    rel = {}
    for part in raw[0][0]:
        rel[part] = max(abs(f[part] - r[part]) / max(abs(r[part]), 1e-12) for f, r in raw)
    return {"preset": preset, "backbone": backbone, "model": model, "steps": steps,
            "same_initial_weights": same_start,
            "max_relative_loss_difference": {k: float(f"{v:.3g}") for k, v in rel.items()},
            "final_parameter_gap_relative_to_update": float(f"{gap:.3g}"),
            "fast_step_seconds": round(statistics.fmean(t_fast), 4),
            "reference_step_seconds": round(statistics.fmean(t_ref), 4),
            "losses": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--presets", nargs="+", default=["paper", "default"])
    ap.add_argument("--backbones", nargs="+", default=["sasrec", "bert4rec", "gru4rec"])
    ap.add_argument("--models", nargs="+", default=["id", "llminit", "llmesr"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parse_with_runtime(ap)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    results = []
    for preset in args.presets:
        for backbone in args.backbones:
            for model in args.models:
                r = compare(args.data, preset, backbone, model, args.steps, args.device,
                            overrides)
                print(f"{preset:8s} {backbone:9s} {model:8s} max rel loss diff "
                      f"{r['max_relative_loss_difference']['loss']:.2e}  param gap "
                      f"{r['final_parameter_gap_relative_to_update']:.2e}  "
                      f"{r['fast_step_seconds']:.3f} s vs {r['reference_step_seconds']:.3f} s",
                      file=sys.stderr)
                results.append(r)
    emit({"benchmark": "equivalence", "data": args.data, "dropout": 0,
          "overrides": overrides, "results": results}, args.out)


if __name__ == "__main__":
    main()
