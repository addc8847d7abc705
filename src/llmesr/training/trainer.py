"""Training: Adam, early stopping on validation NDCG@10, best weights kept, resumable.

Run directory::

    RUN_DIR/
      config.json          resolved model and training settings, dataset and embeddings used
      model.safetensors    the best weights (by validation NDCG@10); the frozen LLM table is
                           stored with them, so the run directory alone rebuilds the model
      train_log.csv        one row per epoch: losses, validation metrics, time
      tensorboard/         the same as TensorBoard events (when tensorboard is installed)
      checkpoint/          the last epoch's model, optimizer, counters and RNG states (resume)
      metrics.json         test (and best validation) metrics by protocol and group
      bundle/              item table, PCA and encoder settings for serving (llmesr.serving)
      ranks_test_<protocol>.npy   per-user ranks, for significance tests
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from llmesr.data.artifact import SequenceDataset, load_dataset
from llmesr.data.io import provenance, sha256_file, write_json_atomic
from llmesr.errors import LlmesrError
from llmesr.evaluation.metrics import beyond_accuracy, metrics_from_ranks
from llmesr.evaluation.protocols import (fixed_rng, full_ranking_ranks_factored,
                                         group_masks, group_metrics, sampled_ranks)
from llmesr.models import melt
from llmesr.models.chunking import plan_chunks
from llmesr.models.config import ModelConfig, TrainConfig, configs_from_dict, configs_to_dict
from llmesr.models.distill import SelfDistillation
from llmesr.models.recommender import SequentialRecommender
from llmesr.models.views import densify_grads
from llmesr.serving.bundle import write_bundle
from llmesr import distributed as ddp
from llmesr.training.batches import BatchBuilder, TrainView, eval_inputs, to_tensors
from llmesr.training.checkpoint import (checkpoint_complete, clear_run, load_training_state,
                                        load_weights, run_progress, save_training_state,
                                        save_weights, trim_train_log)

#: the length of the top-k lists behind the beyond-accuracy metrics of metrics.json
BEYOND_K = 10


def _save_npy(path: Path, array: np.ndarray) -> None:
    """np.save through a temporary file, so a crash never leaves a truncated .npy."""
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


def same_settings(run_dir: Path, mcfg: ModelConfig, tcfg: TrainConfig) -> bool:
    """Whether ``run_dir`` was started with these settings (the epoch budget aside: more
    epochs may be asked for on resume). Settings added to llmesr after the run was started
    count with their defaults."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())["configs"]
        saved = configs_to_dict(*configs_from_dict(saved))
    except (OSError, ValueError, KeyError, TypeError):
        return False
    now = configs_to_dict(mcfg, tcfg)
    saved, now = json.loads(json.dumps(saved)), json.loads(json.dumps(now))
    for d in (saved, now):
        d["train"].pop("epochs", None)
    return saved == now


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LlmesrError("device cuda was asked for but CUDA is not available")
    return torch.device(name)


def find_embeddings(data_dir: Path, name: str | None = None) -> Path | None:
    """The semantic folder to use: ``name`` (a folder or a path), else the only/first one."""
    root = data_dir / "semantic"
    found = sorted(p for p in root.iterdir() if p.is_dir() and (p / "manifest.json").is_file()) \
        if root.is_dir() else []
    if name:
        p = Path(name)
        p = p if p.is_dir() else root / name
        if not (p / "manifest.json").is_file():
            raise LlmesrError(f"no embeddings at {p}; run 'llmesr embed {data_dir}'"
                              + (f" (there are: {', '.join(f.name for f in found)})"
                                 if found else ""))
        return p
    return found[0] if found else None


def load_user_profiles(folder: Path | None, num_users: int, dim: int) -> np.ndarray:
    """rlmrec's user profiles: ``users.npy`` of the embeddings folder (each user's training
    titles through the encoder), one finite row of the items' dimension per user."""
    again = "run 'llmesr embed' (with user embeddings, not --no-users) again"
    f = None if folder is None else folder / "users.npy"
    if f is None or not f.is_file():
        raise LlmesrError(f"rlmrec aligns users with their profile embeddings, and "
                          f"{f or 'the embeddings folder'} is missing; {again}")
    try:
        a = np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise LlmesrError(f"{f} is truncated or damaged ({e}); {again}") from None
    if a.ndim != 2 or a.shape != (num_users, dim) or a.dtype.kind not in "fiu" \
            or not np.isfinite(a).all():
        raise LlmesrError(f"{f} has shape {a.shape} ({a.dtype}); expected ({num_users}, {dim}) "
                          f"finite values, one row per user; {again}")
    return a


