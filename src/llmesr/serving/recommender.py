"""Recommend from a trained run, and add items to it by text (cold start).

::

    from llmesr.serving import Recommender

    rec = Recommender.load("runs/llmesr")
    r = rec.recommend(["B0009RF9DW", "B000FOI48G"], k=10)
    r.ids, r.scores, r.titles, r.unknown
    rec.add_items([{"id": "NEW-1", "title": "Argan oil shampoo, 250 ml"}])

Ids are the source data's raw item ids. A history is in chronological order; ids the run does
not know are reported in ``unknown`` and left out, never mapped to something else. A history
with no known item gets the most popular items, flagged ``fallback="popularity"``.

Cold start: an item that was never trained on still has a text, hence an LLM embedding. Its
semantic embedding is that vector through the trained adapter; its collaborative embedding is
the PCA projection that initialised the collaborative table (``collaborative="pca"``, the
default), or the similarity-weighted mean of the trained collaborative rows of the 10 trained
items closest to it in LLM space (``"neighbors"``), or a least-squares map from LLM embeddings
to the trained collaborative table (``"mapped"``), or zero (``"zero"``). A model ranks items
it never trained on far below trained ones, so ``new_item_slots`` keeps some of the k places
for added items (see :meth:`Recommender.recommend`). Added items are saved in
``RUN_DIR/added_items/`` and come back on every load. The folder is replaced crash-safely
(:func:`llmesr.training.checkpoint.replace_directory`): whatever instant a kill hits, the next
load or ``add_items`` finds every item added before it, and the items of the interrupted call
either all or not at all. Processes that add items to the same run at once (``llmesr serve``
and ``llmesr add-items``) take turns through a lock, and each keeps the other's items.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from llmesr.data.io import write_json_atomic
from llmesr.errors import LlmesrError
from llmesr.semantic.prompts import PromptBuilder, PromptConfig, resolve_columns
from llmesr.serving.bundle import Bundle, load_bundle
from llmesr.training.batches import eval_inputs
from llmesr.training.checkpoint import folder_lock, recover_directory, replace_directory
from llmesr.training.trainer import load_run, resolve_device

ADDED = "added_items"
COLLABORATIVE = ("pca", "neighbors", "mapped", "zero")
#: trained items averaged by the "neighbors" rule
NEIGHBORS = 10
_RESERVED = ("id", "text", "embedding")


class ItemExistsError(LlmesrError):
    """An added item's id is already in the run (trained or added)."""


class ColdStartUnavailable(LlmesrError):
    """The run's model cannot place new items (an ID-only model)."""


class ItemsNotSaved(LlmesrError):
    """The added items could not be written to the run directory (disk full, read-only, no
    permission); nothing was added."""


@dataclass
class Recommendation:
    """Top-k for one history. ``used`` counts the history's known items that were used (the
    model reads at most ``max_len`` of them); ``fallback`` is ``"popularity"`` when none was
    known."""

    ids: list[str]
    scores: list[float]
    titles: list[str | None]
    unknown: list[str] = field(default_factory=list)
    used: int = 0
    fallback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"items": [{"id": i, "score": s, "title": t}
                          for i, s, t in zip(self.ids, self.scores, self.titles)],
                "unknown": self.unknown, "used": self.used, "fallback": self.fallback}


def check_run_config(run_dir: Path) -> dict[str, Any]:
    """``run_dir/config.json``, checked to be one that 'llmesr train' wrote: one clear error
    for a file that is empty, truncated, not UTF-8, not JSON or missing its fields."""
    from llmesr.models.config import configs_from_dict

    f = Path(run_dir) / "config.json"
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:        # UnicodeDecodeError is a ValueError
        raise LlmesrError(f"{f} is unreadable ({e}); it is damaged, or not the file "
                          "'llmesr train' writes") from None
    broken = None
    if not isinstance(cfg, dict):
        broken = "it is not a JSON object"
    elif not isinstance(cfg.get("configs"), dict):
        broken = "it has no 'configs' section"
    elif not isinstance(cfg.get("dataset"), dict):
        broken = "it has no 'dataset' section"
    else:
        n = cfg["dataset"].get("num_items")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            broken = f"dataset.num_items is {n!r}, not a positive integer"
        for key in ("llm_dim", "pca_dim"):
            v = cfg.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                broken = f"{key} is {v!r}, not a positive integer or null"
    if broken is None:
        try:
            configs_from_dict(cfg["configs"])
        except LlmesrError as e:
            broken = f"its settings are invalid: {e}"
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            broken = f"its settings are invalid ({type(e).__name__}: {e})"
    if broken:
        raise LlmesrError(f"{f} is not a usable run config: {broken}; it is damaged, or not "
                          "the file 'llmesr train' writes")
    return cfg


