"""llmesr's SASRec against RecTools' SASRecModel: the same split, machine, settings and metric code.

    python benchmarks/peers.py DATA_DIR [--epochs 10] [--seeds 42 43 44]
        [--loss ce | sampled_ce] [--negatives 256] [--dropout 0.5] [--hidden 64] [--blocks 2]
        [--heads 1] [--max-len 200] [--lr 1e-3] [--batch-size 128]
        [--sides rectools llmesr] [--peer-venv benchmarks/.peers-venv] [--work DIR]
        [--threads N] [--out peers.json]

e.g. ``python benchmarks/peers.py data/beauty-s3rec --threads 2 --out peers-beauty.json``
(DATA_DIR from ``llmesr prepare beauty-s3rec --out data/beauty-s3rec``; no embeddings needed).

RecTools is never a dependency of llmesr: on first use this script makes its own virtual
environment (``--peer-venv``, gitignored; about 1.3 GB) and installs ``torch==2.13.0`` and
``rectools[torch]==0.19.0`` into it; later runs reuse it. RecTools trains in a child process
of that environment (``benchmarks/_peer_rectools.py``), llmesr in a ``llmesr train`` child
process of this one, alternating per seed (rectools s42, llmesr s42, rectools s43, ...), each
with the same thread count (``OMP_NUM_THREADS`` and ``torch.set_num_threads``; ``--threads``,
default all cores of this process's affinity). CPU only (the peer environment's torch is the
CPU build).

The same on both sides:

- data: each user's leave-one-out training part (``users.parquet`` ``train_length``: all but
  the last two items, the whole history for users under 3) in its order (RecTools gets
  synthetic increasing timestamps). The validation item is not trained on by either model; it
  is part of the test input of both (the test input is the whole history but the test target,
  its last ``max_len`` items, as llmesr's ``Trainer.evaluate``);
- model: hidden 64, 2 blocks, 1 head, max_len 200, dropout, causal attention, padded keys
  masked (RecTools ``use_key_padding_mask=True``), item embeddings scaled by sqrt(hidden)
  (RecTools ``use_scale_factor=True``), learnable positions, dot-product scores;
- training: Adam, lr 1e-3, batch 128, a fixed number of epochs (llmesr ``patience`` = epochs:
  no early stopping; its per-epoch validation runs but is not timed), the same loss: full
  softmax (llmesr ``loss=ce`` / RecTools ``loss="softmax"``) or sampled softmax with N uniform
  negatives (llmesr ``loss=sampled_ce``, ``negative_sampler=uniform`` / RecTools
  ``loss="sampled_softmax"``, ``n_negatives=N``);
- evaluation: the model after the LAST epoch (llmesr's own test metrics come from its best
  validation epoch; they are reported too, as ``test_best_valid_epoch``), every evaluated
  user's test target ranked among all items 1..N (seen items stay candidates), pessimistic
  ties, by llmesr's ``full_ranking_ranks`` and ``metrics_from_ranks`` in this process. RecTools'
  scores are the dot products of the session embeddings and item embeddings it computes (its
  own ``recommend`` ranks by the same products; ``topk_check`` compares the two on a sample
  of users). Items RecTools never saw in training have no embedding: they score -inf, and a
  test user none of whose input items it knows gets a zero embedding (counted in the output).

Per run: ``epoch_seconds`` (wall seconds of each training epoch, measured inside the child:
llmesr's ``train_log.csv`` ``train_seconds``, RecTools' by a Lightning callback; neither
includes validation, data preparation or the final evaluation) and their mean, the child's
wall seconds and peak resident memory (``wait4``), and test HR@10 / NDCG@10. Per side: mean
and sample std over seeds, and llmesr against RecTools. JSON on stdout (and ``--out``); the
top-level ``peak_rss_mib`` is this parent process's.

Known differences that no setting aligns (see ``differences`` in the JSON): RecTools pads
every batch to max_len while llmesr crops to length groups; RecTools counts positions from
the end of the sequence (llmesr from its oldest item); RecTools' Adam uses betas (0.9, 0.98)
(llmesr: torch's default 0.999); RecTools' softmax includes the padding row as a class; its
sampled softmax draws N negatives per position and keeps accidental hits (llmesr: N per batch,
hits removed); initialisations differ (both xavier-normal on matrices, different biases and
LayerNorm eps).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, parse_with_runtime, run_cli  # noqa: E402

from llmesr.data.artifact import load_dataset  # noqa: E402
from llmesr.evaluation.metrics import metrics_from_ranks  # noqa: E402
from llmesr.evaluation.protocols import full_ranking_ranks  # noqa: E402

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_peer_rectools.py"
DEFAULT_VENV = HERE / ".peers-venv"
#: exactly these: torch 2.13.0 is the CPU build on this machine's disk (any other torch spec
#: downloads a CUDA build of several GB); 0.19.0 is the RecTools release compared against
PEER_REQUIREMENTS = ("torch==2.13.0", "rectools[torch]==0.19.0")
PEER_VERSIONS = {"rectools": "0.19.0", "torch": "2.13.0"}
METRICS = ("HR@10", "NDCG@10")
DIFFERENCES = [
    "RecTools pads every batch to max_len; llmesr crops each batch to length groups",
    "RecTools counts positions from the end of the sequence; llmesr from its oldest item",
    "RecTools' Adam uses betas (0.9, 0.98); llmesr torch's default (0.9, 0.999)",
    "RecTools' full softmax includes the padding row as a class; llmesr's excludes it",
    "sampled softmax: RecTools draws N negatives per position and keeps accidental hits; "
    "llmesr draws N per batch and removes hits",
    "initialisation: both xavier-normal on weight matrices; biases and LayerNorm eps differ",
    "llmesr validates after every epoch (not timed); RecTools does not validate",
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- the peer environment ---------------------------------------------------------------------


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _peer_versions(py: Path) -> dict | None:
    if not py.is_file():
        return None
    code = ("import json, rectools, torch, pytorch_lightning as pl; print(json.dumps({"
            "'rectools': rectools.__version__, 'torch': torch.__version__, "
            "'pytorch_lightning': pl.__version__}))")
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _right_versions(v: dict | None) -> bool:
    return (v is not None and v["rectools"] == PEER_VERSIONS["rectools"]
            and v["torch"].split("+")[0] == PEER_VERSIONS["torch"])


def ensure_peer_venv(venv: Path) -> dict:
    """The peer environment's python and versions, made and filled first when needed."""
    py = _venv_python(venv)
    versions = _peer_versions(py)
    if _right_versions(versions):
        return {"python": str(py), **versions}
    if not py.is_file():
        log(f"making the peer environment {venv} ...")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    log(f"installing {' '.join(PEER_REQUIREMENTS)} into {venv} (a few minutes) ...")
    r = subprocess.run([str(py), "-m", "pip", "install", "--quiet", *PEER_REQUIREMENTS],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"installing the peer environment failed:\n{r.stderr[-3000:]}")
    versions = _peer_versions(py)
    if not _right_versions(versions):
        raise SystemExit(f"the peer environment {venv} has {versions}, expected "
                         f"{PEER_VERSIONS}; remove it and run again")
    return {"python": str(py), **versions}


