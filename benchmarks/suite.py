"""The benchmark suite: training, evaluation and embedding speed, memory and FLOP/s in one run.

    python benchmarks/suite.py DATA_DIR [--models id llminit llmesr]
        [--backbones sasrec bert4rec gru4rec] [--presets paper default] [--steps 10]
        [--embed-texts 2000] [--no-train-process] [--device auto] [--threads N]
        [--out suite.json]

DATA_DIR is a prepared and embedded dataset (``llmesr prepare`` + ``llmesr embed``), e.g.
beauty-s3rec. The JSON (stdout, and ``--out``) holds, all measured in this one process:

- ``peak_matmul``: the machine's dense matmul rate (fp32 on CPU, bf16 on CUDA), the best of
  several timed 2048 x 2048 products: the hardware reference for the FLOP/s below;
- ``train``: per preset x backbone x model, seconds per training step (mean and median of
  ``--steps`` timed steps after 2 warm-ups, real batches of the first epoch) and per epoch
  (steps per epoch x mean), the FLOPs of one step (forward + backward, counted by
  ``torch.utils.flop_counter``: matmuls, attention and convolutions; element-wise work is not
  counted) and the achieved FLOP/s as a share of ``peak_matmul``;
- ``losses``: the same step and epoch times for each objective (``LOSS_VARIANTS``: BCE, full
  softmax, sampled softmax with each sampler, gBCE) on the default preset's SASRec, with each
  one's ratio to BCE in this run;
- ``eval``: seconds for one test-split evaluation of all users, full ranking and sampled;
- ``embed``: item texts per second through the bundled all-MiniLM-L6-v2 encoder;
- ``train_process``: wall seconds and peak resident memory of a real ``llmesr train`` process
  (paper preset, LLM-ESR, SASRec, one epoch with its validation and the test evaluation);
- ``ddp`` (``--ddp MODEL ...``): one training epoch of each model (default preset, SASRec)
  as ``llmesr train`` in one process with ``--threads`` threads against ``torchrun
  --nproc_per_node P`` processes with ``threads / P`` threads each (P = ``--ddp-procs``),
  the same global batch: the epoch's training seconds (train_log.csv) and the wall time;
- ``teacher_cache`` (``--teachers PRESET ...``): one epoch of ``id`` and of LLM-ESR with
  exact teachers (``teacher_cache=0``) and with the once-an-epoch cache (``-1``), SASRec;
- ``methods`` (``--methods MODEL ...``): one training epoch of each method as a real
  ``llmesr train`` process (default preset, SASRec, ``--threads`` threads): ``id``,
  ``llminit``, ``llmesr`` and ``rlmrec`` their first epoch; ``melt`` one epoch of its stage 2
  (branches and tail-item update) on the backbone of the ``id`` epoch; ``cities`` its stage
  (one epoch of F and the inference of the tail rows) on that backbone, timed in this
  process;
- ``peak_rss_mib`` of the process (and ``cuda_peak_mib`` on CUDA).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, parse_with_runtime, run_cli  # noqa: E402

from llmesr.models.config import build_configs  # noqa: E402
from llmesr.training.trainer import Trainer, resolve_device  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_matmul(device: torch.device, n: int = 2048, repeats: int = 10) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "seconds": round(best, 5),
            "flops_per_second": 2 * n ** 3 / best}


def step_flops(tr: Trainer, batch: dict) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        tr._step(batch)
    return int(counter.get_total_flops())


def train_speed(data: str, preset: str, backbone: str, model: str, steps: int,
                peak: float, device: str, overrides: dict[str, str] | None = None) -> dict:
    mcfg, tcfg = build_configs(preset, backbone, model,
                               {"epochs": "1", "device": device, **(overrides or {})})
    with tempfile.TemporaryDirectory() as run:
        tr = Trainer(data, mcfg, tcfg, run, overwrite=True, progress=False,
                     log=lambda *a: None)
        samples = tr.builder.epoch_samples()
        bs = tcfg.batch_size
        per_epoch = -(-len(samples) // bs)
        batches = [tr.builder.train_batch(samples[i * bs:(i + 1) * bs])
                   for i in range(min(steps + 3, per_epoch))]
        tr.model.train()
        for b in batches[:2]:
            tr._step(b)
        flops = step_flops(tr, batches[2])
        times = []
        for b in batches[3:]:
            _sync(tr.device)
            t0 = time.perf_counter()
            tr._step(b)
            _sync(tr.device)
            times.append(time.perf_counter() - t0)
    mean = statistics.fmean(times)
    return {"preset": preset, "backbone": backbone, "model": model, **(overrides or {}),
            "steps_timed": len(times),
            "step_seconds_mean": round(mean, 4),
            "step_seconds_median": round(statistics.median(times), 4),
            "steps_per_epoch": per_epoch, "epoch_seconds": round(mean * per_epoch, 1),
            "step_gflops": round(flops / 1e9, 2),
            "achieved_gflops_per_second": round(flops / mean / 1e9, 2),
            "share_of_peak_matmul": round(flops / mean / peak, 4)}


#: the objectives timed by ``--losses`` (llmesr.models.losses), each a set of overrides
LOSS_VARIANTS = {
    "bce": {"loss": "bce"},
    "ce": {"loss": "ce"},
    "sampled_ce-uniform-256": {"loss": "sampled_ce", "negative_sampler": "uniform"},
    "sampled_ce-popularity-256": {"loss": "sampled_ce", "negative_sampler": "popularity"},
    "sampled_ce-in_batch": {"loss": "sampled_ce", "negative_sampler": "in_batch"},
    "gbce-uniform-256": {"loss": "gbce", "negative_sampler": "uniform"},
}


def loss_speed(data: str, models: list[str], steps: int, peak: float, device: str) -> list:
    """Step and epoch time of each objective (default preset, SASRec), and its ratio to BCE
    measured in the same run."""
    out = []
    for model in models:
        rows = {name: train_speed(data, "default", "sasrec", model, steps, peak, device,
                                  dict(ov)) for name, ov in LOSS_VARIANTS.items()}
        base = rows["bce"]["step_seconds_mean"]
        for name, row in rows.items():
            out.append({"variant": name, **row,
                        "epoch_vs_bce": round(row["step_seconds_mean"] / base, 2)})
    return out


def eval_speed(data: str, model: str, device: str, preset: str = "default") -> list[dict]:
    mcfg, tcfg = build_configs(preset, "sasrec", model, {"epochs": "1", "device": device})
    out = []
    with tempfile.TemporaryDirectory() as run:
        tr = Trainer(data, mcfg, tcfg, run, overwrite=True, progress=False,
                     log=lambda *a: None)
        for protocol in ("full", "sampled"):
            _sync(tr.device)
            t0 = time.perf_counter()
            ranks, _ = tr.evaluate("test", protocol)
            _sync(tr.device)
            out.append({"model": model, "preset": preset, "protocol": protocol, "users": len(ranks),
                        "seconds": round(time.perf_counter() - t0, 2)})
    return out


def embed_speed(data: str, n: int, device: torch.device) -> dict:
    from llmesr.data.artifact import load_dataset
    from llmesr.semantic.encoders import make_encoder

    items = load_dataset(data).item_table
    col = "title" if "title" in items.columns else items.columns[-1]
    texts = items[col].astype(str).tolist()[:n]
    enc = make_encoder(None, device=device.type)
    enc.encode(texts[:32])                     # load and warm up
    t0 = time.perf_counter()
    enc.encode(texts)
    seconds = time.perf_counter() - t0
    return {"encoder": "all-MiniLM-L6-v2 (bundled)", "texts": len(texts),
            "mean_chars": round(sum(map(len, texts)) / max(len(texts), 1), 1),
            "seconds": round(seconds, 2), "texts_per_second": round(len(texts) / seconds, 1)}


def epoch_run(data: str, train_args: list[str], nproc: int, threads: int,
              keep: Path | None = None, epochs: int | None = 1) -> dict:
    """One epoch of ``llmesr train DATA TRAIN_ARGS`` in a child (under torchrun with
    ``nproc`` > 1 processes, ``threads`` / ``nproc`` threads each): the epoch's training and
    validation seconds (train_log.csv), the wall time and the loss."""
    per = max(threads // nproc, 1)
    env = {**os.environ, "OMP_NUM_THREADS": str(per), "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        run = str(keep) if keep is not None else tmp
        launch = ([sys.executable, "-m", "llmesr"] if nproc == 1 else
                  [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(nproc), "-m", "llmesr"])
        cmd = [*launch, "train", data, *train_args,
               *(["--epochs", str(epochs)] if epochs else []), "--out", run, "--quiet"]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
        with open(Path(run) / "train_log.csv") as f:
            log = list(csv.DictReader(f))[0]
    return {"args": " ".join(train_args), "processes": nproc, "threads_each": per,
            "epoch_train_seconds": float(log["train_seconds"]),
            "valid_eval_seconds": float(log["eval_seconds"]),
            "wall_seconds": round(wall, 1), "loss": float(log["loss"])}


def method_speed(data: str, methods: list[str], threads: int, device: str) -> list:
    """One epoch of each method's own training (see the module docstring)."""
    from llmesr.data.artifact import load_dataset
    from llmesr.models import cities
    from llmesr.training.batches import TrainView
    from llmesr.training.trainer import load_run

    base = ["--set", f"device={device}"]
    with tempfile.TemporaryDirectory() as tmp:
        idrun = Path(tmp) / "id"
        per = {"id": epoch_run(data, [*base, "--model", "id"], 1, threads, keep=idrun)}
        for m in methods:
            if m in ("llminit", "llmesr", "rlmrec"):
                per[m] = epoch_run(data, [*base, "--model", m], 1, threads)
            elif m == "melt":
                per[m] = epoch_run(data, [*base, "--model", "melt", "--init-from", str(idrun),
                                          "--set", "melt_epochs=1"], 1, threads, epochs=None)
            elif m == "cities":
                torch.set_num_threads(threads)
                model, _ = load_run(idrun)
                v = TrainView.of(load_dataset(data))
                t0 = time.perf_counter()
                ctx = cities.Contexts.build(v.items, v.starts, v.train_len, v.num_items)
                _, info = cities.infer_tail_items(model.co.embedding.weight.detach(), ctx,
                                                  epochs=1, patience=1, log=lambda *a: None,
                                                  progress=False)
                per[m] = {"args": "--model cities (its stage: 1 epoch of F + inference)",
                          "stage_seconds": round(time.perf_counter() - t0, 1),
                          "replaced": info["replaced"]}
    return [{"model": m, **row} for m, row in per.items()]


