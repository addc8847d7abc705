"""Seconds per training step with a trained run's weights (the paper GRU's cost depends on them).

    python benchmarks/trained_step.py DATA_DIR RUN_DIR [--steps 4] [--threads N] [--out F]

The paper preset's GRU4Rec replays the padded steps cropped from a batch until the GRU has
contracted (``GRUBackbone.prefix_state``); how many steps that takes depends on the weights,
so the suite's figure (untrained weights) is not the whole story. This script rebuilds the
run's model and settings, loads its best weights, and times ``--steps`` training steps on
real batches after one warm-up. For the GRU it also reports how the replays went (steps asked,
steps until contraction, steps run with autograd). It only reads the run directory.

To compare with an earlier version of the code, run the same command with that version on
``PYTHONPATH`` (e.g. a ``git worktree`` of an older commit's ``src``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, parse_with_runtime  # noqa: E402

from safetensors.torch import load_file  # noqa: E402

import llmesr  # noqa: E402
from llmesr.models.config import configs_from_dict  # noqa: E402
from llmesr.training.trainer import Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("run")
    ap.add_argument("--steps", type=int, default=4)
    args = parse_with_runtime(ap)
    run = Path(args.run)
    mcfg, tcfg = configs_from_dict(json.loads((run / "config.json").read_text())["configs"])
    tcfg.device = args.device
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(args.data, mcfg, tcfg, tmp, overwrite=True, progress=False,
                     log=lambda *a: None)
        tr.model.load_state_dict(load_file(str(run / "model.safetensors")))
        samples = tr.builder.epoch_samples()
        bs = tcfg.batch_size
        batches = [tr.builder.train_batch(samples[i * bs:(i + 1) * bs])
                   for i in range(args.steps + 1)]
        enc = tr.model.encoder
        replays = []
        if hasattr(enc, "prefix_state"):
            original = enc.prefix_state

            def spy(*a, **k):
                h = original(*a, **k)
                replays.append(dict(enc.last_prefix))
                return h
            enc.prefix_state = spy
        tr.model.train()
        tr._step(batches[0])
        replays.clear()
        times = []
        for b in batches[1:]:
            t0 = time.perf_counter()
            tr._step(b)
            times.append(time.perf_counter() - t0)
    out = {"benchmark": "trained_step", "code": str(Path(llmesr.__file__).parent),
           "run": str(run), "preset_settings": {"backbone": mcfg.backbone, "model": mcfg.model,
                                                "gru_mask_padding": mcfg.gru_mask_padding},
           "steps_timed": len(times), "step_seconds_mean": round(statistics.fmean(times), 4),
           "epoch_seconds": round(statistics.fmean(times) * -(-len(samples) // bs), 1)}
    if replays:
        def stats(key: str) -> dict:
            v = sorted(r[key] for r in replays)
            return {"min": v[0], "median": v[len(v) // 2], "max": v[-1]}
        out["gru_replays"] = {"count": len(replays), "steps": stats("steps"),
                              "contracted_after": stats("contracted_after")}
    emit(out, args.out)


if __name__ == "__main__":
    main()