def load_semantic(folder: Path | None, needs: bool, *, num_items: int | None = None,
                  num_users: int | None = None, hidden: int | None = None
                  ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(item embeddings, PCA, neighbours) from an embed/import folder, checked.

    Each array must load (a truncated or damaged ``.npy`` is an error that says to embed
    again) and fit the dataset: one row per item (``num_items``) or user (``num_users``),
    finite values, neighbour indices that name existing users. Counts default to those the
    folder's manifest records. ``hidden``: when the PCA table initialises the ID table, its
    size must be the model's ``hidden``.
    """
    if folder is None:
        if needs:
            raise LlmesrError("this model needs LLM embeddings; run 'llmesr embed DATA_DIR' "
                              "first (or pass --embeddings)")
        return None, None, None
    try:
        recorded = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        recorded = recorded.get("dataset", {}) if isinstance(recorded, dict) else {}
    except (OSError, ValueError):
        recorded = {}
    n_items = num_items if num_items is not None else recorded.get("items")
    n_users = num_users if num_users is not None else recorded.get("users")
    again = "run 'llmesr embed' (or 'llmesr import-authors') again"

    def opt(name: str) -> np.ndarray | None:
        f = folder / name
        if not f.exists():
            return None
        if not f.is_file():
            raise LlmesrError(f"{f} is not a file; {again}")
        try:
            a = np.load(f, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise LlmesrError(f"{f} is truncated or damaged ({msg}); {again}") from None
        if a.ndim != 2 or a.shape[1] == 0:
            raise LlmesrError(f"{f} has shape {a.shape}, expected a 2-d table; {again}")
        rows, what = (n_users, "users") if name == "neighbors.npy" else (n_items, "items")
        if rows is not None and a.shape[0] != rows:
            raise LlmesrError(f"{f} has {a.shape[0]:,} rows but the dataset has {rows:,} "
                              f"{what}: the embeddings belong to another dataset or an earlier "
                              f"preparation of it; {again}")
        return a

    llm, pca, nbrs = opt("items.npy"), opt("items_pca.npy"), opt("neighbors.npy")
    for name, a in (("items.npy", llm), ("items_pca.npy", pca)):
        if a is not None and (a.dtype.kind not in "fiu" or not np.isfinite(a).all()):
            raise LlmesrError(f"{folder / name} holds values that are not finite numbers; "
                              f"{again}")
    if nbrs is not None:
        if nbrs.dtype.kind not in "iu":
            raise LlmesrError(f"{folder / 'neighbors.npy'} holds {nbrs.dtype} values, not "
                              f"user indices; {again}")
        limit = n_users if n_users is not None else len(nbrs)
        if nbrs.size and (nbrs.min() < 0 or nbrs.max() >= limit):
            bad = int(nbrs.max()) if nbrs.max() >= limit else int(nbrs.min())
            raise LlmesrError(f"{folder / 'neighbors.npy'} names user row {bad}, but the "
                              f"dataset's user rows are 0..{limit - 1}; {again}")
    if pca is not None and hidden is not None and pca.shape[1] != hidden:
        most = min(n_items if n_items is not None else hidden,
                   llm.shape[1] if llm is not None else hidden)
        fix = (f"these embeddings give at most {most} PCA dimensions: train with --set "
               f"hidden={pca.shape[1]}"
               if hidden > most else
               f"embed with --pca-dim {hidden}, or train with --set hidden={pca.shape[1]}")
        raise LlmesrError(f"the PCA table {folder / 'items_pca.npy'} has {pca.shape[1]} "
                          f"dimensions but the model has hidden={hidden}; {fix}")
    return llm, pca, nbrs


@dataclass
class _MeltData:
    """What MELT's stage 2 derives from the training parts (llmesr.models.melt)."""
    split: melt.MeltSplit
    contexts: melt.ItemContexts
    head_items: np.ndarray     # head items with at least one context (the item branch's)
    tail_items: np.ndarray     # tail items with at least one context (the update's)


class _StepLoss(nn.Module):
    """A training step's whole loss as one ``forward`` (the model is its only submodule),
    so that ``DistributedDataParallel`` sees one forward per backward however many passes
    (length groups, student, teachers) the step makes."""

    def __init__(self, trainer: "Trainer"):
        super().__init__()
        self.model = trainer.model
        self._loss = trainer._loss

    def forward(self, t: dict[str, torch.Tensor], n_total: int, b_total: int):
        return self._loss(t, n_total, b_total)


class Trainer:
    #: progress bars while ranking in evaluate() (evaluate_run turns them on)
    eval_bars = False

    def __init__(self, data_dir: str | Path, mcfg: ModelConfig, tcfg: TrainConfig,
                 run_dir: str | Path, *, embeddings: str | None = None, resume: bool = False,
                 overwrite: bool = False, progress: bool = True, log=print,
                 evaluate_only: bool = False, on_epoch=None,
                 init_from: str | Path | None = None):
        self.data_dir = Path(data_dir)
        self.run_dir = Path(run_dir)
        self.mcfg, self.tcfg = mcfg, tcfg
        #: under torchrun: this process's rank and the number of processes (see
        #: llmesr.distributed); rank 0 alone writes files, logs and shows bars
        self.rank, self.world = ddp.rank(), ddp.world_size()
        self.progress = progress and self.rank == 0
        self.log = log if self.rank == 0 else (lambda *a, **k: None)
        #: called as on_epoch(epoch, validation metrics) after each epoch is saved; it may raise
        #: to stop training (llmesr tune prunes trials this way)
        self.on_epoch = on_epoch
        #: cities, melt: a finished id run whose weights are the pretrained backbone (no
        #: stage 1); llmesr: a finished llminit or id run whose weights start the
        #: collaborative tower (kept there with freeze_co), before its own training
        self.init_from = Path(init_from) if init_from else None
        if self.init_from is not None and mcfg.model not in ("cities", "melt", "llmesr"):
            raise LlmesrError("--init-from reuses a trained backbone for --model cities, melt "
                              f"or llmesr; model {mcfg.model} trains its own")
        if self.init_from is not None and mcfg.model == "llmesr" and not mcfg.dual:
            raise LlmesrError("--init-from starts LLM-ESR's collaborative tower: it needs "
                              "both views (use_co_view, use_se_view)")
        if mcfg.model == "melt" and self.world > 1 and not evaluate_only:
            raise LlmesrError("--model melt does not train under torchrun yet (its branches "
                              "sample head users and items per step): run it in one process")
        #: melt: this step's share of head users and items, and stage 2's 0-based epoch
        self._melt_part: tuple[np.ndarray, np.ndarray] | None = None
        self._melt_epoch = 0
        self._melt: _MeltData | None = None
        # folders fit() makes (deepest first), removed again if it fails before a checkpoint
        self._made_dirs = [d for d in (self.run_dir, *self.run_dir.parents) if not d.exists()]
        progress_ = "other" if evaluate_only else run_progress(self.run_dir)
        if progress_ == "checkpoint" and resume:
            if not same_settings(self.run_dir, mcfg, tcfg):
                raise LlmesrError(f"{self.run_dir} was started with other settings; resume "
                                  "with the same settings or use a new --out")
        elif progress_ == "checkpoint" and not overwrite:
            raise LlmesrError(f"run directory {self.run_dir} is not empty (pass --resume to "
                              "continue it or --overwrite to start again)")
        elif progress_ == "other" and not overwrite and not evaluate_only:
            raise LlmesrError(f"run directory {self.run_dir} is not empty" + (
                " and has no checkpoint to resume from" if resume else "") +
                " (pass --overwrite to start it again, or choose another --out)")
        elif progress_ == "started":
            log(f"{self.run_dir} holds a run that stopped before its first epoch ended; "
                "starting it again")
        self.resume = resume and progress_ == "checkpoint"
        if (mcfg.co_frozen and self.init_from is None and not self.resume
                and not evaluate_only):
            raise LlmesrError("freeze_co keeps the collaborative tower as it starts: pass "
                              "--init-from a finished llminit (or id) run to start it from")
        # start afresh (fit clears what an earlier run wrote): a failure before the first
        # checkpoint then leaves the folder as this process found it
        self._fresh = not evaluate_only and not self.resume and (
            overwrite or progress_ in ("empty", "started"))
        self._discard_on_failure = progress_ in ("empty", "started")
        self.ds: SequenceDataset = load_dataset(self.data_dir)
        #: exclude_seen resolved: "auto" is on for a dataset without repeat interactions
        self.exclude_seen = (not self.ds.has_repeats) if tcfg.exclude_seen == "auto" \
            else bool(tcfg.exclude_seen)
        needs_llm = (mcfg.model == "llmesr" and mcfg.use_se_view) or mcfg.model == "rlmrec"
        needs_pca = mcfg.model == "llminit" or (mcfg.model == "llmesr" and mcfg.use_co_view
                                                and mcfg.co_init == "pca")
        self.sem_dir = find_embeddings(self.data_dir, embeddings) if (
            needs_llm or needs_pca or (mcfg.model == "llmesr" and mcfg.alpha > 0)) else None
        llm, pca, nbrs = load_semantic(self.sem_dir, needs_llm or needs_pca,
                                       num_items=self.ds.num_items, num_users=self.ds.num_users,
                                       hidden=mcfg.hidden if needs_pca else None)
        self.use_sd = mcfg.model == "llmesr" and mcfg.alpha > 0
        if self.use_sd and nbrs is None:
            raise LlmesrError("self-distillation needs similar users (neighbors.npy); run "
                              "'llmesr embed' with --neighbors, or set alpha=0")
        self.device = ddp.device_for(resolve_device(tcfg.device))
        torch.manual_seed(tcfg.seed)     # the same initial weights on every rank
        self.rng = np.random.default_rng(tcfg.seed)
        self.model = SequentialRecommender(mcfg, self.ds.num_items, llm, pca).to(self.device)
        if mcfg.model == "rlmrec":
            self.model.set_user_profiles(load_user_profiles(self.sem_dir, self.ds.num_users,
                                                            int(llm.shape[1])))
        if self.model.co is not None:
            # densified before each Adam step; under DDP dense, as its buckets are
            self.model.co.sparse_grads = self.world == 1
        self.llm_dim = None if llm is None else int(llm.shape[1])
        self.pca_dim = None if pca is None else int(pca.shape[1])
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
        #: the step's loss as one module call: DDP needs one forward per backward
        self.step_loss: nn.Module = _StepLoss(self)
        if self.world > 1 and not evaluate_only:
            import inspect

            from torch.nn.parallel import DistributedDataParallel
            # buffers (the frozen LLM table, the PCA start of co_dropout, the popularity
            # distribution) never change in training: not broadcast at each step (the
            # keyword was renamed in torch 2.13)
            no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(
                DistributedDataParallel.__init__).parameters else "broadcast_buffers")
            self.step_loss = DistributedDataParallel(
                self.step_loss, **{no_sync: False},
                device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # a small dataset may have fewer neighbours per user than sd_teachers
        teachers = min(mcfg.sd_teachers, nbrs.shape[1]) if self.use_sd else 0
        self.distill = SelfDistillation(teachers, mcfg.teacher_dropout) if self.use_sd else None
        #: teacher_cache (ModelConfig): every user's state, looked up as a teacher
        self.teacher_cache = mcfg.teacher_cache if self.use_sd else 0
        self._teachers: torch.Tensor | None = None
        self.view = TrainView.of(self.ds)
        # the popularity distribution of the popularity / in-batch samplers (losses.py)
        _, train_items = self.view.owned(np.arange(len(self.view.train_len)))
        #: each item's count among the training interactions (N + 1,; index 0 unused)
        self.train_counts = np.bincount(train_items, minlength=self.ds.num_items + 1)
        self.model.set_target_counts(self.train_counts[1:])
        self.row_chunk = 512     # at most this many rows per length group (see _chunks)
        self.builder = BatchBuilder(self.view, mcfg.backbone, mcfg.max_len, self.rng,
                                    neighbors=nbrs if self.use_sd else None,
                                    teachers=teachers, mask_prob=mcfg.mask_prob,
                                    teacher_inputs=not self.teacher_cache)
        self._eval_setup()

    # ---- evaluation ------------------------------------------------------------------------
    def _eval_setup(self) -> None:
        users = self.ds.users
        lengths = users["length"].to_numpy()
        self.starts = self.ds.offsets[:-1].astype(np.int64)
        has_valid = lengths >= 3
        self.valid_rows = np.flatnonzero(has_valid)
        self.valid_targets = users["valid_item"].to_numpy()[self.valid_rows]
        evaluated = users["evaluated"].to_numpy()
        self.test_rows = np.flatnonzero(evaluated)
        self.test_targets = users["test_item"].to_numpy()[self.test_rows]
        self.pop = np.concatenate([[0], self.ds.item_table["popularity"].to_numpy()])

    def _score_fn(self, hist_len: np.ndarray):
        model, device = self.model, self.device
        with self._autocast():
            table = model.item_embeddings()   # once per evaluation, not once per batch

        def score(rows: torch.Tensor, candidates: torch.Tensor | None) -> torch.Tensor:
            u = self.user_states(rows.numpy(), hist_len)
            with self._autocast():
                u = u.to(table.dtype)
                if candidates is None:
                    out = u @ table.T
                else:
                    out = (table[candidates.to(device)] * u[:, None, :]).sum(-1)
            return out.float()

        return score

    def user_states(self, rows: np.ndarray, hist_len: np.ndarray) -> torch.Tensor:
        """The states (len(rows), H) of user rows ``rows`` after their first ``hist_len[row]``
        items (no gradients; float32, on the run's device)."""
        cfg = self.mcfg
        seq, pos = eval_inputs(self.view.items, self.starts[rows], hist_len[rows], cfg.max_len,
                               cfg.backbone, self.ds.num_items + 1)
        t = to_tensors(self.device, seq=seq, pos=pos)
        with torch.no_grad(), self._autocast():
            return self.model.user_states_grouped(t["seq"], t["pos"])

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16,
                              enabled=self.device.type == "cuda" and self.tcfg.amp)

    def evaluate(self, split: str, protocol: str, epoch: int = 0, topk: int = 0
                 ) -> tuple[np.ndarray, ...]:
        """Per-case ranks and the evaluated user rows for ``split`` under ``protocol``; with
        ``topk`` (full ranking only), also each case's top-``topk`` item ids."""
        lengths = self.ds.users["length"].to_numpy()
        if split == "valid":
            rows, targets = self.valid_rows, self.valid_targets
            hist = np.where(lengths >= 3, lengths - 2, lengths)   # input = the training part
        else:
            rows, targets = self.test_rows, self.test_targets
            hist = np.maximum(lengths - 1, 0)                     # input = all but the target
        self.model.eval()
        with torch.no_grad():
            if protocol == "full":
                if self.world > 1:      # each rank ranks its share; gathered in order below
                    part = ddp.share(len(rows), self.rank, self.world)
                    rows, targets = rows[part], targets[part]
                # the input history's items, when they are not candidates (exclude_seen)
                seen = [self.view.items[self.starts[r]:self.starts[r] + hist[r]]
                        for r in rows] if self.exclude_seen else None
                # scores = user_states @ item table, swept in bounded blocks (never the whole
                # (batch, N + 1) score block); under the score_fn's autocast, so the ranks
                # are those full_ranking_ranks(self._score_fn(hist), ...) gives
                with self._autocast():
                    table = self.model.item_embeddings()
                    ranks = full_ranking_ranks_factored(
                        lambda r: self.user_states(r.numpy(), hist), table, rows, targets,
                        self.ds.num_items, batch_size=self.tcfg.eval_batch_size,
                        exclude=seen, ties=self.tcfg.ties, progress=self.eval_bars, topk=topk)
                if topk:
                    ranks, top = ranks
                    return ddp.gather_concat(ranks, rows, top)
                return ddp.gather_concat(ranks, rows)
            else:
                fn = self._score_fn(hist)
                # negatives avoid the user's evaluation sequence (history + target), SPEC §6
                histories = [self.view.items[self.starts[r]:self.starts[r] + hist[r] + 1]
                             for r in rows]
                rng = (np.random.default_rng([self.tcfg.seed, epoch, 1 if split == "test"
                                              else 0]) if self.tcfg.resample_negatives
                       else fixed_rng(self.tcfg.seed, split))
                ranks = sampled_ranks(fn, rows, targets, self.ds.num_items, histories,
                                      n_neg=100, rng=rng, batch_size=self.tcfg.eval_batch_size,
                                      ties=self.tcfg.ties, progress=self.eval_bars)
        return ranks, rows

    def _tails(self, rows: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whether each case's user is a tail user and its target a tail item."""
        return (self.ds.users["tail_user"].to_numpy()[rows],
                self.pop[targets] < self.ds.ts_item)

    def grouped(self, ranks: np.ndarray, rows: np.ndarray, targets: np.ndarray
                ) -> dict[str, Any]:
        return group_metrics(ranks, *self._tails(rows, targets))

    def beyond(self, top: np.ndarray, rows: np.ndarray, targets: np.ndarray
               ) -> dict[str, Any]:
        """Coverage, tail share and ARP of the top-k lists, per long-tail group."""
        return beyond_accuracy(top, group_masks(*self._tails(rows, targets)), self.pop,
                               self.pop < self.ds.ts_item, self.ds.num_items, k=BEYOND_K)

    # ---- training --------------------------------------------------------------------------
    def _chunks(self, seq: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
        """Rows grouped by history length, each group with its own crop width.

        Cropping every row to the batch's longest history wastes most of the work when
        lengths vary (beauty: mean 9, max 200). The model's output does not depend on the
        amount of left padding (see ``SequentialRecommender.encode``), so rows are grouped
        by length (``plan_chunks``) and each group is cropped to its own longest: the same
        outputs for far fewer tokens.
        """
        lengths = (seq > 0).sum(dim=1).cpu().numpy()
        return [(torch.from_numpy(idx).to(seq.device), w)
                for idx, w in plan_chunks(lengths, max_rows=self.row_chunk)]

    def _step(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        # the global batch's counts: the single-process loss is a mean over them
        totals = (int((batch["target"] > 0).sum()), len(batch["rows"]))
        if self.world > 1:
            batch = self._rank_share(batch)
        t = to_tensors(self.device, **{k: v for k, v in batch.items() if k != "rows"})
        if self.mcfg.model == "rlmrec":
            t["user_rows"] = torch.from_numpy(batch["rows"]).to(self.device)
        loss, parts = self.step_loss(t, *totals)
        return self.update(loss, parts)

    def _rank_share(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """This rank's contiguous share of a global batch's users (their teachers too)."""
        part = ddp.share(len(batch["rows"]), self.rank, self.world)
        out = {}
        for k, v in batch.items():
            if k.startswith("teacher_"):
                k_per = len(v) // max(len(batch["rows"]), 1)
                out[k] = v[part.start * k_per:part.stop * k_per]
            else:
                out[k] = v[part]
        return out

    def _loss(self, t: dict[str, torch.Tensor], n_total: int, b_total: int
              ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to back-propagate on this rank's share ``t`` of a global batch with
        ``n_total`` targets and ``b_total`` users, and each part's share of the global
        batch's loss (``parts``; summed over the ranks they are the single-process values).

        Each part is a mean over this rank's targets (users, for the self-distillation),
        weighted by this rank's share of the global count and multiplied by the world size,
        which DDP's gradient average divides out again: one process gets the plain loss.
        """
        seq, pos, target, neg = t["seq"], t["pos"], t["target"], t["neg"]
        if len(seq) == 0:   # a last batch smaller than the world: join the gradient average
            zero = sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
            parts = {"rec": 0.0, "loss": 0.0}
            if self.distill is not None:
                parts["sd"] = 0.0
            if self.mcfg.item_reg:
                parts["reg"] = 0.0
            if self.mcfg.model == "rlmrec":
                parts["align"] = 0.0
            return zero, parts
        w_rec = float((target > 0).sum()) / max(n_total, 1)
        w_sd = len(seq) / max(b_total, 1)
        with self._autocast():
            us, ps, ns, students, lasts = [], [], [], [], []
            for idx, w in self._chunks(seq):
                s, p, tg = seq[idx, -w:], pos[idx, -w:], target[idx, -w:]
                valid = tg > 0
                states = self.model.encode(s, p)
                us.append(states[valid])
                ps.append(tg[valid])
                ns.append(neg[idx, -w:][valid])
                if self.mcfg.model == "rlmrec":
                    lasts.append((idx, states[:, -1]))      # the user: its last position
                if self.distill is not None:
                    # the student: a second pass with its own dropout mask (the paper); a
                    # model without dropout would compute the same values again
                    students.append((idx, states[:, -1] if self.model.train_is_deterministic
                                     else self.model.user_state(s, p)))
            rec = self.model.rec_loss_flat(torch.cat(us), torch.cat(ps), torch.cat(ns))
            loss = w_rec * rec
            parts = {"rec": w_rec * float(rec.detach())}
            if self.distill is not None:
                student = self._in_batch_order(students, len(seq))
                if self.teacher_cache:
                    sd = self.distill.loss(student, self._teachers[t["teacher_rows"]])
                else:
                    sd = self.distill(self.model, seq, pos, t["teacher_seq"],
                                      t["teacher_pos"], student=student)
                loss = loss + self.mcfg.alpha * w_sd * sd
                parts["sd"] = w_sd * float(sd.detach())
            if lasts:
                # RLMRec-Con's alignment, in-batch (with several ranks: each its share)
                al = self.model.align_loss(self._in_batch_order(lasts, len(seq)),
                                           t["user_rows"], torch.cat([seq, target], 1))
                loss = loss + self.mcfg.rlmrec_weight / self.world * al
                parts["align"] = float(al.detach()) / self.world
            if self._melt_part is not None:
                mu, mi = self._melt_losses()
                m = self.mcfg
                loss = loss + m.melt_lambda_u * mu + m.melt_lambda_i * mi
                parts["melt_user"] = float(mu.detach())
                parts["melt_item"] = float(mi.detach())
            if self.mcfg.item_reg:
                # over the distinct items of this rank's share (not decomposable: with
                # several ranks, the mean of their values)
                reg = self.model.item_reg_loss(seq)
                loss = loss + self.mcfg.beta / self.world * reg
                parts["reg"] = float(reg.detach()) / self.world
        parts["loss"] = float(loss.detach())
        return loss * self.world, parts

    def _load_checkpoint(self) -> dict[str, Any]:
        return load_training_state(self.run_dir / "checkpoint", self.model, self.optimizer,
                                   self.rng)

    @staticmethod
    def _in_batch_order(parts: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> torch.Tensor:
        """(batch rows, values) of the length groups, put back in the batch's row order."""
        first = parts[0][1]
        out = torch.empty(n, *first.shape[1:], device=first.device, dtype=first.dtype)
        out[torch.cat([i for i, _ in parts])] = torch.cat([v for _, v in parts])
        return out

    def refresh_teachers(self, chunk: int = 8192) -> None:
        """Every user's state from its training input (the teachers' input), with the
        current weights, into the teacher cache (``teacher_cache``); under DDP each rank
        computes a share and the shares are gathered."""
        users = np.arange(len(self.view.train_len))
        if self.world > 1:
            users = users[ddp.share(len(users), self.rank, self.world)]
        was_training = self.model.training
        self.model.train(self.mcfg.teacher_dropout)
        parts = []
        try:
            with torch.no_grad(), self._autocast():
                for c0 in range(0, len(users), chunk):
                    seq, pos = self.builder.inputs(users[c0:c0 + chunk])
                    t = to_tensors(self.device, seq=seq, pos=pos)
                    parts.append(self.model.user_states_grouped(
                        t["seq"], t["pos"], max_rows=self.distill.chunk).float())
        finally:
            self.model.train(was_training)
        mine = torch.cat(parts) if parts else torch.empty(0, self.model.state_dim,
                                                          device=self.device)
        if self.world > 1:
            (mine,) = ddp.gather_concat(mine.cpu().numpy())
            mine = torch.from_numpy(mine).to(self.device)
        self._teachers = mine

    def update(self, loss: torch.Tensor, parts: dict[str, float]) -> dict[str, float]:
        """One optimiser step on ``loss``; returns ``parts`` (with the total as ``loss``
        when it is missing)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        densify_grads(self.model.parameters())
        self.optimizer.step()
        parts.setdefault("loss", float(loss.detach()))
        return parts

    def fit(self) -> dict[str, Any]:
        try:
            return self._fit()
        except BaseException:
            self._discard_failed_start()
            raise

    def _discard_failed_start(self) -> None:
        """After a failure before the first checkpoint, remove what this run wrote into a
        folder that was missing or empty (or held only a failed start), so that the next try
        is not blocked; a run with a checkpoint is kept for --resume. (Rank 0's files.)"""
        if self.rank != 0:
            return
        if not self._discard_on_failure or checkpoint_complete(self.run_dir / "checkpoint"):
            return
        if self._made_dirs and self._made_dirs[0] == self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)   # made by this process: all ours
        else:
            clear_run(self.run_dir)
        for d in self._made_dirs:            # deepest first; only while empty
            try:
                if d.exists():
                    d.rmdir()
            except OSError:
                break

    def _fit(self) -> dict[str, Any]:
        main = self.rank == 0
        ddp.barrier()        # every rank has checked the run directory before rank 0 writes
        if main:
            if self._fresh:
                clear_run(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
            write_bundle(self.run_dir, self.data_dir, self.sem_dir)  # serving: run_dir alone
        state = {"epoch": 0, "best_score": -1.0, "best_epoch": 0, "bad_epochs": 0,
                 "train_seconds": 0.0, "history": []}
        if self.resume:
            # rank 0 first: it may recover an interrupted save, which the others then read
            if main:
                state = self._load_checkpoint()
            ddp.barrier()
            if not main:
                state = self._load_checkpoint()
            if main:
                trim_train_log(self.run_dir / "train_log.csv", state["epoch"])
            self.log(f"resuming after epoch {state['epoch']}")
        # on resume, events an interrupted run logged after its checkpoint are purged, so no
        # epoch appears twice in TensorBoard
        writer = self._tensorboard(state["epoch"] + 1 if self.resume else None) if main else None
        if self.init_from is not None and not self.resume:
            self._take_backbone(self.init_from)
            state["from_run"] = str(self.init_from)
        if (self.init_from is None or self.mcfg.model == "llmesr") and \
                state.get("stage", 1) == 1:
            self._run_epochs(state, writer, self.tcfg.epochs, self.tcfg.patience)
        if self.mcfg.model == "melt":
            self._melt_stage(state, writer)
        if writer is not None:
            writer.close()
        if self.mcfg.model == "cities":
            self._cities_stage()
        return self.finish(state)

    def _run_epochs(self, state: dict[str, Any], writer, epochs: int, patience: float,
                    before_epoch=None, before_step=None) -> None:
        """Train until ``state["epoch"]`` reaches ``epochs`` or ``patience`` epochs in a row
        bring no strictly better validation NDCG@10; after each epoch the log row, the best
        weights and the checkpoint are saved. ``before_epoch(epoch, steps)`` and
        ``before_step(step)`` let a stage (MELT) prepare its own work."""
        main = self.rank == 0
        bs = self.tcfg.batch_size
        while state["epoch"] < epochs and state["bad_epochs"] < patience:
            epoch = state["epoch"] + 1
            self.model.train()
            if self.world > 1:
                # each rank its own dropout masks, the same after a resume
                torch.manual_seed(int(np.random.SeedSequence(
                    [self.tcfg.seed, epoch, self.rank]).generate_state(1)[0]))
            t0 = time.perf_counter()
            samples = self.builder.epoch_samples()
            if before_epoch is not None:
                before_epoch(epoch, -(-len(samples) // bs))
            sums: dict[str, float] = {}
            steps = 0
            bar = tqdm(range(0, len(samples), bs), desc=f"epoch {epoch}", unit="step",
                       disable=not self.progress, dynamic_ncols=True, leave=False)
            for start in bar:
                if self.teacher_cache and (steps == 0 or (
                        self.teacher_cache > 0 and steps % self.teacher_cache == 0)):
                    self.refresh_teachers()
                if before_step is not None:
                    before_step(steps)
                parts = self._step(self.builder.train_batch(samples[start:start + bs]))
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                steps += 1
                # (this rank's share of the loss, times the world: about the whole's)
                bar.set_postfix(loss=f"{sums['loss'] * self.world / steps:.4f}")
            sums = ddp.sum_floats(sums)     # each rank holds its share of each step's loss
            train_time = time.perf_counter() - t0
            t1 = time.perf_counter()
            ranks, _ = self.evaluate("valid", self.tcfg.valid_protocol, epoch)
            valid = metrics_from_ranks(ranks)
            eval_time = time.perf_counter() - t1
            score = valid["NDCG@10"]
            improved = score > state["best_score"]     # strictly better, as the paper
            if improved:
                state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
                if main:
                    save_weights(self.model, self.run_dir / "model.safetensors")
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch
            state["train_seconds"] += train_time
            row = {"epoch": epoch, **{k: round(v / max(steps, 1), 6) for k, v in sums.items()},
                   "valid_HR@10": round(valid["HR@10"], 6), "valid_NDCG@10": round(score, 6),
                   "train_seconds": round(train_time, 2), "eval_seconds": round(eval_time, 2),
                   "best": improved}
            state["history"].append(row)
            if main:
                self._append_csv(row)
            if writer is not None:
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        writer.add_scalar(k, v, epoch)
                writer.flush()
            self.log(f"epoch {epoch}: loss {row['loss']:.4f}  valid NDCG@10 {score:.4f}  "
                     f"HR@10 {valid['HR@10']:.4f}{'  *' if improved else ''}  "
                     f"({train_time:.1f} s + {eval_time:.1f} s eval)")
            if main:
                save_training_state(self.run_dir / "checkpoint", self.model, self.optimizer,
                                    state, self.rng)
            ddp.barrier()    # the checkpoint (and best weights) are on disk for every rank
            if self.on_epoch is not None:
                try:
                    self.on_epoch(epoch, valid)
                except BaseException:
                    if writer is not None:
                        writer.close()
                    raise

    # ---- MELT: stage 2 (llmesr.models.melt) ------------------------------------------------
    def _melt_stage(self, state: dict[str, Any], writer) -> None:
        """MELT's joint training on the best stage-1 backbone (or the --init-from one):
        ``melt_epochs`` epochs (all of them, or until ``melt_patience`` epochs in a row bring
        no better validation score), the best on validation kept. The epochs continue
        the run's numbering; state["stage"] = 2 marks them, so --resume continues here."""
        m, main = self.mcfg, self.rank == 0
        split = melt.split_head_tail(self.view.train_len, self.train_counts, m.melt_pareto)
        fit_wi = False
        if state.get("stage", 1) == 1:
            if not (self.run_dir / "model.safetensors").is_file():
                raise LlmesrError("melt: the backbone has no best weights to start from")
            load_weights(self.model, self.run_dir / "model.safetensors")
            if main:
                tmp = self.run_dir / ".backbone.safetensors.tmp"
                shutil.copyfile(self.run_dir / "model.safetensors", tmp)
                tmp.replace(self.run_dir / "backbone.safetensors")
            stage1 = {"epochs": state["epoch"], "best_epoch": state["best_epoch"],
                      "best_valid_NDCG@10": state["best_score"],
                      "train_seconds": round(state["train_seconds"], 2)}
            if state.get("from_run"):
                stage1["from_run"] = state["from_run"]
            state.update(stage=2, best_score=-1.0, best_epoch=0, bad_epochs=0,
                         melt={"stage1": stage1, **split.info()})
            with torch.no_grad():
                self.model.melt.user_thres.fill_(split.user_thres)
                if m.melt_wu_residual:
                    # the residual starts as the identity: f + W_U f = f
                    self.model.melt.W_U.weight.zero_()
                    self.model.melt.W_U.bias.zero_()
            fit_wi = m.melt_warm_update
            # a fresh Adam for stage 2, with the official code's betas
            self.optimizer.state.clear()
            for g in self.optimizer.param_groups:
                g["betas"] = (0.9, 0.98)
        info = state["melt"]
        self.log(f"MELT: {info['head_users']:,} head users (training length > "
                 f"{split.user_thres:g}), {info['head_items']:,} head items (count > "
                 f"{split.item_thres:g}); {m.melt_epochs} epochs"
                 + (f", stopping after {m.melt_patience} without a better validation score"
                    if m.melt_patience else ""))
        ctx = melt.ItemContexts(self.view.items, self.view.starts, self.view.train_len,
                                self.ds.num_items, self_item=m.melt_context_self)
        head_items = split.head_items[ctx.count(split.head_items) > 0]
        self._melt = _MeltData(split, ctx, head_items,
                               split.tail_items[ctx.count(split.tail_items) > 0])
        if fit_wi and m.melt_tail_update:
            self._melt_fit_wi()
        offset = info["stage1"]["epochs"]
        shares: list = []

        def before_epoch(epoch: int, steps: int) -> None:
            self._melt_epoch = epoch - offset - 1
            if m.melt_tail_update:
                self._melt_tail_update()
            users = np.array_split(self.rng.permutation(split.head_users), steps)
            items = np.array_split(self.rng.permutation(head_items), steps)
            shares[:] = list(zip(users, items))

        def before_step(step: int) -> None:
            self._melt_part = shares[step]

        try:
            self._run_epochs(state, writer, offset + m.melt_epochs,
                             m.melt_patience or float("inf"), before_epoch, before_step)
        finally:
            self._melt_part = None

    def _melt_context_means(self, ids: np.ndarray, chunk: int = 16384) -> torch.Tensor:
        """(len(ids), hidden): each item's mean over all its contexts of f(c) + W_U f(c)
        (f(c) alone with ``melt_wu_residual`` off: the official update), in eval mode and
        without gradients."""
        ctx, m, model = self._melt.contexts, self.mcfg, self.model
        idx, seg = ctx.of(ids)
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                sums = torch.zeros(len(ids), m.hidden, device=self.device)
                for c0 in range(0, len(idx), chunk):
                    seq, pos = ctx.inputs(idx[c0:c0 + chunk], m.max_len, m.backbone)
                    t = to_tensors(self.device, seq=seq, pos=pos)
                    with self._autocast():
                        f = model.user_states_grouped(t["seq"], t["pos"], raw=True)
                        z = model.melt.residual(f) if m.melt_wu_residual else f
                    sums.index_add_(0, torch.from_numpy(seg[c0:c0 + chunk]).to(self.device),
                                    z.float())
                n = torch.from_numpy(ctx.count(ids)).to(self.device).clamp_min(1)
                return sums / n[:, None].float()
        finally:
            model.train(was)

    def _melt_fit_wi(self) -> None:
        """melt_warm_update: W_I by ridge least squares from the head items' context means
        to their rows, so the first tail-item update does not use a random map."""
        head_items = self._melt.head_items
        if len(head_items) < 2:
            return
        x = self._melt_context_means(head_items)
        y = self.model.co.embedding.weight[torch.from_numpy(head_items).to(self.device)]
        with torch.no_grad():
            w = melt.ridge_fit(x.double(), y.detach().double())
            self.model.melt.W_I.weight.copy_(w[:-1].T.float())
            self.model.melt.W_I.bias.copy_(w[-1].float())

    def _melt_tail_update(self) -> None:
        """MELT: every tail item's row <- W_I(mean over its contexts of f(c) [+ W_U f(c)])."""
        tail = self._melt.tail_items
        if len(tail) == 0:
            return
        z = self._melt_context_means(tail)
        with torch.no_grad():
            self.model.co.embedding.weight[torch.from_numpy(tail).to(self.device)] = \
                self.model.melt.W_I(z)

    def _melt_losses(self) -> tuple[torch.Tensor, torch.Tensor]:
        """MELT's user- and item-branch losses on this step's head users and items."""
        split, ctx, counts = self._melt.split, self._melt.contexts, self.train_counts
        users, items = self._melt_part
        m, model, e = self.mcfg, self.model, self._melt_epoch
        zero = torch.zeros((), device=self.device)
        lu = li = zero
        if len(users):
            lens = self.view.train_len[users]
            top = max(math.ceil(split.user_thres) - 1, 1)
            r = np.minimum(self.rng.integers(1, top + 1, len(users)), lens)
            starts = self.view.starts[users]
            mask = self.ds.num_items + 1
            full = eval_inputs(self.view.items, starts, lens, m.max_len, m.backbone, mask)
            few = eval_inputs(self.view.items, starts + lens - r, r, m.max_len, m.backbone,
                              mask)
            t = to_tensors(self.device, s1=full[0], p1=full[1], s2=few[0], p2=few[1])
            f_full = model.user_states_grouped(t["s1"], t["p1"], raw=True)
            f_few = model.user_states_grouped(t["s2"], t["p2"], raw=True)
            w = melt.user_weights(lens, split.user_thres, e, m.melt_epochs, m.max_len)
            lu = melt.user_branch_loss(model.melt, f_few, f_full,
                                       torch.as_tensor(w, dtype=torch.float32,
                                                       device=self.device),
                                       m.melt_wu_residual)
        if len(items):
            idx, seg = ctx.sample(items, split.item_thres, self.rng)
            seq, pos = ctx.inputs(idx, m.max_len, m.backbone)
            t = to_tensors(self.device, seq=seq, pos=pos, seg=seg,
                           ids=np.asarray(items, dtype=np.int64))
            f = model.user_states_grouped(t["seq"], t["pos"], raw=True)
            w = melt.item_weights(counts[items], split.item_thres, e, m.melt_epochs)
            li = melt.item_branch_loss(model.melt, f, t["seg"], model.co(t["ids"]).float(),
                                       torch.as_tensor(w, dtype=torch.float32,
                                                       device=self.device))
        return lu, li

    # ---- CITIES: the post-hoc stage (llmesr.models.cities) ---------------------------------
    def _take_backbone(self, run: Path) -> None:
        """--init-from: the pretrained backbone's weights from a finished id run of the same
        dataset and architecture, as this run's best weights."""
        try:
            other = json.loads((run / "config.json").read_text())
            omcfg, _ = configs_from_dict(other["configs"])
        except FileNotFoundError:
            raise LlmesrError(f"--init-from {run}: not a run directory (no config.json)"
                              ) from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LlmesrError(f"--init-from {run}: cannot read config.json ({e})") from None
        llmesr = self.mcfg.model == "llmesr"
        if omcfg.model not in (("id", "llminit") if llmesr else ("id", self.mcfg.model)):
            raise LlmesrError(f"--init-from {run}: a {omcfg.model} run; {self.mcfg.model} "
                              "starts from " + ("an llminit or id run" if llmesr else
                                                "a plain backbone (model id)"))
        same = ("backbone", "hidden", "layers", "heads", "max_len", "causal",
                "mask_padded_keys", "gru_mask_padding")
        diff = [k for k in same if getattr(omcfg, k) != getattr(self.mcfg, k)]
        if diff:
            raise LlmesrError(f"--init-from {run}: its {', '.join(diff)} differ from this "
                              "run's; pass the same settings (e.g. --config RUN)")
        mine = sha256_file(self.data_dir / "manifest.json")
        if other.get("dataset", {}).get("manifest_sha256") != mine:
            raise LlmesrError(f"--init-from {run}: trained on another dataset (manifest "
                              "checksum differs)")
        if not (run / "model.safetensors").is_file():
            raise LlmesrError(f"--init-from {run}: no trained weights (model.safetensors)")
        # an id run has the backbone only: MELT's heads keep their initial weights, and
        # LLM-ESR's semantic tower its own
        missing = {"melt": ("melt",),
                   "llmesr": ("se", "encoder_se", "se_log_weight", "pop_gate", "log_count")
                   }.get(self.mcfg.model, ())
        load_weights(self.model, run / "model.safetensors", allow_missing=missing)
        if self.rank == 0:
            save_weights(self.model, self.run_dir / "model.safetensors")
        ddp.barrier()

    def _cities_stage(self) -> None:
        """Replace the tail items' rows of the best backbone by CITIES' inferred ones, once:
        the backbone's weights are kept as backbone.safetensors and the record as
        cities.json, so a run killed here redoes only this stage on --resume."""
        from llmesr.models import cities

        record = self.run_dir / "cities.json"
        if record.is_file():
            return
        backbone = self.run_dir / "backbone.safetensors"
        main = self.rank == 0
        if main:
            if not backbone.is_file():
                if not (self.run_dir / "model.safetensors").is_file():
                    raise LlmesrError("cities: the backbone has no best weights to start from")
                shutil.copyfile(self.run_dir / "model.safetensors",
                                backbone.with_name(".backbone.safetensors.tmp"))
                backbone.with_name(".backbone.safetensors.tmp").replace(backbone)
            load_weights(self.model, backbone)
            m = self.mcfg
            ctx = cities.Contexts.build(self.view.items, self.view.starts,
                                        self.view.train_len, self.ds.num_items)
            table = self.model.co.embedding.weight
            mask_row = table[self.model.mask_token].detach() if m.backbone == "bert4rec" \
                else None
            new, info = cities.infer_tail_items(
                table.detach(), ctx, head_count=m.cities_head_count,
                max_shots=m.cities_max_shots, epochs=m.cities_epochs,
                patience=m.cities_patience, lr=m.cities_lr, pe_fix=m.cities_pe_fix,
                restore_best=m.cities_restore_best, mask_row=mask_row, seed=self.tcfg.seed,
                match_norm=m.cities_match_norm,
                log=self.log, progress=self.progress)
            with torch.no_grad():
                table.copy_(new)
            save_weights(self.model, self.run_dir / "model.safetensors")
            write_json_atomic(record, info)
        ddp.barrier()

    def finish(self, state: dict[str, Any], protocols: tuple[str, ...] | None = None
               ) -> dict[str, Any]:
        """Reload the best weights and evaluate the test split (under ``protocols``, default
        the config's ``test_protocols``), and the validation split."""
        if (self.run_dir / "model.safetensors").is_file():
            load_weights(self.model, self.run_dir / "model.safetensors")
        metrics: dict[str, Any] = {"test": {}, "valid": {}}
        for protocol in protocols or self.tcfg.test_protocols:
            if protocol == "full":
                # a catalogue under 10 items: the lists hold all of it
                ranks, rows, top = self.evaluate("test", protocol, epoch=state["best_epoch"],
                                                 topk=min(BEYOND_K, self.ds.num_items))
                # what the top-10 lists recommend (coverage, tail share, ARP), per group
                metrics["beyond"] = {"full": self.beyond(top, rows, self.test_targets)}
            else:
                ranks, rows = self.evaluate("test", protocol, epoch=state["best_epoch"])
            metrics["test"][protocol] = self.grouped(ranks, rows, self.test_targets)
            if self.rank == 0:
                _save_npy(self.run_dir / f"ranks_test_{protocol}.npy", ranks)
        vranks, vrows = self.evaluate("valid", self.tcfg.valid_protocol, state["best_epoch"])
        metrics["valid"][self.tcfg.valid_protocol] = self.grouped(vranks, vrows,
                                                                  self.valid_targets)
        if (self.run_dir / "cities.json").is_file():
            metrics["cities"] = json.loads((self.run_dir / "cities.json").read_text())
        if state.get("from_run"):
            metrics["backbone_from"] = state["from_run"]
        if state.get("melt"):
            metrics["melt"] = state["melt"]
        metrics.update(best_epoch=state["best_epoch"], epochs=state["epoch"],
                       train_seconds=round(state["train_seconds"], 2),
                       stopped_early=state["bad_epochs"] >= self.tcfg.patience,
                       evaluation={"ties": self.tcfg.ties, "exclude_seen": self.exclude_seen,
                                   "sampled_negatives": 100,
                                   "negatives": "redrawn" if self.tcfg.resample_negatives
                                   else "fixed per seed"})
        if self.rank == 0:
            _save_npy(self.run_dir / "ranks_test_users.npy", self.test_rows + 1)
            write_json_atomic(self.run_dir / "metrics.json", metrics)
        ddp.barrier()
        return metrics

    # ---- files -----------------------------------------------------------------------------
    def _write_config(self) -> None:
        cfg = {
            "kind": "llmesr-run", "format_version": 1, **provenance(),
            "configs": configs_to_dict(self.mcfg, self.tcfg),
            "dataset": {"path": str(self.data_dir.resolve()), "name": self.ds.manifest["name"],
                        "manifest_sha256": sha256_file(self.data_dir / "manifest.json"),
                        "num_items": self.ds.num_items, "num_users": self.ds.num_users},
            "embeddings": None if self.sem_dir is None else {
                "path": str(self.sem_dir.resolve()),
                "manifest_sha256": sha256_file(self.sem_dir / "manifest.json")},
            "llm_dim": self.llm_dim, "pca_dim": self.pca_dim,
            "device": str(self.device), "torch": torch.__version__,
        }
        write_json_atomic(self.run_dir / "config.json", cfg)
        from llmesr.models.config import write_config_yaml
        write_config_yaml(self.run_dir / "config.yaml", self.mcfg, self.tcfg,
                          "this run's settings; 'llmesr train DATA --config RUN_DIR' reuses them")

    def _append_csv(self, row: dict[str, Any]) -> None:
        path = self.run_dir / "train_log.csv"
        fields = ["epoch", "loss", "rec", "sd", "reg", "align", "melt_user", "melt_item",
                  "valid_HR@10",
                  "valid_NDCG@10", "train_seconds", "eval_seconds", "best"]
        new = not path.exists()
        if not new:      # a resumed run keeps its file's columns
            with open(path, newline="") as f:
                fields = next(csv.reader(f), None) or fields
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    def _tensorboard(self, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step)


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[SequentialRecommender,
                                                                 dict[str, Any]]:
    """Rebuild a trained model from its run directory alone."""
    run_dir = Path(run_dir)
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LlmesrError(f"{run_dir} is not a readable run directory ({e})") from None
    mcfg, _ = configs_from_dict(cfg["configs"])
    n = cfg["dataset"]["num_items"]
    llm = np.zeros((n, cfg["llm_dim"]), np.float32) if cfg["llm_dim"] else None
    pca = np.zeros((n, cfg["pca_dim"]), np.float32) if cfg["pca_dim"] else None
    model = SequentialRecommender(mcfg, n, llm, pca)
    load_weights(model, run_dir / "model.safetensors")
    return model.to(resolve_device(device)).eval(), cfg


def run_trainer(run_dir: str | Path, *, data_dir: str | Path | None = None,
                device: str | None = None, exclude_seen: bool | None = None,
                log=print, load: bool = True) -> Trainer:
    """A finished (or interrupted) run's :class:`Trainer` in evaluation mode, its best
    weights loaded (``load=False``: not yet, for a caller that goes on to
    :meth:`Trainer.finish`, which loads them): what ``llmesr evaluate`` and the diagnosis
    benchmarks start from.
    ``data_dir`` replaces the dataset path recorded in config.json (a moved dataset); it must
    be the same dataset (manifest checksum)."""
    run_dir = Path(run_dir)
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
        mcfg, tcfg = configs_from_dict(cfg["configs"])
    except FileNotFoundError:
        raise LlmesrError(f"{run_dir} is not a run directory (no config.json)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LlmesrError(f"cannot read {run_dir / 'config.json'} ({e})") from None
    if not (run_dir / "model.safetensors").is_file():
        raise LlmesrError(f"{run_dir} has no trained weights (model.safetensors); train it first")
    data = Path(data_dir) if data_dir else Path(cfg["dataset"]["path"])
    if not (data / "manifest.json").is_file():
        raise LlmesrError(f"the run's dataset is not at {data}; pass --data DIR")
    if sha256_file(data / "manifest.json") != cfg["dataset"].get("manifest_sha256"):
        raise LlmesrError(f"the dataset at {data} is not the one {run_dir} was trained on "
                          "(manifest checksum differs)")
    emb = cfg.get("embeddings")
    embeddings = None
    if emb:
        embeddings = emb["path"] if Path(emb["path"]).is_dir() else \
            str(data / "semantic" / Path(emb["path"]).name)
    if device:
        tcfg.device = device
    if exclude_seen is not None:
        tcfg.exclude_seen = exclude_seen
    trainer = Trainer(data, mcfg, tcfg, run_dir, embeddings=embeddings, progress=False,
                      log=log, evaluate_only=True)
    if load:
        load_weights(trainer.model, run_dir / "model.safetensors")
        trainer.model.eval()
    return trainer


def evaluate_run(run_dir: str | Path, protocols: tuple[str, ...] | None = None, *,
                 data_dir: str | Path | None = None, device: str | None = None,
                 exclude_seen: bool | None = None, log=print,
                 progress: bool = False) -> dict[str, Any]:
    """Recompute a run's test (and validation) metrics and per-user ranks from its best weights.

    ``protocols`` (default: the run's ``test_protocols``) are evaluated again; the metrics.json
    entries of other protocols are kept. ``data_dir`` replaces the dataset path recorded in
    config.json (a moved dataset); it must be the same dataset (manifest checksum).
    """
    run_dir = Path(run_dir)
    for p in protocols or ():
        if p not in ("full", "sampled"):
            raise LlmesrError(f"unknown protocol {p!r}; use full or sampled")
    trainer = run_trainer(run_dir, data_dir=data_dir, device=device,
                          exclude_seen=exclude_seen, log=log, load=False)
    tcfg = trainer.tcfg
    old: dict[str, Any] = {}
    if (run_dir / "metrics.json").is_file():
        old = json.loads((run_dir / "metrics.json").read_text())
        state = {"best_epoch": old.get("best_epoch", 0), "epoch": old.get("epochs", 0),
                 "train_seconds": old.get("train_seconds", 0.0),
                 "bad_epochs": tcfg.patience if old.get("stopped_early") else 0}
    elif (run_dir / "checkpoint" / "state.json").is_file():   # an interrupted run
        saved = json.loads((run_dir / "checkpoint" / "state.json").read_text())
        state = {k: saved[k] for k in ("best_epoch", "epoch", "train_seconds", "bad_epochs")}
    else:
        state = {"best_epoch": 0, "epoch": 0, "train_seconds": 0.0, "bad_epochs": 0}
    trainer.eval_bars = progress       # a bar per protocol and split, with time left
    metrics = trainer.finish(state, protocols)
    kept = {p: r for p, r in old.get("test", {}).items() if p not in metrics["test"]}
    if kept:
        metrics["test"] = {**kept, **metrics["test"]}
        if "beyond" in old and "beyond" not in metrics:
            metrics["beyond"] = old["beyond"]
        write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics
