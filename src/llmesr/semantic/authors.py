"""Import the LLM-ESR authors' released embeddings (the ``*.pkl`` files next to ``inter.txt``).

For each dataset the authors released, beside ``inter.txt`` (``u i`` per line, 1-based ids):

=========================  ==============================================================
``itm_emb_np.pkl``         float (N, 1536): row ``i - 1`` is item ``i``'s ada-002 embedding
``usr_emb_np.pkl``         float (U, 1536): row ``u - 1`` is user ``u``'s embedding
``pca64_itm_emb_np.pkl``   float (N, 64): PCA of the item embeddings
``sim_user_100.pkl``       int (U, 100): 0-based rows of the 100 most similar users, best first
=========================  ==============================================================

Only ``itm_emb_np.pkl`` is required. The files are pickles, and unpickling can run arbitrary
code, so :func:`import_authors_files` refuses to touch them unless ``allow_pickle=True`` (CLI:
``--allow-pickle``). Even then they are read with :class:`NumpyOnlyUnpickler`, which resolves
only the few globals a pickled NumPy array needs and refuses everything else.

Rows are aligned with the dataset's ids, so the dataset must be the authors' ``inter.txt``
prepared with ``id_order=source`` (registry entries ``llmesr-yelp`` / ``llmesr-fashion``):
item raw ids must be exactly ``"1".."N"`` in id order (and user raw ids ``"1".."U"`` when a
user-indexed file is imported); anything else is an error, because the rows would silently
belong to other items.

Self-neighbours: the authors built ``sim_user_100`` as ``argsort(-similarity)[:, 1:101]``,
assuming column 0 is the user itself. When two users have identical embeddings that is not
guaranteed, so a row can contain its own index (and miss the duplicate's twin). The count of
such rows is recorded as ``self_in_neighbors``. With ``fix_self_neighbors=True`` (default) each
affected row drops its own index, shifts the rest left (keeping their order) and fills the
freed last slot(s) with the best remaining users by cosine similarity of ``usr_emb_np`` (the
highest-similarity users that are neither the user nor already in the row; ties go to the lower
row index), computed exactly for those rows only. That is what the authors' recipe yields when
the user sits at column 0. If ``usr_emb_np.pkl`` is absent the fix is impossible and the import
fails, asking to disable it (``fix_self_neighbors=False`` keeps the rows as released).

Output: ``DATASET/semantic/NAME/`` (default NAME ``authors-ada002``), written atomically:
``items.npy`` float32 (N, D), ``users.npy`` float32 (U, D), ``items_pca.npy`` float32 (N, d),
``neighbors.npy`` int32 (U, K) 0-based user rows, and ``manifest.json`` (written last).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from llmesr.data.artifact import SequenceDataset, load_dataset
from llmesr.data.io import atomic_directory, provenance, sha256_file, write_json_atomic
from llmesr.errors import LlmesrError

KIND = "llmesr-semantic"
FORMAT_VERSION = 1

ITEM_FILE = "itm_emb_np.pkl"
USER_FILE = "usr_emb_np.pkl"
PCA_FILE = "pca64_itm_emb_np.pkl"
SIM_FILE = "sim_user_100.pkl"
SOURCE_FILES = (ITEM_FILE, USER_FILE, PCA_FILE, SIM_FILE)

#: source file -> output file
OUTPUT_NAMES = {ITEM_FILE: "items.npy", USER_FILE: "users.npy", PCA_FILE: "items_pca.npy",
                SIM_FILE: "neighbors.npy"}

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
#: most user rows listed by id in the manifest when their self-neighbour was fixed
_MAX_LISTED_ROWS = 100

PICKLE_REFUSAL = (
    "the authors' embedding files (*.pkl) are Python pickle files, and loading a pickle can "
    "run arbitrary code on this machine; pass --allow-pickle (allow_pickle=True) only for files "
    "from a trusted source (they are then read with a restricted unpickler that accepts NumPy "
    "arrays only)")


# ---- restricted unpickling ---------------------------------------------------------------

def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` as protocol-2 NumPy pickles use it (latin-1 text to
    bytes); any other use is refused."""
    if not isinstance(obj, str) or encoding.lower().replace("_", "-") not in ("latin1",
                                                                              "latin-1"):
        raise LlmesrError(f"refused pickle global '_codecs.encode' called with encoding "
                          f"{encoding!r} (only latin-1 text for NumPy array bytes is allowed)")
    return obj.encode("latin-1", errors)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object, for every global a pickled NumPy array or scalar refers to.

    Both the NumPy 1.x (``numpy.core``) and 2.x (``numpy._core``) spellings map to the objects
    of the installed NumPy, so pickles from either version load without importing the
    deprecated ``numpy.core`` alias.
    """
    try:
        from numpy._core import multiarray as ma  # NumPy >= 2
        from numpy._core import numeric as nm
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import multiarray as ma  # type: ignore[no-redef]
        from numpy.core import numeric as nm  # type: ignore[no-redef]
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = ma._reconstruct
        table[(f"{core}.multiarray", "scalar")] = ma.scalar
        if hasattr(nm, "_frombuffer"):  # protocol >= 5 pickles of arrays
            table[(f"{core}.numeric", "_frombuffer")] = nm._frombuffer
    return table


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds NumPy arrays and nothing else.

    ``find_class`` resolves only the globals pickled ``ndarray``/``dtype``/NumPy scalars need
    (``numpy.ndarray``, ``numpy.dtype``, ``numpy[._]core.multiarray._reconstruct`` and
    ``.scalar``, ``numpy[._]core.numeric._frombuffer`` and latin-1 ``_codecs.encode``); any
    other global raises :class:`LlmesrError` naming it, before it is imported or called.
    """

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if NumpyOnlyUnpickler._allowed is None:
            NumpyOnlyUnpickler._allowed = _numpy_globals()
        obj = NumpyOnlyUnpickler._allowed.get((module, name))
        if obj is None:
            raise LlmesrError(f"refused pickle global '{module}.{name}': only NumPy arrays may "
                              "be loaded from these files")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise LlmesrError("refused pickle persistent id: only NumPy arrays may be loaded")


