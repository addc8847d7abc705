"""The public Python API: a dataset from DataFrames or files, training, and a trained run.

::

    import llmesr

    ds = llmesr.Dataset.from_frames(interactions, items, user="user_id", item="item_id",
                                    time="timestamp", text=["title", "genres"], out="data/mine")
    ds.embed()                                   # bundled encoder, cached by content
    run = llmesr.train(ds, model="llmesr", backbone="sasrec", out="runs/mine", epochs=20)
    run.metrics()                                # DataFrame: (protocol, group) x metric
    run.recommend(["i1", "i7"], k=10)            # DataFrame: rank, item_id, score, title

Everything stays on disk, as with the command line: a :class:`Dataset` is a dataset directory
(``llmesr prepare``), :meth:`Dataset.embed` writes ``DATA_DIR/semantic/<encoder>/``
(``llmesr embed``), :func:`train` writes a run directory (``llmesr train``) and a :class:`Run`
reads one (``llmesr evaluate``, ``recommend``). The ``llmesr`` command calls these functions,
so a setting means the same in both. Mistakes in the input raise
:class:`llmesr.LlmesrError` with a one-line message that names what is wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time as _time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmesr.config import LongTailConfig, PrepareConfig, coerce, with_overrides
from llmesr.errors import DataFormatError, EmptyResultError, LlmesrError

if TYPE_CHECKING:
    import pandas as pd

PathLike = str | os.PathLike

__all__ = ["Dataset", "Run", "load_run", "train"]


def _logger(progress: bool, log: Callable[..., Any] | None) -> Callable[..., Any]:
    if log is not None:
        return log
    return print if progress else (lambda *a, **k: None)


def _split_prepare_settings(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``key=value`` settings -> (PrepareConfig overrides, LongTailConfig overrides).

    Strings (from the command line) are converted to the field's type."""
    prep_fields = {f.name for f in dataclasses.fields(PrepareConfig)}
    lt_fields = {f.name for f in dataclasses.fields(LongTailConfig)}
    prep, lt = {}, {}
    for key, value in settings.items():
        if key in prep_fields:
            prep[key] = coerce(PrepareConfig, key, value) if isinstance(value, str) else value
        elif key in lt_fields:
            lt[key] = coerce(LongTailConfig, key, value) if isinstance(value, str) else value
        else:
            raise LlmesrError(f"unknown preparation setting '{key}'; settings: "
                              f"{', '.join(sorted(prep_fields | lt_fields))}")
    return prep, lt


def _frame_digest(df: pd.DataFrame) -> str | None:
    """sha256 of a frame's content (None when a column holds unhashable values, e.g. lists)."""
    import pandas as pd

    try:
        hashed = pd.util.hash_pandas_object(df, index=False).to_numpy()
    except TypeError:
        return None
    h = hashlib.sha256(hashed.tobytes())
    h.update(repr(list(df.columns)).encode())
    return h.hexdigest()


def _require_frame(obj: Any, what: str) -> pd.DataFrame:
    import pandas as pd

    if not isinstance(obj, pd.DataFrame):
        raise LlmesrError(f"{what} must be a pandas DataFrame, not {type(obj).__name__}; to "
                          "read files use llmesr.Dataset.prepare('table', ...)")
    return obj


# The table reader's checks, applied to DataFrames; errors name "the interactions DataFrame
# row N" (1-based position) where the reader names file:line.
_INTER, _ITEMS = "interactions DataFrame", "items DataFrame"


def _check_frame_columns(df: pd.DataFrame, label: str, wanted: dict[str, str | None]) -> None:
    from llmesr.data.readers.table import _check_columns

    _check_columns(df, label, wanted)
    for role, col in wanted.items():
        if col is not None and int((df.columns == col).sum()) > 1:
            raise DataFormatError(f"{label}: column '{col}' (the {role} column) appears "
                                  f"{int((df.columns == col).sum())} times; rename the others")