# ---- the split, as files for the worker -------------------------------------------------------


def _flat(starts: np.ndarray, lengths: np.ndarray, items: np.ndarray, user_ids: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """(user id, item) rows of items[starts[i]:starts[i] + lengths[i]] for every i, in order."""
    lengths = np.maximum(lengths, 0)
    total = int(lengths.sum())
    offs = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return (np.repeat(user_ids, lengths).astype(np.int64),
            items[np.repeat(starts, lengths) + offs].astype(np.int64))


class Split:
    """The leave-one-out split as llmesr's Trainer reads it (training part, test cases)."""

    def __init__(self, data: str):
        ds = load_dataset(data)
        users = ds.users
        self.num_items = ds.num_items
        self.num_users = ds.num_users
        starts = ds.offsets[:-1].astype(np.int64)
        lengths = users["length"].to_numpy().astype(np.int64)
        train_len = users["train_length"].to_numpy().astype(np.int64)
        ids = np.arange(1, ds.num_users + 1, dtype=np.int64)         # user id = row + 1
        items = ds.items.astype(np.int64)
        self.train_users, self.train_items = _flat(starts, train_len, items, ids)
        evaluated = users["evaluated"].to_numpy()
        self.test_rows = np.flatnonzero(evaluated)                   # as Trainer._eval_setup
        self.test_targets = users["test_item"].to_numpy().astype(np.int64)[self.test_rows]
        # the test input: the whole history but the target (Trainer.evaluate)
        self.test_users, self.test_items = _flat(starts[self.test_rows],
                                                 np.maximum(lengths[self.test_rows] - 1, 0),
                                                 items, ids[self.test_rows])

    def write(self, folder: Path) -> None:
        for name in ("train_users", "train_items", "test_users", "test_items"):
            np.save(folder / f"{name}.npy", getattr(self, name))


# ---- child processes --------------------------------------------------------------------------


def _thread_env(threads: int) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)          # as _common.run_cli does for llmesr
    return env