def ddp_speed(data: str, models: list[str], procs: int, threads: int, device: str) -> list:
    """One epoch per model: one process x ``threads`` against ``procs`` x threads/procs."""
    out = []
    for model in models:
        args = ["--model", model, "--set", f"device={device}"]
        row = {"model": model, "preset": "default", "backbone": "sasrec",
               "one_process": epoch_run(data, args, 1, threads),
               "torchrun": epoch_run(data, args, procs, threads)}
        row["speedup"] = round(row["one_process"]["epoch_train_seconds"]
                               / row["torchrun"]["epoch_train_seconds"], 2)
        out.append(row)
    return out


def teacher_speed(data: str, presets: list[str], threads: int, device: str) -> list:
    """One epoch of LLM-ESR (SASRec) with exact and with cached teachers, against ``id``."""
    out = []
    # the paper's views with self-distillation (alpha 0.1), on the preset's other settings:
    # the default preset's LLM-ESR has no teachers
    views = ["--set", "alpha=0.1", "--set", "use_cross_attention=true", "--set",
             "share_encoder=true", "--set", "view_aux_loss=0"]
    for preset in presets:
        base = ["--preset", preset, "--set", f"device={device}"]
        idr = epoch_run(data, [*base, "--model", "id"], 1, threads)
        row = {"preset": preset, "id": idr}
        for cache in (0, -1):
            r = epoch_run(data, [*base, "--model", "llmesr", *views, "--set",
                                 f"teacher_cache={cache}"], 1, threads)
            r["vs_id"] = round(r["epoch_train_seconds"] / idr["epoch_train_seconds"], 2)
            row["exact" if cache == 0 else "cached_epoch"] = r
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--models", nargs="+", default=["id", "llminit", "llmesr"])
    ap.add_argument("--backbones", nargs="+", default=["sasrec", "bert4rec", "gru4rec"])
    ap.add_argument("--presets", nargs="+", default=["paper", "default"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eval-models", nargs="*", default=["id", "llmesr"],
                    help="models to time evaluation for (none: skip)")
    ap.add_argument("--losses", nargs="*", default=["id", "llmesr"], metavar="MODEL",
                    help="models to time every objective for (default preset, SASRec; none: "
                         "skip)")
    ap.add_argument("--embed-texts", type=int, default=2000, help="0 = skip")
    ap.add_argument("--no-train-process", dest="train_process", action="store_false",
                    help="skip the one-epoch `llmesr train` process (time and peak memory)")
    ap.add_argument("--ddp", nargs="*", default=[], metavar="MODEL",
                    help="time one epoch of these models in one process and under torchrun")
    ap.add_argument("--ddp-procs", type=int, default=2)
    ap.add_argument("--methods", nargs="*", default=[], metavar="MODEL",
                    help="time one epoch of each method's own training (id, llminit, llmesr, "
                         "rlmrec, cities, melt)")
    ap.add_argument("--teachers", nargs="*", default=[], metavar="PRESET",
                    help="time one LLM-ESR epoch with exact and cached teachers (and id)")
    args = parse_with_runtime(ap)
    device = resolve_device(args.device)
    peak = peak_matmul(device)
    result = {"benchmark": "suite", "data": args.data, "device": str(device),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "peak_matmul": {**peak, "gflops_per_second": round(peak["flops_per_second"] / 1e9,
                                                                 1)},
              "train": [train_speed(args.data, p, b, m, args.steps, peak["flops_per_second"],
                                    args.device)
                        for p in args.presets for b in args.backbones for m in args.models],
              "losses": loss_speed(args.data, args.losses, args.steps,
                                   peak["flops_per_second"], args.device),
              "eval": [r for m in args.eval_models for r in eval_speed(args.data, m,
                                                                        args.device)]}
    if args.embed_texts:
        result["embed"] = embed_speed(args.data, args.embed_texts, device)
    if args.train_process:
        # a real `llmesr train` process: one epoch, its validation and the final test
        # evaluation (both protocols); wall time and peak resident memory of that process
        with tempfile.TemporaryDirectory() as run:
            result["train_process"] = run_cli(
                "llmesr train --preset paper --model llmesr --epochs 1",
                ["train", args.data, "--preset", "paper", "--model", "llmesr", "--epochs", "1",
                 "--set", f"device={args.device}", "--out", run, "--overwrite", "--quiet"],
                threads=torch.get_num_threads())
    if args.ddp:
        result["ddp"] = ddp_speed(args.data, args.ddp, args.ddp_procs,
                                  torch.get_num_threads(), args.device)
    if args.methods:
        result["methods"] = method_speed(args.data, args.methods, torch.get_num_threads(),
                                         args.device)
    if args.teachers:
        result["teacher_cache"] = teacher_speed(args.data, args.teachers,
                                                torch.get_num_threads(), args.device)
    if device.type == "cuda":
        result["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
        result["gpu"] = torch.cuda.get_device_name(device)
    emit(result, args.out)


if __name__ == "__main__":
    main()
