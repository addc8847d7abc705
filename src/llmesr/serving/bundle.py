"""What a run directory holds for serving, besides its weights.

Training writes ``RUN_DIR/bundle/`` when it starts, so a run directory alone can recommend,
even after the dataset has moved or been deleted::

    bundle/
      items.parquet        the dataset's item table: item_id, raw_id, popularity, tail_item,
                           text fields (raw ids map to model ids; titles come from here)
      pca_components.npy   the PCA that initialised the collaborative table, to project new
      pca_mean.npy         items identically (when the run used embeddings with a PCA)
      manifest.json        dataset and embedding provenance, the text encoder and prompt
                           settings (to embed new items as the training items were), checksums

Items added later (cold start) live in ``RUN_DIR/added_items/`` (:mod:`llmesr.serving.recommender`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmesr.data.io import provenance, sha256_file, write_json_atomic
from llmesr.errors import LlmesrError
from llmesr.training.checkpoint import folder_lock, recover_directory, replace_directory

KIND = "llmesr-bundle"
FORMAT_VERSION = 1
FOLDER = "bundle"


def write_bundle(run_dir: str | Path, data_dir: str | Path, sem_dir: str | Path | None) -> Path:
    """Write (or replace) ``run_dir/bundle`` from a dataset and its embedding folder."""
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    sem_dir = None if sem_dir is None else Path(sem_dir)
    target = run_dir / FOLDER

    def fill(tmp: Path) -> None:
        shutil.copyfile(data_dir / "items.parquet", tmp / "items.parquet")
        data_manifest = json.loads((data_dir / "manifest.json").read_text())
        semantic = None
        if sem_dir is not None:
            m = json.loads((sem_dir / "manifest.json").read_text())
            for name in ("pca_components.npy", "pca_mean.npy"):
                if (sem_dir / name).is_file():
                    shutil.copyfile(sem_dir / name, tmp / name)
            semantic = {"path": str(sem_dir.resolve()),
                        "manifest_sha256": sha256_file(sem_dir / "manifest.json"),
                        "encoder": m.get("encoder"), "prompt": m.get("prompt"),
                        "dim": m.get("dim")}
        manifest = {
            "kind": KIND, "format_version": FORMAT_VERSION, **provenance(),
            "dataset": {"name": data_manifest.get("name"), "path": str(data_dir.resolve()),
                        "manifest_sha256": sha256_file(data_dir / "manifest.json"),
                        "items": data_manifest["counts"]["items"],
                        "text_fields": data_manifest.get("text", {}).get("fields", [])},
            "semantic": semantic,
            "files": {f.name: sha256_file(f) for f in sorted(tmp.iterdir())},
        }
        write_json_atomic(tmp / "manifest.json", manifest)

    replace_directory(target, fill, complete=_complete, legacy=_legacy(target))
    return target


def _complete(folder: Path) -> bool:
    return (folder / "manifest.json").is_file()


def _legacy(folder: Path) -> list[Path]:
    """Folders llmesr 0.1 left when killed while replacing ``folder`` (newest first)."""
    if not folder.parent.is_dir():
        return []
    found = [p for pattern in (f".{folder.name}.*.partial", f".{folder.name}.old-*")
             for p in folder.parent.glob(pattern) if p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


class Bundle:
    """A loaded ``bundle/`` folder."""

    def __init__(self, folder: Path, manifest: dict[str, Any], items: pd.DataFrame,
                 pca_components: np.ndarray | None, pca_mean: np.ndarray | None):
        self.folder = folder
        self.manifest = manifest
        self.items = items
        self.pca_components = pca_components
        self.pca_mean = pca_mean

    @property
    def semantic(self) -> dict[str, Any] | None:
        return self.manifest.get("semantic")

    @property
    def text_fields(self) -> list[str]:
        return list(self.manifest["dataset"].get("text_fields", []))


def load_bundle(run_dir: str | Path, data_dir: str | Path | None = None) -> Bundle:
    """Read ``run_dir/bundle``. A run trained before bundles existed gets one written from its
    dataset (the path in config.json, or ``data_dir``), checked against the recorded checksum."""
    run_dir = Path(run_dir)
    folder = run_dir / FOLDER
    with folder_lock(folder):
        return _load_bundle(run_dir, folder, data_dir)


def _load_bundle(run_dir: Path, folder: Path, data_dir: str | Path | None) -> Bundle:
    recover_directory(folder, complete=_complete, legacy=_legacy(folder))
    if not (folder / "manifest.json").is_file():
        _bundle_old_run(run_dir, data_dir)
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LlmesrError(f"{folder / 'manifest.json'} is unreadable ({e}); delete {folder} and "
                          "load again with the run's dataset present to rebuild it") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND or \
            manifest.get("format_version") != FORMAT_VERSION:
        raise LlmesrError(f"{folder} is not an llmesr {FORMAT_VERSION} serving bundle")
    if not isinstance(manifest.get("files"), dict) or not isinstance(
            manifest.get("dataset"), dict) or not isinstance(manifest.get("semantic"),
                                                             (dict, type(None))):
        raise LlmesrError(f"{folder / 'manifest.json'} is damaged (no files, dataset or semantic "
                          f"section); delete {folder} and load again with the run's dataset "
                          "present to rebuild it")
    for name, digest in manifest["files"].items():
        if not (folder / name).is_file() or sha256_file(folder / name) != digest:
            raise LlmesrError(f"{folder / name} is missing or corrupt (checksum differs); delete "
                              f"{folder} and load again with the run's dataset present")
    items = pd.read_parquet(folder / "items.parquet")

    def opt(name: str) -> np.ndarray | None:
        f = folder / name
        return np.load(f, allow_pickle=False) if f.is_file() else None

    return Bundle(folder, manifest, items, opt("pca_components.npy"), opt("pca_mean.npy"))


def _bundle_old_run(run_dir: Path, data_dir: str | Path | None) -> None:
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
    except FileNotFoundError:
        raise LlmesrError(f"{run_dir} is not a run directory (no config.json)") from None
    except (OSError, ValueError) as e:
        raise LlmesrError(f"cannot read {run_dir / 'config.json'} ({e})") from None
    try:
        data = Path(data_dir) if data_dir else Path(cfg["dataset"]["path"])
        digest = cfg["dataset"].get("manifest_sha256")
    except (KeyError, TypeError, AttributeError):
        raise LlmesrError(f"{run_dir / 'config.json'} records no dataset; it is damaged or not "
                          "an llmesr run") from None
    if not (data / "manifest.json").is_file():
        raise LlmesrError(f"{run_dir} has no serving bundle and its dataset is not at {data}; "
                          "pass the dataset directory (--data) once to write the bundle")
    if sha256_file(data / "manifest.json") != digest:
        raise LlmesrError(f"the dataset at {data} is not the one {run_dir} was trained on "
                          "(manifest checksum differs)")
    sem = None
    emb = cfg.get("embeddings")
    if emb:
        sem = Path(emb["path"])
        if not (sem / "manifest.json").is_file():
            sem = data / "semantic" / sem.name
        if not (sem / "manifest.json").is_file():
            raise LlmesrError(f"the run's embeddings are not at {emb['path']} or {sem}")
    write_bundle(run_dir, data, sem)