def run_child(cmd: list[str], threads: int, log_file: Path) -> dict:
    """Run ``cmd``; its wall seconds and peak RSS (``wait4``), output to ``log_file``."""
    t0 = time.perf_counter()
    with open(log_file, "w") as out:
        proc = subprocess.Popen(cmd, env=_thread_env(threads), stdout=out,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if code != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(cmd[:2])} failed ({code}):\n{tail}")
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


# ---- the two sides ------------------------------------------------------------------------------


def _test_metrics(ranks: np.ndarray) -> dict:
    m = metrics_from_ranks(ranks)
    return {**{k: round(m[k], 6) for k in METRICS}, "users": int(m["count"])}


def run_rectools(split: Split, args, seed: int, threads: int, py: str, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    split.write(work)
    cfg = {"hidden": args.hidden, "blocks": args.blocks, "heads": args.heads,
           "max_len": args.max_len, "dropout": args.dropout, "lr": args.lr,
           "batch_size": args.batch_size, "epochs": args.epochs,
           "loss": "softmax" if args.loss == "ce" else "sampled_softmax",
           "n_negatives": args.negatives, "seed": seed, "threads": threads,
           "num_items": split.num_items, "check_k": 10}
    (work / "config.json").write_text(json.dumps(cfg, indent=2))
    proc = run_child([py, str(WORKER), str(work)], threads, work / "worker.log")
    info = json.loads((work / "result.json").read_text())
    res = np.load(work / "result.npz")
    n, d = split.num_items, res["user_emb"].shape[1]
    # zero rows: users RecTools could not encode (no input item it knows): all scores 0
    user_table = np.zeros((split.num_users + 1, d), dtype=np.float32)
    user_table[res["users"]] = res["user_emb"]
    item_t = torch.from_numpy(res["item_emb"])
    unknown = torch.from_numpy(~res["item_known"])
    unknown[0] = False                                       # padding: never a candidate

    def score(rows: torch.Tensor, candidates: torch.Tensor | None) -> torch.Tensor:
        s = torch.from_numpy(user_table[rows.numpy() + 1]) @ item_t.T
        s[:, unknown] = float("-inf")                        # no embedding: never recommended
        return s

    ranks = full_ranking_ranks(score, split.test_rows, split.test_targets, n,
                               ties="pessimistic", progress=False)
    # RecTools' own top-10 against the dot products' top-10 for the sampled users
    tu, ti = res["top_users"], res["top_items"]
    overlaps, exact = [], 0
    for u in np.unique(tu):
        theirs = ti[tu == u]
        s = score(torch.tensor([u - 1]), None)[0]
        s[0] = float("-inf")
        ours = torch.topk(s, len(theirs)).indices.numpy()
        overlaps.append(len(set(ours.tolist()) & set(theirs.tolist())) / len(theirs))
        exact += int(np.array_equal(ours, theirs))
    targets_unknown = int((~res["item_known"][split.test_targets]).sum())
    secs = info["epoch_seconds"]
    return {"side": "rectools", "seed": seed, "epochs": len(secs), "epoch_seconds": secs,
            "epoch_seconds_mean": round(statistics.fmean(secs), 3),
            "fit_seconds": info["fit_seconds"], "process_seconds": proc["seconds"],
            "peak_rss_mib": proc["peak_rss_mib"], "threads": info["threads"],
            "test": _test_metrics(ranks),
            # RecTools keeps each user's last max_len + 1 training items (llmesr's windows see
            # the same ones); items only in the cut-off part drop out of its catalogue
            "train_users": info["train_users"],
            "train_interactions_kept": info["train_interactions"],
            "known_items": info["known_items"], "test_targets_unknown": targets_unknown,
            "test_users_not_encoded": int(len(split.test_rows) - info["encoded_users"]),
            "topk_check": {"users": len(overlaps),
                           "mean_overlap_at_10": round(float(np.mean(overlaps)), 4)
                           if overlaps else None,
                           "identical_lists": exact},
            "versions": info["versions"]}


def llmesr_settings(args, seed: int) -> list[str]:
    sets = {"dropout": args.dropout, "hidden": args.hidden, "layers": args.blocks,
            "heads": args.heads, "max_len": args.max_len, "lr": args.lr,
            "batch_size": args.batch_size, "loss": args.loss, "patience": args.epochs,
            "test_protocols": "full", "valid_protocol": "full", "device": "cpu"}
    if args.loss == "sampled_ce":
        sets.update(sampled_negatives=args.negatives, negative_sampler="uniform")
    out = ["--model", "id", "--backbone", "sasrec", "--preset", "default",
           "--seed", str(seed), "--epochs", str(args.epochs)]
    for k, v in sets.items():
        out += ["--set", f"{k}={v}"]
    return out


def last_epoch_ranks(data: str, run: Path) -> np.ndarray:
    """Test ranks of the run's last-epoch weights (``checkpoint/``), by llmesr's Trainer."""
    from llmesr.models.config import configs_from_dict
    from llmesr.training.checkpoint import load_weights
    from llmesr.training.trainer import Trainer

    mcfg, tcfg = configs_from_dict(json.loads((run / "config.json").read_text())["configs"])
    tr = Trainer(data, mcfg, tcfg, run, progress=False, log=lambda *a, **k: None,
                 evaluate_only=True)
    load_weights(tr.model, run / "checkpoint" / "model.safetensors")
    ranks, _ = tr.evaluate("test", "full")
    return ranks


def run_llmesr(data: str, args, seed: int, threads: int, work: Path) -> dict:
    run = work / "run"
    proc = run_cli(f"llmesr-s{seed}",
                   ["train", data, *llmesr_settings(args, seed), "--out", str(run),
                    "--overwrite", "--quiet"], threads=threads)
    with open(run / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    secs = [float(r["train_seconds"]) for r in rows]
    metrics = json.loads((run / "metrics.json").read_text())
    best = metrics["test"]["full"]["overall"]
    return {"side": "llmesr", "seed": seed, "epochs": len(secs), "epoch_seconds": secs,
            "epoch_seconds_mean": round(statistics.fmean(secs), 3),
            "valid_eval_seconds_mean": round(statistics.fmean(float(r["eval_seconds"])
                                                              for r in rows), 3),
            "process_seconds": proc["seconds"], "peak_rss_mib": proc["peak_rss_mib"],
            "threads": threads, "test": _test_metrics(last_epoch_ranks(data, run)),
            "test_best_valid_epoch": {"epoch": metrics["best_epoch"],
                                      **{k: round(best[k], 6) for k in METRICS}}}


# ---- summary ------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 6),
            "std": round(statistics.stdev(values), 6) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarise(runs: list[dict]) -> dict:
    out: dict = {}
    for side in ("rectools", "llmesr"):
        mine = [r for r in runs if r["side"] == side]
        if not mine:
            continue
        out[side] = {"epoch_seconds": _mean_std([r["epoch_seconds_mean"] for r in mine]),
                     "peak_rss_mib": _mean_std([r["peak_rss_mib"] for r in mine]),
                     **{k: _mean_std([r["test"][k] for r in mine]) for k in METRICS}}
    if "rectools" in out and "llmesr" in out:
        a, b = out["llmesr"], out["rectools"]
        out["llmesr_vs_rectools"] = {
            "epoch_seconds_ratio": round(a["epoch_seconds"]["mean"]
                                         / b["epoch_seconds"]["mean"], 3),
            "peak_rss_ratio": round(a["peak_rss_mib"]["mean"] / b["peak_rss_mib"]["mean"], 3),
            **{f"{k}_difference": round(a[k]["mean"] - b[k]["mean"], 6) for k in METRICS}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="a prepared llmesr dataset directory")
    ap.add_argument("--epochs", type=int, default=10, help="fixed epochs, no early stopping")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--loss", choices=("ce", "sampled_ce"), default="ce",
                    help="ce: full softmax (RecTools 'softmax'); sampled_ce: sampled softmax "
                         "with --negatives uniform negatives (RecTools 'sampled_softmax')")
    ap.add_argument("--negatives", type=int, default=256, help="for --loss sampled_ce")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--max-len", type=int, default=200)
    ap.add_argument("--dropout", type=float, default=0.5, help="llmesr's default 0.5")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--sides", nargs="+", choices=("rectools", "llmesr"),
                    default=["rectools", "llmesr"], help="run only one side (default both)")
    ap.add_argument("--peer-venv", type=Path, default=DEFAULT_VENV,
                    help="RecTools' own virtual environment (made on first use)")
    ap.add_argument("--work", type=Path, default=None,
                    help="keep the runs' files here (default: a temporary folder, removed)")
    args = parse_with_runtime(ap)
    if args.device not in ("auto", "cpu"):
        raise SystemExit("peers.py runs on the CPU only (the peer environment's torch is the "
                         "CPU build)")
    threads = args.threads or len(os.sched_getaffinity(0))
    peer = ensure_peer_venv(args.peer_venv) if "rectools" in args.sides else None
    split = Split(args.data)
    work = args.work or Path(tempfile.mkdtemp(prefix="llmesr-peers-"))
    runs = []
    try:
        for seed in args.seeds:
            for side in ("rectools", "llmesr"):
                if side not in args.sides:
                    continue
                log(f"{side} seed {seed}: {args.epochs} epochs ...")
                folder = work / f"{side}-s{seed}"
                if folder.exists():
                    shutil.rmtree(folder)
                folder.mkdir(parents=True)
                r = (run_rectools(split, args, seed, threads, peer["python"], folder)
                     if side == "rectools" else run_llmesr(args.data, args, seed, threads,
                                                           folder))
                log(f"  {r['epoch_seconds_mean']:.1f} s/epoch, peak {r['peak_rss_mib']:.0f} MiB, "
                    f"test HR@10 {r['test']['HR@10']:.4f} NDCG@10 {r['test']['NDCG@10']:.4f}")
                runs.append(r)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "peers", "data": args.data, "device": "cpu", "threads": threads,
        "torch": torch.__version__, "peer": peer,
        "split": {"users": split.num_users, "items": split.num_items,
                  "train_interactions": int(len(split.train_items)),
                  "test_users": int(len(split.test_rows)),
                  "validation_item": "not trained on by either model; part of both test "
                                     "inputs"},
        "settings": {"loss": args.loss, "negatives": args.negatives if args.loss ==
                     "sampled_ce" else None, "epochs": args.epochs, "seeds": args.seeds,
                     "hidden": args.hidden, "blocks": args.blocks, "heads": args.heads,
                     "max_len": args.max_len, "dropout": args.dropout, "lr": args.lr,
                     "batch_size": args.batch_size},
        "evaluation": "test split, last-epoch weights, full ranking over items 1..N, "
                      "pessimistic ties, seen items kept, llmesr.evaluation metrics",
        "runs": runs,
        "summary": summarise(runs),
        "differences": DIFFERENCES,
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