def _frame_interactions(df: pd.DataFrame, *, user: str, item: str, time: str | None,
                        rating: str | None, time_unit: str) -> pd.DataFrame:
    """-> ``user``, ``item`` (str), ``timestamp`` (int64 s), ``rating`` (float64), row order."""
    import numpy as np
    import pandas as pd

    from llmesr.data.readers.table import _ids, _row_label, parse_times

    _check_frame_columns(df, _INTER, {"user": user, "item": item, "time": time,
                                      "rating": rating})
    df = df.reset_index(drop=True)
    inter = pd.DataFrame({"user": _ids(df[user], _INTER, "frame", "user id"),
                          "item": _ids(df[item], _INTER, "frame", "item id")})
    if time is not None:
        inter["timestamp"] = parse_times(df[time], _INTER, "frame", time_unit)
    if rating is not None:
        values = pd.to_numeric(df[rating], errors="coerce")
        bad = ~np.isfinite(values.to_numpy(dtype=np.float64))
        if bad.any():
            row = int(bad.nonzero()[0][0])
            raise DataFormatError(f"{_row_label(_INTER, 'frame', row)}: rating "
                                  f"{df[rating].iloc[row]!r} is not a number")
        inter["rating"] = values.to_numpy(dtype=np.float64)
    return inter


def _frame_items(df: pd.DataFrame, item_id: str, text: list[str] | None
                 ) -> tuple[pd.DataFrame, list[str]]:
    """-> (the items with an ``item`` column (str ids, unique), the text column names).
    ``text=None``: every string column but the id."""
    import pandas as pd

    from llmesr.data.readers.table import _ids, _row_label

    _check_frame_columns(df, _ITEMS, {"item id": item_id})
    if text is None:
        text = [str(c) for c in df.columns if c != item_id
                and (df[c].dtype == object or pd.api.types.is_string_dtype(df[c]))]
    _check_frame_columns(df, _ITEMS, {f"text {f!r}": f for f in text})
    out = df.rename(columns={item_id: "item"}).reset_index(drop=True)   # attributes kept
    out["item"] = _ids(out["item"], _ITEMS, "frame", "item id")
    dup = out["item"].duplicated().to_numpy()
    if dup.any():
        row = int(dup.nonzero()[0][0])
        raise DataFormatError(f"{_row_label(_ITEMS, 'frame', row)}: item "
                              f"'{out['item'].iloc[row]}' appears twice")
    out = out.astype(object)
    return out.where(out.notna(), None), list(text)


class Dataset:
    """A prepared dataset directory: histories in time order, the leave-one-out split,
    long-tail groups, item texts, and (after :meth:`embed`) the LLM embeddings.

    Make one with :meth:`from_frames` (pandas DataFrames), :meth:`prepare` (files or a named
    dataset, as ``llmesr prepare``) or :meth:`load` (a directory prepared before). A Dataset
    can be passed wherever a path is expected (``os.fspath(ds)`` is its directory).
    """

    def __init__(self, path: PathLike):
        from llmesr.data.artifact import load_dataset

        self.path = Path(path)
        self._data = load_dataset(self.path)

    # ---- making one --------------------------------------------------------------------------
    @classmethod
    def load(cls, path: PathLike, *, verify: bool = False) -> "Dataset":
        """Open a prepared dataset directory; ``verify`` also checks every file's sha256."""
        if verify:
            from llmesr.data.artifact import load_dataset

            load_dataset(path, verify=True)
        return cls(path)

    @classmethod
    def prepare(cls, name: str, out: PathLike, *, source: PathLike | None = None,
                items: PathLike | None = None, options: Mapping[str, Any] | None = None,
                download: bool = False, cache_dir: PathLike | None = None,
                overwrite: bool = False, progress: bool = True,
                log: Callable[..., Any] | None = None, **settings: Any) -> "Dataset":
        """Prepare a named dataset or files in a known format into ``out`` (``llmesr prepare``).

        Args:
            name: a named dataset (``llmesr datasets``: ``beauty-s3rec``, ``ml-100k``, ...) or
                a format (``table``, ``recbole``, ``amazon2023``, ...).
            source / items: the input file or folder, and the item-text file when it is not
                found from ``source``.
            options: reader options (``-o key=value``), e.g. ``{"user_col": "userId"}``.
            download: fetch a raw-source dataset's files first (into ``cache_dir``).
            settings: preprocessing (:class:`llmesr.config.PrepareConfig`: ``kcore_user``,
                ``min_rating``, ``order``, ...) and long-tail settings
                (:class:`llmesr.config.LongTailConfig`: ``ts_user``, ``ts_item``, ...).
        """
        from llmesr.data.pipeline import prepare as prepare_files

        prep, lt = _split_prepare_settings(settings)
        if download:
            from llmesr.data.fetch import download_entry
            from llmesr.data.registry import get_entry

            entry = get_entry(name)
            if entry is None:
                raise LlmesrError("--download works with named datasets (see 'llmesr "
                                  "datasets')")
            if source is not None:
                raise LlmesrError("give either --download or --source, not both")
            source = download_entry(entry, Path(cache_dir) if cache_dir else None)
        source = None if source is None else Path(source).expanduser()
        items = None if items is None else Path(items).expanduser()
        prepare_files(name, out, source=source, items=items, reader_options=dict(options or {}),
                      settings=prep, longtail=lt, overwrite=overwrite,
                      log=_logger(progress, log))
        return cls(out)

    @classmethod
    def from_frames(cls, interactions: pd.DataFrame, items: pd.DataFrame | None = None, *,
                    out: PathLike, user: str = "user_id", item: str = "item_id",
                    time: str | None = None, rating: str | None = None,
                    text: str | Sequence[str] | None = None, item_id: str | None = None,
                    time_unit: str = "auto", name: str = "frames", overwrite: bool = False,
                    progress: bool = True, log: Callable[..., Any] | None = None,
                    **settings: Any) -> "Dataset":
        """Prepare a dataset from DataFrames into directory ``out``.

        Args:
            interactions: one row per interaction. Columns ``user`` and ``item`` hold the ids
                (any type; kept as strings), ``time`` the time (Unix seconds or milliseconds,
                datetimes, or date strings; without it, the row order is the time order),
                ``rating`` an optional number (for ``min_rating``).
            items: optional, one row per item: the id column ``item_id`` (default: the same
                name as ``item``) and the text columns ``text`` (default: every string
                column). Without it the dataset has no item text (ID-only models).
            out: the dataset directory to write (refused if it exists, unless ``overwrite``).
            time_unit: ``auto`` | ``s`` | ``ms`` | ``iso``, for a numeric or string ``time``.
            name: the dataset's name in its manifest.
            settings: preprocessing and long-tail settings, as for :meth:`prepare` (the
                default recipe: 5-core until stable, histories ordered by time, users with at
                least 3 interactions, Pareto long-tail thresholds).

        Raises :class:`LlmesrError` for a missing or repeated column, an empty frame, an
        empty id, an unparseable time or rating (naming the row, ``interactions.iloc[i]``),
        and for nothing left after filtering; nothing is written then.
        """
        from llmesr.data.pipeline import prepare_raw
        from llmesr.data.types import RawData, empty_items

        t0 = _time.perf_counter()
        say = _logger(progress, log)
        if Path(out).exists() and not overwrite:   # fail before any work
            raise LlmesrError(f"output directory already exists: {out} (pass overwrite=True to "
                              "replace it)")
        prep, lt = _split_prepare_settings(settings)
        cfg = with_overrides(PrepareConfig(), prep).validate()
        lt_cfg = with_overrides(LongTailConfig(), lt).validate()
        df = _require_frame(interactions, "interactions")
        if len(df) == 0:
            raise EmptyResultError("the interactions DataFrame has no rows")
        inter = _frame_interactions(df, user=user, item=item, time=time, rating=rating,
                                    time_unit=time_unit)
        fields: list[str] = []
        fields_asked = [text] if isinstance(text, str) else (None if text is None
                                                              else list(text))
        if items is not None:
            item_df = _require_frame(items, "items")
            if len(item_df) == 0:
                raise EmptyResultError("the items DataFrame has no rows; pass items=None for a "
                                       "dataset without item text")
            item_table, fields = _frame_items(item_df, item_id or item, fields_asked)
        else:
            if fields_asked:
                raise LlmesrError("text columns were given but no items DataFrame")
            item_table = empty_items()
        options = {"user_col": user, "item_col": item, "time_col": time, "rating_col": rating,
                   "item_id_col": item_id or item, "text_fields": fields,
                   "time_unit": time_unit}
        raw = RawData(interactions=inter, items=item_table, text_fields=fields, sources=[],
                      reader="frames", options=options).validate()
        frames = {"interactions": {"rows": len(df), "sha256": _frame_digest(inter)}}
        if items is not None:
            frames["items"] = {"rows": len(items), "sha256": _frame_digest(item_table)}
        say(f"preparing {len(df):,} interactions from DataFrames ...")
        manifest = prepare_raw(raw, out, name=name, settings=cfg, longtail=lt_cfg,
                               overwrite=overwrite, extra={
                                   "frames": frames,
                                   "timing_seconds": {"total": round(
                                       _time.perf_counter() - t0, 3)}})
        c = manifest["counts"]
        say(f"wrote {out}: {c['users']:,} users, {c['items']:,} items, "
            f"{c['interactions']:,} interactions in {_time.perf_counter() - t0:.1f} s")
        return cls(out)

    # ---- the semantic layer ------------------------------------------------------------------
    def embed(self, encoder: Any = None, *, encoder_options: Mapping[str, Any] | None = None,
              domain: str | None = None, style: str | None = None,
              fields: Mapping[str, str] | None = None, item_template: str | None = None,
              pca_dim: int = 64, neighbors: int = 100, backend: str = "exact",
              users: bool = True, cache_dir: PathLike | None = None, progress: bool = True,
              log: Callable[..., Any] | None = None) -> dict[str, Any]:
        """Embed item and user prompts, reduce the items by PCA and find similar users
        (``llmesr embed``); returns the manifest of ``DATA_DIR/semantic/<encoder>/``.

        Args:
            encoder: ``None`` (the bundled all-MiniLM-L6-v2), a path or name of a
                sentence-transformers model, ``"openai:MODEL"``, ``"hash:DIM"``, or a
                :class:`llmesr.semantic.encoders.TextEncoder`.
            encoder_options: e.g. ``{"device": "cuda", "batch_size": 128}``.
            domain / style / fields / item_template: the prompt (default: the dataset's own,
                else ``generic``/``clean``); ``fields`` maps a prompt role to a column, e.g.
                ``{"title": "name"}``.
            pca_dim, neighbors, backend: PCA size, similar users per user, and the search
                (``exact`` | ``faiss`` | ``faiss-ivf`` | ``faiss-hnsw``).

        Embeddings are cached by content (``cache_dir``, default ``DATA_DIR/semantic/.cache``):
        a rerun embeds only what changed, and an interrupted run resumes.
        """
        from llmesr.semantic.pipeline import default_prompt_config, embed

        cfg = default_prompt_config(self.manifest)
        if domain:
            cfg.domain = domain
        if style:
            cfg.style = style
        if fields:
            cfg.fields = {**cfg.fields, **dict(fields)}
        if item_template:
            cfg.item_template = item_template
        return embed(self.path, encoder=encoder, encoder_options=dict(encoder_options or {}),
                     prompt=cfg, pca_dim=pca_dim, neighbors=neighbors, backend=backend,
                     users=users, cache_dir=cache_dir, progress=progress,
                     log=_logger(progress, log))

    # ---- what it holds -----------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        """What made the dataset: inputs, settings, counts, thresholds, group sizes."""
        return self._data.manifest

    @property
    def num_users(self) -> int:
        return self._data.num_users

    @property
    def num_items(self) -> int:
        return self._data.num_items

    @property
    def users(self) -> pd.DataFrame:
        """One row per user: ``user_id`` (1..U), ``raw_id``, lengths, split targets, group."""
        return self._data.users

    @property
    def items(self) -> pd.DataFrame:
        """One row per item: ``item_id`` (1..N), ``raw_id``, popularity, tail flag, texts."""
        return self._data.item_table

    def history(self, user: Any) -> list[str]:
        """A user's whole history as raw item ids, oldest first (``user``: the raw user id)."""
        raw_users = self.users["raw_id"].astype(str)
        match = (raw_users == str(user)).to_numpy().nonzero()[0]
        if len(match) == 0:
            raise LlmesrError(f"user {user!r} is not in {self.path}")
        raw_items = self.items["raw_id"].astype(str).to_numpy()
        return raw_items[self._data.sequence(int(match[0]) + 1) - 1].tolist()

    @property
    def embeddings(self) -> list[str]:
        """The embedding folders under ``DATA_DIR/semantic/`` (the first is used by default)."""
        root = self.path / "semantic"
        return sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file()) \
            if root.is_dir() else []

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        c = self.manifest["counts"]
        return (f"Dataset({str(self.path)!r}: {c['users']:,} users, {c['items']:,} items, "
                f"{c['interactions']:,} interactions)")