def _raw(value: Any) -> str:
    """A raw id as the item table stores it (a string); ints are accepted as their digits."""
    if isinstance(value, bool) or not isinstance(value, (str, int, np.integer)):
        raise LlmesrError(f"item ids are strings (or integers), got {type(value).__name__} "
                          f"{value!r}")
    text = str(value)
    if not is_unicode(text):
        raise LlmesrError(f"item id {text!r} is not valid Unicode text (it holds a lone "
                          "surrogate, such as an escaped \\ud800 alone, or undecodable bytes)")
    return text


def is_unicode(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (no lone surrogates: JSON's "\\ud800", or bytes
    that were not UTF-8 in a command-line argument)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(value: Any, where: str) -> None:
    """Refuse strings (also inside lists) that are not valid Unicode."""
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, str) and not is_unicode(v):
            raise LlmesrError(f"{where} is not valid Unicode text ({v!r} holds a lone "
                              "surrogate)")


class Recommender:
    """A trained run, ready to recommend. Thread-safe: calls are serialised by a lock."""

    def __init__(self, run_dir: Path, model, config: dict[str, Any], bundle: Bundle,
                 device: torch.device):
        self.run_dir = run_dir
        self.model = model
        self.config = config
        self.bundle = bundle
        self.device = device
        self.mcfg = model.cfg
        self.num_trained = model.num_items
        self._lock = threading.RLock()
        self._encoder = None
        self._mapping: torch.Tensor | None = None
        items = bundle.items
        if len(items) != self.num_trained:
            raise LlmesrError(f"{bundle.folder} lists {len(items)} items but the model has "
                              f"{self.num_trained}; the bundle belongs to another run")
        # model ids: 0 padding, 1..N trained items, N + 1 the mask token, N + 2... added items
        self._raw = [""] + items["raw_id"].astype(str).tolist() + [""]
        self._titles = [None] + self._title_column(items) + [None]
        self._popularity = np.concatenate([[0], items["popularity"].to_numpy(np.float64), [0]]) \
            if "popularity" in items.columns else np.zeros(self.num_trained + 2)
        self._index = {r: i for i, r in enumerate(self._raw) if r}
        self._trained_ids = frozenset(self._index)
        #: every added item in model-row order (saved or not), for :meth:`item`
        self._rows = pd.DataFrame()
        with folder_lock(self.run_dir / ADDED):
            #: the items saved in RUN_DIR/added_items/, as last read or written
            self._added = self._read_added()
        if self._added is not None:
            self._append(self._added["llm"], self._added["items"], self._added["co"])
        self._refresh()

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, run_dir: str | Path, *, device: str = "cpu",
             data_dir: str | Path | None = None) -> "Recommender":
        """Load a run directory (config.json, model.safetensors, bundle/, added_items/).

        ``data_dir`` is needed only once, for a run trained before llmesr wrote bundles, when
        its dataset has moved."""
        run_dir = Path(run_dir)
        if run_dir.exists() and not run_dir.is_dir():
            raise LlmesrError(f"{run_dir} is a file; give the run directory that 'llmesr train' "
                              "wrote")
        if not (run_dir / "config.json").is_file():
            raise LlmesrError(f"{run_dir} is not a run directory (no config.json)")
        if not (run_dir / "model.safetensors").is_file():
            raise LlmesrError(f"{run_dir} has no trained weights (model.safetensors); train it "
                              "first")
        check_run_config(run_dir)
        try:
            dev = resolve_device(device)
        except RuntimeError:
            raise LlmesrError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto"
                              ) from None
        try:
            model, cfg = load_run(run_dir, str(dev))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise LlmesrError(f"{run_dir / 'config.json'} does not describe a model that can be "
                              f"built ({type(e).__name__}: {e})") from None
        bundle = load_bundle(run_dir, data_dir)
        return cls(run_dir, model, cfg, bundle, dev)

    def _title_column(self, items: pd.DataFrame) -> list[str | None]:
        sem = self.bundle.semantic
        prompt = PromptConfig(**sem["prompt"]) if sem and sem.get("prompt") else PromptConfig()
        cols = [c for c in items.columns if c not in ("item_id", "raw_id", "popularity",
                                                      "tail_item")]
        try:
            col = resolve_columns(cols, prompt).get("title")
        except LlmesrError:
            col = "title" if "title" in cols else None
        if col is None:
            return [None] * len(items)
        return [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                for v in items[col].tolist()]

    # ---- properties ------------------------------------------------------------------------
    @property
    def num_items(self) -> int:
        """Items that can be recommended: trained plus added."""
        return len(self._index)

    def __contains__(self, raw_id: Any) -> bool:
        """Whether the run knows this raw item id (trained or added)."""
        return str(raw_id) in self._index

    @property
    def num_added(self) -> int:
        return self.num_items - self.num_trained

    @property
    def can_add_items(self) -> bool:
        return self.mcfg.model in ("llminit", "llmesr")   # a text-derived row to start from

    def describe(self) -> dict[str, Any]:
        m = self.mcfg
        return {"run": str(self.run_dir), "model": m.model, "backbone": m.backbone,
                "dataset": self.bundle.manifest["dataset"]["name"],
                "items": self.num_items, "trained_items": self.num_trained,
                "added_items": self.num_added, "max_len": m.max_len,
                "device": str(self.device), "cold_start": self.can_add_items}

    # ---- recommending ----------------------------------------------------------------------
    def recommend(self, history: Sequence[Any], k: int = 10, exclude_seen: bool = True,
                  new_item_slots: int = 0) -> Recommendation:
        """Top-``k`` items for one history of raw item ids (oldest first).

        ``new_item_slots``: at least this many of the ``k`` items are added (cold-start) items
        when the run has that many to offer: the best-scoring added items take the places of
        the lowest-scoring others. Scores are the model's, unchanged. Off (0) by default:
        a model ranks items it never trained on far below trained ones (see the README's
        cold-start figures), so a catalogue that wants new items seen must make room for them.
        """
        return self.recommend_batch([history], k, exclude_seen, new_item_slots)[0]

    def recommend_batch(self, histories: Sequence[Sequence[Any]], k: int | Sequence[int] = 10,
                        exclude_seen: bool | Sequence[bool] = True,
                        new_item_slots: int | Sequence[int] = 0) -> list[Recommendation]:
        """Top-k for many histories in one forward pass. ``k``, ``exclude_seen`` and
        ``new_item_slots`` (see :meth:`recommend`) may be one value or one per history. ``k``
        above the catalogue size gives the whole catalogue."""
        n = len(histories)

        def per_row(v):
            return list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v] * n

        ks, ex, slots = per_row(k), per_row(exclude_seen), per_row(new_item_slots)
        if len(ks) != n or len(ex) != n or len(slots) != n:
            raise LlmesrError("give one k, exclude_seen and new_item_slots per history, or a "
                              "single value")
        for kk in ks:
            if isinstance(kk, bool) or not isinstance(kk, (int, np.integer)) or kk < 1:
                raise LlmesrError(f"k must be a positive integer, got {kk!r}")
        for sl, kk in zip(slots, ks):
            if isinstance(sl, bool) or not isinstance(sl, (int, np.integer)) or not 0 <= sl <= kk:
                raise LlmesrError(f"new_item_slots must be an integer from 0 to k, got {sl!r}")
        for e in ex:
            if not isinstance(e, (bool, np.bool_)):
                raise LlmesrError(f"exclude_seen must be true or false, got {e!r}")
        mapped = [self._map(h) for h in histories]
        if n == 0:
            return []
        with self._lock, torch.no_grad():
            scores = self._score_rows([ids for ids, _ in mapped])
            top_k = min(max(ks), self.num_items)
            out: list[Recommendation] = [None] * n  # type: ignore[list-item]
            for i, (ids, unknown) in enumerate(mapped):
                kk = min(ks[i], self.num_items)
                s = scores[i]
                fallback = None if ids else "popularity"
                if ex[i] and ids:
                    s[torch.as_tensor(ids, dtype=torch.long)] = float("-inf")
                vals, idx = torch.topk(s, min(top_k, len(s)))
                keep = torch.isfinite(vals)
                vals, idx = vals[keep][:kk], idx[keep][:kk]
                if slots[i] and self.num_added:
                    vals, idx = self._make_room(s, vals, idx, slots[i])
                vals, idx = vals.tolist(), idx.tolist()
                out[i] = Recommendation(
                    ids=[self._raw[j] for j in idx], scores=[float(v) for v in vals],
                    titles=[self._titles[j] for j in idx], unknown=unknown,
                    used=min(len(ids), self.mcfg.max_len), fallback=fallback)
            return out

    def _make_room(self, s: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, slots: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Put the best added items into the list until it holds ``slots`` of them, in place
        of its lowest-scoring trained items; the list stays sorted by score."""
        first = self.num_trained + 2
        have = int((idx >= first).sum())
        if have >= slots:
            return vals, idx
        added = s[first:].clone()
        added[idx[idx >= first] - first] = float("-inf")      # already in the list
        best_v, best_i = torch.topk(added, min(slots - have, len(added)))
        ok = torch.isfinite(best_v)
        best_v, best_i = best_v[ok], best_i[ok] + first
        if len(best_i) == 0:
            return vals, idx
        trained = torch.nonzero(idx < first).flatten()
        drop = trained[len(trained) - min(len(best_i), len(trained)):]
        keep = torch.ones(len(idx), dtype=torch.bool)
        keep[drop] = False
        vals = torch.cat([vals[keep], best_v[:len(drop)]])
        idx = torch.cat([idx[keep], best_i[:len(drop)]])
        order = torch.argsort(vals, descending=True, stable=True)
        return vals[order], idx[order]

    def score_matrix(self, histories: Sequence[Sequence[Any]]) -> torch.Tensor:
        """(B, rows) float32 scores of every model id for each history (columns as in
        :meth:`model_id`; padding and the mask token are -inf). Histories with no known item
        get the popularity counts."""
        mapped = [self._map(h)[0] for h in histories]
        with self._lock, torch.no_grad():
            return self._score_rows(mapped)

    def _score_rows(self, mapped: list[list[int]]) -> torch.Tensor:
        """Scores for histories of model ids; an empty one gets the popularity counts."""
        known = [i for i, ids in enumerate(mapped) if ids]
        if len(known) == len(mapped):           # the usual case: no copy of the popularity row
            return self._scores(mapped)
        s = self._pop_scores.repeat(len(mapped), 1)
        if known:
            s[known] = self._scores([mapped[i] for i in known])
        return s

    def model_id(self, raw_id: Any) -> int:
        """The model's row for a raw id: 1..N trained, N + 2... added; -1 when unknown."""
        return self._index.get(_raw(raw_id), -1)

    def ranks(self, histories: Sequence[Sequence[Any]], targets: Sequence[Any],
              batch_size: int = 512, exclude_seen: bool = False) -> np.ndarray:
        """0-based rank of each target among all items (trained and added) for its history,
        ties counted against the target (the evaluation protocol's pessimistic rule); -1 when
        the target is unknown. Histories with no known item are ranked by popularity.
        ``exclude_seen``: the history's items (other than the target) are not counted, as in
        the full ranking with ``exclude_seen``."""
        if len(histories) != len(targets):
            raise LlmesrError("give one target per history")
        out = np.full(len(targets), -1, dtype=np.int64)
        for lo in range(0, len(targets), batch_size):
            hi = min(lo + batch_size, len(targets))
            mapped = [self._map(h)[0] for h in histories[lo:hi]]
            with self._lock, torch.no_grad():
                s = self._score_rows(mapped)
            for i, t in enumerate(targets[lo:hi]):
                j = self.model_id(t)
                if j >= 0:
                    ahead = s[i] >= s[i, j]
                    if exclude_seen:
                        ahead[[k for k in mapped[i] if k != j]] = False
                    out[lo + i] = int(ahead.sum()) - 1
        return out

    def _map(self, history: Iterable[Any]) -> tuple[list[int], list[str]]:
        if isinstance(history, (str, bytes)):
            raise LlmesrError("a history is a list of item ids, not one string")
        ids, unknown = [], []
        for v in history:
            raw = _raw(v)
            j = self._index.get(raw)
            if j is None:
                unknown.append(raw)
            else:
                ids.append(j)
        return ids, unknown

    def _scores(self, histories: list[list[int]]) -> torch.Tensor:
        """(B, rows) scores, -inf where an id is not an item; float32 on the CPU."""
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        flat = np.fromiter((j for h in histories for j in h), dtype=np.int64,
                           count=int(lengths.sum()))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        seq, pos = eval_inputs(flat, starts, lengths, self.mcfg.max_len, self.mcfg.backbone,
                               self.num_trained + 1)
        seq_t = torch.from_numpy(seq).to(self.device)
        pos_t = torch.from_numpy(pos).to(self.device)
        u = self.model.user_states_grouped(seq_t, pos_t)
        s = (u @ self._table.T).float().cpu()
        s[:, self._invalid] = float("-inf")
        return s

    def _refresh(self) -> None:
        """Recompute the candidate table after the item tables changed."""
        with torch.no_grad():
            self._table = self.model.item_embeddings()
        rows = self._table.shape[0]
        self._invalid = torch.tensor([0, self.num_trained + 1], dtype=torch.long)
        pop = np.zeros(rows)
        pop[:len(self._popularity)] = self._popularity
        pop_t = torch.from_numpy(pop).float()
        pop_t[self._invalid] = float("-inf")
        self._pop_scores = pop_t

    # ---- items -----------------------------------------------------------------------------
    def item(self, raw_id: Any) -> dict[str, Any]:
        """What the run knows of an item; raises :class:`KeyError` for an unknown id."""
        raw = _raw(raw_id)
        j = self._index.get(raw)
        if j is None:
            raise KeyError(raw)
        if j <= self.num_trained:
            row = self.bundle.items.iloc[j - 1]
            fields = {c: _jsonable(row[c]) for c in self.bundle.text_fields if c in row}
            return {"id": raw, "title": self._titles[j], "added": False,
                    "popularity": int(self._popularity[j]),
                    "tail_item": bool(row["tail_item"]) if "tail_item" in row else None,
                    "fields": fields}
        a = self._rows.iloc[j - self.num_trained - 2]
        return {"id": raw, "title": self._titles[j], "added": True, "popularity": 0,
                "tail_item": True, "fields": json.loads(a["fields"]), "text": a["text"],
                "added_at": a["added_at"]}

    def add_items(self, items: Sequence[dict[str, Any]], collaborative: str = "pca", *,
                  persist: bool = True) -> list[str]:
        """Make new items recommendable without retraining; returns their ids.

        Each item is a dict with ``id`` and either item fields (the run's text fields, e.g.
        ``title``), which are turned into the same prompt the training items had, or ``text``
        (the exact text to embed), or ``embedding`` (a vector from the run's encoder).
        Nothing is added unless every item is valid; the run directory is updated atomically
        before the items become visible (``persist=False``: in memory only, for experiments).
        Raises :class:`ItemExistsError` for an id the run already has, :class:`LlmesrError`
        for any other problem.
        """
        if collaborative not in COLLABORATIVE:
            raise LlmesrError(f"collaborative must be one of {', '.join(COLLABORATIVE)}")
        if not self.can_add_items:
            raise ColdStartUnavailable("this run is an ID-only model: it has no text embeddings, so it "
                              "cannot place new items; train llminit or llmesr for cold start")
        if not items:
            raise LlmesrError("no items to add")
        rows = self._validate_new(items)
        # Embedding may take seconds: done outside the lock, so recommendations go on.
        llm = self._llm_vectors(rows)
        co = self._collaborative(llm, collaborative)
        table = pd.DataFrame({
            "raw_id": [r["id"] for r in rows],
            "title": [r["title"] for r in rows],
            "text": [r["text"] for r in rows],
            "fields": [json.dumps(r["fields"], ensure_ascii=False) for r in rows],
            "collaborative": collaborative,
            "added_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        new = {"items": table, "llm": llm, "co": co}
        with self._lock, (folder_lock(self.run_dir / ADDED) if persist
                          else contextlib.nullcontext()):
            if persist:            # items another process saved meanwhile come first
                self._take_saved(self._read_added())
            taken = [r for r in table["raw_id"] if r in self._index]
            if taken:      # added by another call meanwhile
                raise ItemExistsError(f"item {taken[0]!r} already exists")
            if persist:
                merged = _concat(self._added, new)
                self._write_added(merged)   # on disk first: a failure leaves memory as it was
                self._added = merged
            self._append(llm, table, co)
            self._refresh()
            return table["raw_id"].tolist()

    def _take_saved(self, saved: dict[str, Any] | None) -> None:
        """Serve the saved items this object does not know yet (added by another process
        since it loaded the run), and remember the folder's content as the saved state."""
        if saved is None:
            return
        ids = saved["items"]["raw_id"].astype(str)
        extra = ~ids.isin(list(self._index)).to_numpy()
        if extra.any():
            part = {"items": saved["items"][extra].reset_index(drop=True),
                    "llm": saved["llm"][extra],
                    "co": None if saved["co"] is None else saved["co"][extra]}
            self._append(part["llm"], part["items"], part["co"])
            self._refresh()
        if self._added is not None:   # items saved here but no longer on disk stay saved
            mine = ~self._added["items"]["raw_id"].astype(str).isin(list(ids)).to_numpy()
            if mine.any():
                saved = _concat(saved, {"items": self._added["items"][mine],
                                        "llm": self._added["llm"][mine],
                                        "co": None if self._added["co"] is None
                                        else self._added["co"][mine]})
        self._added = saved

    def _validate_new(self, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        allowed = set(self.bundle.text_fields)
        rows, seen = [], set()
        for n, item in enumerate(items):
            where = f"item {n}"
            if not isinstance(item, dict):
                raise LlmesrError(f"{where}: an item is an object with an 'id', got "
                                  f"{type(item).__name__}")
            if "id" not in item:
                raise LlmesrError(f"{where}: 'id' is missing")
            raw = _raw(item["id"])
            where = f"item {raw!r}"
            if not raw.strip():
                raise LlmesrError(f"item {n}: 'id' is empty")
            if raw in self._index or raw in seen:
                raise ItemExistsError(f"{where} already exists")
            seen.add(raw)
            fields = {k: v for k, v in item.items() if k not in _RESERVED}
            bad = sorted(set(fields) - allowed)
            if bad:
                raise LlmesrError(f"{where}: unknown field(s) {bad}; this run's items have "
                                  f"{sorted(allowed) or 'no text fields'} (or give 'text' or "
                                  "'embedding')")
            for k, v in fields.items():
                if v is not None and not isinstance(v, (str, int, float, list)):
                    raise LlmesrError(f"{where}: field {k!r} must be text, a number or a list")
                _check_text(k, f"{where}: a field name")
                _check_text(v, f"{where}: field {k!r}")
            text = item.get("text")
            if text is not None and (not isinstance(text, str) or not text.strip()):
                raise LlmesrError(f"{where}: 'text' must be a non-empty string")
            _check_text(text, f"{where}: 'text'")
            emb = item.get("embedding")
            if emb is not None:
                emb = self._check_embedding(emb, where)
            if text is None and emb is None and not any(
                    v not in (None, "", []) for v in fields.values()):
                raise LlmesrError(f"{where} has no text: give at least one of "
                                  f"{sorted(allowed)}, 'text' or 'embedding'")
            rows.append({"id": raw, "fields": fields, "text": text, "embedding": emb})
        self._prompts(rows)
        return rows

    def _check_embedding(self, emb: Any, where: str) -> np.ndarray:
        dim = self._llm_dim()
        try:
            vec = np.asarray(emb, dtype=np.float32)
        except (TypeError, ValueError):
            raise LlmesrError(f"{where}: 'embedding' must be a list of numbers") from None
        if vec.shape != (dim,):
            raise LlmesrError(f"{where}: 'embedding' has shape {vec.shape}, this run's "
                              f"embeddings have {dim} dimensions")
        if not np.isfinite(vec).all():
            raise LlmesrError(f"{where}: 'embedding' has non-finite values")
        return vec

    def _llm_dim(self) -> int:
        dim = self.config.get("llm_dim")
        if not dim:
            raise LlmesrError("this run has no LLM embeddings")
        return int(dim)

    def _prompts(self, rows: list[dict[str, Any]]) -> None:
        """Fill each row's ``text`` (the prompt the training items' template gives) and
        ``title``."""
        sem = self.bundle.semantic or {}
        cfg = PromptConfig(**sem["prompt"]) if sem.get("prompt") else PromptConfig()
        cols = ["item_id", "raw_id", *self.bundle.text_fields]
        frame = pd.DataFrame([{**{c: None for c in cols}, **r["fields"], "raw_id": r["id"]}
                              for r in rows], columns=cols)
        builder = PromptBuilder(frame, cfg)
        titles = builder.titles()
        for r, record, title in zip(rows, frame.to_dict("records"), titles):
            r["title"] = title
            if r["text"] is None and r["embedding"] is None:
                r["text"] = builder.item_prompt(record)

    def _llm_vectors(self, rows: list[dict[str, Any]]) -> np.ndarray:
        dim = self._llm_dim()
        out = np.zeros((len(rows), dim), dtype=np.float32)
        todo = [i for i, r in enumerate(rows) if r["embedding"] is None]
        for i, r in enumerate(rows):
            if r["embedding"] is not None:
                out[i] = r["embedding"]
        if todo:
            vectors = self.encoder().encode([rows[i]["text"] for i in todo])
            if vectors.shape[1] != dim:
                raise LlmesrError(f"the encoder gives {vectors.shape[1]}-d vectors but the run "
                                  f"was trained on {dim}-d embeddings")
            out[todo] = vectors
        return out

    def encoder(self):
        """The text encoder that embedded the training items (built on first use)."""
        if self._encoder is None:
            from llmesr.semantic.encoders import encoder_from_description

            sem = self.bundle.semantic
            if not sem or not sem.get("encoder"):
                raise LlmesrError("the run records no text encoder: give new items their "
                                  "'embedding' vectors")
            self._encoder = encoder_from_description(sem["encoder"])
        return self._encoder

    def _collaborative(self, llm: np.ndarray, how: str) -> np.ndarray | None:
        """(M, hidden) collaborative rows for new items, None when the model has no ID view."""
        if self.model.co is None:
            return None
        hidden = self.mcfg.hidden
        if how == "zero":
            return np.zeros((len(llm), hidden), dtype=np.float32)
        if how == "pca":
            comps, mean = self.bundle.pca_components, self.bundle.pca_mean
            if comps is None or mean is None:
                raise LlmesrError("the run's embeddings have no PCA transform to place new "
                                  "items; use collaborative='mapped' or 'zero'")
            if comps.shape != (hidden, llm.shape[1]):
                raise LlmesrError(f"the PCA transform maps {comps.shape[1]}-d to "
                                  f"{comps.shape[0]}-d, the model needs {llm.shape[1]}-d to "
                                  f"{hidden}-d")
            return ((llm.astype(np.float64) - mean) @ comps.T.astype(np.float64)).astype(
                np.float32)
        if how == "neighbors":
            return self._neighbors(llm)
        return self._mapped(llm)

    def _trained_llm(self, what: str) -> torch.Tensor:
        if self.model.se is None:
            raise LlmesrError(f"'{what}' needs the LLM table, which only LLM-ESR models keep; "
                              "use collaborative='pca'")
        return self.model.se.llm[1:self.num_trained + 1].detach().float().cpu()

    def _neighbors(self, llm: np.ndarray, chunk: int = 256) -> np.ndarray:
        """The similarity-weighted mean of the trained collaborative rows of the
        ``NEIGHBORS`` trained items closest in LLM space (cosine)."""
        items = torch.nn.functional.normalize(self._trained_llm("neighbors"), dim=1)
        with torch.no_grad():
            co = self.model.co.all()[1:self.num_trained + 1].detach().float().cpu()
        q_all = torch.nn.functional.normalize(torch.from_numpy(llm).float(), dim=1)
        out = []
        for lo in range(0, len(q_all), chunk):
            sims, idx = torch.topk(q_all[lo:lo + chunk] @ items.T,
                                   min(NEIGHBORS, len(items)), dim=1)
            w = sims.clamp(min=1e-6)
            out.append((w[:, :, None] * co[idx]).sum(1) / w.sum(1, keepdim=True))
        return torch.cat(out).numpy()

    def _mapped(self, llm: np.ndarray) -> np.ndarray:
        """Ridge regression from [LLM embedding, 1] to the trained collaborative rows, fitted
        on the trained items (the map is fitted once per load)."""
        if self._mapping is None:
            with torch.no_grad():
                x = self._trained_llm("mapped").double()
                y = self.model.co.all()[1:self.num_trained + 1].double().cpu()
                x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
                lam = 1e-3 * float((x1 * x1).sum()) / x1.shape[1]
                gram = x1.T @ x1 + lam * torch.eye(x1.shape[1], dtype=x.dtype)
                self._mapping = torch.linalg.solve(gram, x1.T @ y)
        x = torch.from_numpy(llm).double()
        x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        return (x1 @ self._mapping).float().numpy()

    def _append(self, llm: np.ndarray, table: pd.DataFrame, co: np.ndarray | None) -> None:
        t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        new = self.model.append_items(t(llm) if self.model.se is not None else None, t(co))
        for j, (raw, title) in zip(new, zip(table["raw_id"], table["title"])):
            self._raw.append(str(raw))
            self._titles.append(None if title is None else str(title))
            self._index[str(raw)] = j
        self._rows = table.reset_index(drop=True) if self._rows.empty else pd.concat(
            [self._rows, table], ignore_index=True)

    # ---- persistence of added items ------------------------------------------------------
    def _read_added(self) -> dict[str, Any] | None:
        """The saved added items (None when there are none), after repairing the folder if a
        kill interrupted its last update. Call with :func:`folder_lock` held."""
        folder = self.run_dir / ADDED
        recover_directory(folder, complete=_added_complete, legacy=_legacy_added(folder))
        if folder.exists() and not folder.is_dir():
            raise LlmesrError(f"{folder} is a file; remove it (added items live in that "
                              "folder)")
        if not (folder / "manifest.json").is_file():
            if folder.is_dir() and any(folder.iterdir()):
                raise LlmesrError(f"{folder} has no manifest.json; it was not written by "
                                  "llmesr: remove it to serve without added items")
            return None
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            if not isinstance(manifest, dict) or manifest.get("kind") != "llmesr-added-items":
                raise ValueError("not an llmesr added-items manifest")
            items = pd.read_parquet(folder / "items.parquet")
            llm = np.load(folder / "llm.npy", allow_pickle=False)
            co = np.load(folder / "co.npy", allow_pickle=False) if (folder / "co.npy").is_file() \
                else None
            if "raw_id" not in items.columns or llm.ndim != 2 or (co is not None
                                                                  and co.ndim != 2):
                raise ValueError("unexpected columns or shapes")
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise LlmesrError(f"{folder} is corrupt ({e}); remove it to serve without the added "
                              "items") from None
        except Exception as e:  # noqa: BLE001 - pyarrow's own errors for a damaged file
            raise LlmesrError(f"{folder} is corrupt ({type(e).__name__}: {e}); remove it to "
                              "serve without the added items") from None
        if len(items) != len(llm) or (co is not None and len(co) != len(llm)):
            raise LlmesrError(f"{folder}: items.parquet and the embedding files disagree in "
                              "length; remove the folder to serve without the added items")
        if llm.shape[1] != self._llm_dim():
            raise LlmesrError(f"{folder}: {llm.shape[1]}-d embeddings, the run has "
                              f"{self._llm_dim()}-d")
        if co is not None and self.model.co is not None and co.shape[1] != self.mcfg.hidden:
            raise LlmesrError(f"{folder}: collaborative rows of {co.shape[1]} dimensions do not "
                              "fit this model; remove the folder to serve without them")
        dup = set(items["raw_id"].astype(str)) & self._trained_ids
        if dup:
            raise LlmesrError(f"{folder}: added item(s) {sorted(dup)[:3]} clash with trained ids")
        return {"items": items, "llm": llm, "co": co}

    def _write_added(self, added: dict[str, Any]) -> None:
        def fill(tmp: Path) -> None:
            added["items"].to_parquet(tmp / "items.parquet", index=False)
            np.save(tmp / "llm.npy", added["llm"])
            if added["co"] is not None:
                np.save(tmp / "co.npy", added["co"])
            write_json_atomic(tmp / "manifest.json", {      # last: marks the folder whole
                "kind": "llmesr-added-items", "format_version": 1,
                "items": len(added["items"]), "llm_dim": int(added["llm"].shape[1])})

        folder = self.run_dir / ADDED
        try:
            replace_directory(folder, fill, complete=_added_complete,
                              legacy=_legacy_added(folder))
        except OSError as e:
            raise ItemsNotSaved(f"cannot save the added items in {folder} "
                              f"({e.strerror or e}{': ' + str(e.filename) if e.filename else ''}"
                              "); nothing was added") from None


def _added_complete(folder: Path) -> bool:
    """Whether an added-items folder is whole (its manifest is written last)."""
    try:
        m = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and (folder / "items.parquet").is_file() and (
        folder / "llm.npy").is_file()


def _legacy_added(folder: Path) -> list[Path]:
    """What llmesr 0.1 left when killed while replacing ``folder``: its whole temporary
    folder (the newer content), then the hidden copy of the previous one (newest first)."""
    parent = folder.parent
    if not parent.is_dir():
        return []

    def newest(pattern: str) -> list[Path]:
        return sorted((p for p in parent.glob(pattern) if p.is_dir()),
                      key=lambda p: p.stat().st_mtime, reverse=True)

    return newest(f".{folder.name}.*.partial") + newest(f".{folder.name}.old-*")


def _concat(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    if a is None:
        return b
    return {"items": pd.concat([a["items"], b["items"]], ignore_index=True),
            "llm": np.concatenate([a["llm"], b["llm"]]),
            "co": None if a["co"] is None or b["co"] is None else np.concatenate(
                [a["co"], b["co"]])}


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return None if np.isnan(v) else float(v)
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v