def load_numpy_pickle(path: str | Path) -> np.ndarray:
    """Load a pickled NumPy array with :class:`NumpyOnlyUnpickler`; must be a real numeric
    (integer or floating) ndarray. Errors name the file."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            obj = NumpyOnlyUnpickler(f, encoding="latin1").load()
    except LlmesrError as e:
        raise LlmesrError(f"{p}: {e}") from None
    except Exception as e:  # corrupt/truncated pickles raise many kinds of errors
        raise LlmesrError(f"{p}: cannot read the pickle ({type(e).__name__}: {e}); the file is "
                          "corrupt, truncated or not a pickled NumPy array") from None
    if not isinstance(obj, np.ndarray):
        raise LlmesrError(f"{p}: expected a pickled NumPy array, got {type(obj).__name__}")
    if obj.dtype.kind not in "iuf":
        raise LlmesrError(f"{p}: expected a numeric (integer or float) array, got dtype "
                          f"{obj.dtype}")
    return obj


# ---- validation ------------------------------------------------------------------------

def _check_raw_ids(table_raw: Any, n: int, what: str, dataset_dir: Path) -> None:
    raw = [str(v) for v in table_raw]
    expected = [str(i) for i in range(1, n + 1)]
    if raw == expected:
        return
    bad = next((i for i, (a, b) in enumerate(zip(raw, expected)) if a != b), min(len(raw), n))
    got = raw[bad] if bad < len(raw) else "(missing)"
    raise LlmesrError(
        f"{dataset_dir}: {what} id {bad + 1} has raw id {got!r}, not '{bad + 1}'; the authors' "
        f"files are aligned with the ids of their inter.txt, so the dataset must be prepared "
        f"from that same inter.txt with id_order=source (e.g. 'llmesr prepare llmesr-yelp' or "
        f"'llmesr-fashion') for the rows to belong to the right {what}s")


def _check_matrix(arr: np.ndarray, fname: str, rows: int, what: str,
                  dim: int | None = None) -> None:
    if arr.ndim != 2:
        raise LlmesrError(f"{fname} has shape {tuple(arr.shape)} but a 2-D ({rows}, d) matrix "
                          f"is expected (one row per {what})")
    if arr.shape[0] != rows:
        raise LlmesrError(f"{fname} has shape {tuple(arr.shape)}: {arr.shape[0]} rows but the "
                          f"dataset has {rows} {what}s (expected ({rows}, "
                          f"{arr.shape[1] if dim is None else dim})); is it the right dataset?")
    if arr.shape[1] == 0:
        raise LlmesrError(f"{fname} has shape {tuple(arr.shape)}: no columns")
    if dim is not None and arr.shape[1] != dim:
        raise LlmesrError(f"{fname} has shape {tuple(arr.shape)} but the item embeddings have "
                          f"dimension {dim} (expected ({rows}, {dim}))")


def _as_float32(arr: np.ndarray, fname: str) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise LlmesrError(f"{fname} contains NaN or infinite values")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise LlmesrError(f"{fname} has values too large for float32")
    return out


def _check_neighbors(sim: np.ndarray, fname: str, n_users: int) -> None:
    if sim.dtype.kind not in "iu":
        raise LlmesrError(f"{fname} has dtype {sim.dtype}; expected integer user row indices")
    if sim.ndim != 2 or sim.shape[0] != n_users or sim.shape[1] == 0:
        k = sim.shape[1] if sim.ndim == 2 else 100
        raise LlmesrError(f"{fname} has shape {tuple(sim.shape)} but the dataset has {n_users} "
                          f"users (expected ({n_users}, {k})); is it the right dataset?")
    if sim.size:
        lo, hi = int(sim.min()), int(sim.max())
        if lo < 0 or hi >= n_users:
            bad = np.argwhere((sim < 0) | (sim >= n_users))[0]
            raise LlmesrError(
                f"{fname}: row {int(bad[0])} column {int(bad[1])} holds "
                f"{int(sim[bad[0], bad[1]])}, outside the 0-based user rows [0, {n_users}) "
                f"(values range {lo}..{hi}); is it the right dataset?")


def self_neighbor_rows(neighbors: np.ndarray) -> np.ndarray:
    """0-based rows ``u`` whose neighbour list contains ``u`` itself."""
    own = np.arange(neighbors.shape[0], dtype=neighbors.dtype)[:, None]
    return np.flatnonzero((neighbors == own).any(axis=1))


def repair_self_neighbors(neighbors: np.ndarray, user_emb: np.ndarray, rows: np.ndarray,
                       chunk: int = 256) -> np.ndarray:
    """Return a copy of ``neighbors`` where each row in ``rows`` loses its own index.

    The remaining entries keep their order, shifted left; the freed last slot(s) take the best
    remaining users by cosine similarity of ``user_emb`` (not the user, not already in the row;
    ties to the lower index). Raises :class:`LlmesrError` if there are not enough other users.
    """
    out = neighbors.copy()
    n_users, k = neighbors.shape
    emb = np.asarray(user_emb, dtype=np.float64)
    norms = np.linalg.norm(emb, axis=1)
    unit = emb / np.where(norms > 0, norms, 1.0)[:, None]
    for start in range(0, len(rows), chunk):
        block = rows[start:start + chunk]
        sims = unit[block] @ unit.T  # (len(block), U), exact for these rows
        for r, u in enumerate(block):
            row = neighbors[u]
            kept = row[row != u]
            need = k - len(kept)
            s = sims[r].copy()
            s[u] = -np.inf
            s[row] = -np.inf  # already listed (or the user itself)
            available = int(np.isfinite(s).sum())
            if available < need:
                raise LlmesrError(
                    f"cannot fix user row {u}'s neighbour list: only {available} other users "
                    f"remain for {need} slot(s) ({n_users} users, {k} neighbours); disable the "
                    "fix (fix_self_neighbors=False) to keep the rows as released")
            # stable sort on -similarity: ties keep ascending index order
            best = np.argsort(-s, kind="stable")[:need]
            out[u] = np.concatenate([kept, best.astype(out.dtype)])
    return out


# ---- import ------------------------------------------------------------------------------

def import_authors_files(dataset_dir: str | Path, source_dir: str | Path, *,
                         allow_pickle: bool = False, name: str = "authors-ada002",
                         overwrite: bool = False, fix_self_neighbors: bool = True
                         ) -> dict[str, Any]:
    """Import the authors' ``*.pkl`` embeddings of a prepared dataset; return the manifest.

    Args:
        dataset_dir: a dataset prepared from the authors' ``inter.txt`` with ``id_order=source``.
        source_dir: the folder with ``itm_emb_np.pkl`` (required), ``usr_emb_np.pkl``,
            ``pca64_itm_emb_np.pkl`` and ``sim_user_100.pkl`` (optional).
        allow_pickle: must be True; the files are pickles (see the module docstring). Checked
            before any file is opened.
        name: output folder ``dataset_dir/semantic/NAME`` and the encoder label.
        overwrite: replace an existing output folder.
        fix_self_neighbors: repair neighbour rows that contain the user itself (see the module
            docstring); needs ``usr_emb_np.pkl`` when any row does.

    Raises :class:`LlmesrError` for any problem; nothing is written then.
    """
    if not allow_pickle:
        raise LlmesrError(PICKLE_REFUSAL)
    if not _NAME_RE.fullmatch(name):
        raise LlmesrError(f"invalid name {name!r}: use letters, digits, '_', '-' and '.' (it "
                          "names a folder)")
    dataset = load_dataset(dataset_dir)
    root = Path(dataset_dir)
    target = root / "semantic" / name
    if target.exists() and not overwrite:
        raise LlmesrError(f"output directory already exists: {target} (pass --overwrite to "
                          "replace it)")
    src = Path(source_dir)
    if not src.is_dir():
        raise LlmesrError(f"source folder not found: {src}")
    if not (src / ITEM_FILE).is_file():
        raise LlmesrError(f"{src}: {ITEM_FILE} not found (the authors' item embeddings are "
                          "required)")
    present = [f for f in SOURCE_FILES if (src / f).is_file()]
    n_items, n_users = dataset.num_items, dataset.num_users

    _check_raw_ids(dataset.item_table["raw_id"], n_items, "item", root)
    if USER_FILE in present or SIM_FILE in present:
        _check_raw_ids(dataset.users["raw_id"], n_users, "user", root)

    sources: dict[str, dict[str, Any]] = {}
    arrays: dict[str, np.ndarray] = {}
    for fname in present:
        path = src / fname
        arr = load_numpy_pickle(path)
        sources[fname] = {"path": str(path.resolve()), "bytes": path.stat().st_size,
                          "sha256": sha256_file(path), "shape": list(arr.shape),
                          "dtype": str(arr.dtype)}
        arrays[fname] = arr

    items = arrays[ITEM_FILE]
    _check_matrix(items, ITEM_FILE, n_items, "item")
    dim = int(items.shape[1])
    outputs: dict[str, np.ndarray] = {"items.npy": _as_float32(items, ITEM_FILE)}
    notes: list[str] = []
    if USER_FILE in arrays:
        _check_matrix(arrays[USER_FILE], USER_FILE, n_users, "user", dim)
        outputs["users.npy"] = _as_float32(arrays[USER_FILE], USER_FILE)
    if PCA_FILE in arrays:
        _check_matrix(arrays[PCA_FILE], PCA_FILE, n_items, "item")
        outputs["items_pca.npy"] = _as_float32(arrays[PCA_FILE], PCA_FILE)

    neighbors_info: dict[str, Any] | None = None
    self_count = 0
    if SIM_FILE in arrays:
        sim = arrays[SIM_FILE]
        _check_neighbors(sim, SIM_FILE, n_users)
        nb = sim.astype(np.int64)
        self_rows = self_neighbor_rows(nb)
        self_count = int(len(self_rows))
        fixed = 0
        if self_count and fix_self_neighbors:
            if USER_FILE not in arrays:
                raise LlmesrError(
                    f"{SIM_FILE}: {self_count} user row(s) list themselves as a neighbour "
                    f"(e.g. row {int(self_rows[0])}); fixing them needs {USER_FILE} (to find "
                    "the next most similar user), which is not in the source folder; add it or "
                    "disable the fix (fix_self_neighbors=False) to keep the rows as released")
            nb = repair_self_neighbors(nb, arrays[USER_FILE], self_rows)
            fixed = self_count
            notes.append(f"{self_count} neighbour row(s) contained the user itself; the user was "
                         "removed, the row shifted left and the last slot filled with the next "
                         f"most similar user by cosine similarity of {USER_FILE}")
        elif self_count:
            notes.append(f"{self_count} neighbour row(s) contain the user itself (kept as "
                         "released; fix_self_neighbors was disabled)")
        ordered = np.sort(nb, axis=1)
        dup_rows = int((ordered[:, 1:] == ordered[:, :-1]).any(axis=1).sum())
        if dup_rows:
            notes.append(f"{dup_rows} neighbour row(s) list the same user more than once")
        outputs["neighbors.npy"] = nb.astype(np.int32)
        listed = [int(u) for u in self_rows[:_MAX_LISTED_ROWS]]
        neighbors_info = {"k": int(nb.shape[1]), "index_base": 0,
                          "self_in_neighbors": self_count,
                          "fix_self_neighbors": bool(fix_self_neighbors),
                          "fixed_rows": fixed,
                          "self_rows": listed,
                          "self_rows_truncated": self_count > len(listed)}

    ds_manifest_path = root / "manifest.json"
    manifest: dict[str, Any] = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "name": name,
        **provenance(),
        "encoder": {"name": "imported", "identity": "authors-bundle", "dim": dim,
                    "label": name},
        "source": {"dir": str(src.resolve()), "files": sources},
        "dataset": _dataset_entry(dataset, ds_manifest_path),
        "counts": {"items": n_items, "users": n_users, "dim": dim,
                   "has_users": "users.npy" in outputs,
                   "pca_dim": int(outputs["items_pca.npy"].shape[1])
                   if "items_pca.npy" in outputs else None,
                   "neighbors": int(outputs["neighbors.npy"].shape[1])
                   if "neighbors.npy" in outputs else None},
        "self_in_neighbors": self_count,
        "neighbors": neighbors_info,
        "stored_dtype": {"embeddings": "float32", "neighbors": "int32"},
        "notes": notes,
    }
    with atomic_directory(target, overwrite=overwrite) as tmp:
        for fname, arr in outputs.items():
            np.save(tmp / fname, arr)
        manifest["files"] = {f.name: sha256_file(f) for f in sorted(tmp.iterdir())}
        write_json_atomic(tmp / "manifest.json", manifest)
    return manifest


def _dataset_entry(dataset: SequenceDataset, manifest_path: Path) -> dict[str, Any]:
    return {"name": dataset.manifest.get("name"), "path": str(dataset.path.resolve()),
            "manifest_sha256": sha256_file(manifest_path),
            "users": dataset.num_users, "items": dataset.num_items}


__all__ = ["import_authors_files", "load_numpy_pickle", "NumpyOnlyUnpickler",
           "repair_self_neighbors", "self_neighbor_rows", "PICKLE_REFUSAL", "KIND",
           "FORMAT_VERSION"]