# ---- training -------------------------------------------------------------------------------
def train(data: Dataset | PathLike, *, out: PathLike, model: str | None = None,
          backbone: str | None = None, preset: str | None = None,
          config: PathLike | None = None, embeddings: str | None = None,
          resume: bool = False, overwrite: bool = False, progress: bool = True,
          log: Callable[..., Any] | None = None, init_from: "Run | PathLike | None" = None,
          **settings: Any) -> "Run":
    """Train a model on a prepared dataset into run directory ``out`` (``llmesr train``).

    Args:
        data: a :class:`Dataset` or a dataset directory (embedded, for ``llminit``/``llmesr``).
        model: ``id`` | ``llminit`` | ``llmesr`` | ``rlmrec`` | ``cities`` | ``melt``
            (default ``llmesr``).
        backbone: ``sasrec`` | ``bert4rec`` | ``gru4rec`` (default ``sasrec``).
        preset: ``default`` (bugs fixed) | ``paper`` (the original code's behaviour).
        config: a YAML or JSON file of settings, flat or under ``model:`` and ``train:``
            (a run directory: its config), as ``llmesr train --config``; the keyword
            arguments override it, and ``model``, ``backbone`` and ``preset`` default to the
            file's.
        embeddings: the folder under ``DATA_DIR/semantic/`` (default: the first).
        resume: continue an interrupted run; ``overwrite``: start ``out`` again.
        init_from: ``cities`` and ``melt``: a finished ``id`` run (a :class:`Run` or its
            directory) whose weights are the backbone, instead of training it
            (``--init-from``). ``llmesr``: a finished ``llminit`` or ``id`` run whose
            weights start the collaborative tower (kept as they are with
            ``freeze_co=True``).
        settings: any field of :class:`llmesr.models.config.ModelConfig` or
            :class:`llmesr.models.config.TrainConfig`, e.g. ``epochs=20, alpha=0,
            max_len=50, patience=5, seed=43``.

    Training stops early on validation NDCG@10, keeps the best weights and evaluates the test
    split under both protocols. Returns the :class:`Run`.
    """
    from llmesr.models.config import build_configs
    from llmesr.training.trainer import Trainer

    # the same layers as `llmesr train`: preset, then the config file, then the keywords
    mcfg, tcfg = build_configs(preset, backbone, model, settings, config=config)
    if isinstance(init_from, Run):
        init_from = init_from.path
    trainer = Trainer(os.fspath(data), mcfg, tcfg, out, embeddings=embeddings, resume=resume,
                      overwrite=overwrite, progress=progress, log=_logger(progress, log),
                      init_from=init_from)
    trainer.fit()
    return Run(out)


# ---- a trained run --------------------------------------------------------------------------
class Run:
    """A run directory written by :func:`train` (or ``llmesr train``)."""

    def __init__(self, path: PathLike, *, device: str = "cpu"):
        import json

        self.path = Path(path)
        self.device = device
        cfg_path = self.path / "config.json"
        if not cfg_path.is_file():
            raise LlmesrError(f"{self.path} is not a run directory (no config.json)")
        try:
            self.config: dict[str, Any] = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise LlmesrError(f"cannot read {cfg_path} ({e})") from None
        self._recommender = None

    # ---- results -----------------------------------------------------------------------------
    @property
    def raw_metrics(self) -> dict[str, Any]:
        """``metrics.json`` as a dict (test and validation metrics, epochs, timings)."""
        import json

        path = self.path / "metrics.json"
        if not path.is_file():
            raise LlmesrError(f"{self.path} has no metrics.json (training did not finish); "
                              "resume it with llmesr.train(..., resume=True)")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise LlmesrError(f"cannot read {path} ({e})") from None

    def metrics(self, split: str = "test") -> pd.DataFrame:
        """The metrics as a DataFrame: one row per (protocol, group), one column per metric
        (HR@k, NDCG@k, MRR@k for k = 5, 10, 20, and MRR) plus ``count``, the group's number of
        test cases.

        Protocols: ``full`` (every item is a candidate) and ``sampled`` (100 negatives);
        groups: ``overall``, ``tail_item``, ``head_item``, ``tail_user``, ``head_user``.
        ``split="valid"`` gives the best epoch's validation metrics.
        ``.stack()`` gives the long form, protocol x group x metric.
        """
        import pandas as pd

        if split not in ("test", "valid"):
            raise LlmesrError(f"split must be 'test' or 'valid', not {split!r}")
        results = self.raw_metrics.get(split, {})
        rows, index = [], []
        for protocol, res in results.items():
            for group, values in res.items():
                if group == "counts":       # the same numbers as each group's "count"
                    continue
                rows.append({k: (float("nan") if v is None else v) for k, v in values.items()})
                index.append((protocol, group))
        return pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(
            index, names=["protocol", "group"]))

    def history(self) -> pd.DataFrame:
        """The training log: one row per epoch (losses, validation HR@10 / NDCG@10, times)."""
        import pandas as pd

        path = self.path / "train_log.csv"
        if not path.is_file():
            raise LlmesrError(f"{self.path} has no train_log.csv")
        return pd.read_csv(path)

    def evaluate(self, protocols: str | Sequence[str] = ("full", "sampled"), *,
                 data: PathLike | None = None, exclude_seen: bool | None = None,
                 device: str | None = None) -> pd.DataFrame:
        """Evaluate the best weights again (``llmesr evaluate``): rewrites ``metrics.json``
        and the per-user ranks; returns :meth:`metrics`.

        ``protocols``: ``"full"``, ``"sampled"`` or both; ``data``: the dataset, if it moved;
        ``exclude_seen``: leave the history's items out of the full ranking (default: as
        trained)."""
        from llmesr.training.trainer import evaluate_run

        if isinstance(protocols, str):
            protocols = ("full", "sampled") if protocols == "both" else (protocols,)
        evaluate_run(self.path, tuple(protocols), data_dir=None if data is None
                     else os.fspath(data), device=device, exclude_seen=exclude_seen,
                     log=lambda *a, **k: None)
        return self.metrics()

    # ---- recommending ------------------------------------------------------------------------
    @property
    def recommender(self):
        """The serving :class:`llmesr.serving.Recommender` for this run (loaded once):
        ``recommend_batch``, ``add_items`` (cold start), ``item``."""
        if self._recommender is None:
            from llmesr.serving import Recommender

            self._recommender = Recommender.load(self.path, device=self.device)
        return self._recommender

    def recommend(self, history: Sequence[Any] | Mapping[Any, Sequence[Any]], k: int = 10, *,
                  exclude_seen: bool = True, new_item_slots: int = 0) -> pd.DataFrame:
        """Top-``k`` items for a history of raw item ids, oldest first.

        Returns a DataFrame with columns ``rank`` (1..k), ``item_id``, ``score``, ``title``.
        Ids the run does not know are left out and listed in ``df.attrs["unknown"]``; a history
        with none known gets the most popular items (``df.attrs["fallback"] ==
        "popularity"``). Several histories at once: a mapping ``{user: history}`` or a list of
        histories gives one frame with a ``user`` column first (the key, or the position),
        scored in one batch.
        """
        import pandas as pd

        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise LlmesrError(f"k must be a positive integer, not {k!r}")
        if isinstance(history, (str, bytes)):
            raise LlmesrError("history is a list of item ids, not one string")
        if isinstance(history, Mapping):
            users, histories = list(history.keys()), [list(h) for h in history.values()]
            batch = True
        else:
            history = list(history)
            batch = bool(history) and all(isinstance(h, (list, tuple)) for h in history)
            users = list(range(len(history))) if batch else [None]
            histories = [list(h) for h in history] if batch else [history]
        results = self.recommender.recommend_batch(histories, k, exclude_seen, new_item_slots)
        frames = []
        for user, r in zip(users, results):
            f = pd.DataFrame({"rank": range(1, len(r.ids) + 1), "item_id": r.ids,
                              "score": r.scores, "title": r.titles})
            if batch:
                f.insert(0, "user", user)
            frames.append(f)
        df = pd.concat(frames, ignore_index=True)
        if batch:
            df.attrs["unknown"] = {u: r.unknown for u, r in zip(users, results) if r.unknown}
            df.attrs["fallback"] = {u: r.fallback for u, r in zip(users, results)
                                    if r.fallback}
        else:
            df.attrs["unknown"] = results[0].unknown
            df.attrs["fallback"] = results[0].fallback
        return df

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        m = self.config.get("configs", {}).get("model", {})
        return f"Run({str(self.path)!r}: {m.get('model')} / {m.get('backbone')})"


def load_run(path: PathLike, *, device: str = "cpu") -> Run:
    """Open a run directory written by :func:`train` or ``llmesr train``."""
    return Run(path, device=device)
