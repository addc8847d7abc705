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

from llmesr.data.io import atomic_directory, provenance, sha256_file, write_json_atomic
from llmesr.errors import LlmesrError

KIND = "llmesr-bundle"
FORMAT_VERSION = 1
FOLDER = "bundle"


def write_bundle(run_dir: str | Path, data_dir: str | Path, sem_dir: str | Path | None) -> Path:
    """Write (or replace) ``run_dir/bundle`` from a dataset and its embedding folder."""
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    target = run_dir / FOLDER
    with atomic_directory(target, overwrite=True) as tmp:
        shutil.copyfile(data_dir / "items.parquet", tmp / "items.parquet")
        data_manifest = json.loads((data_dir / "manifest.json").read_text())
        semantic = None
        if sem_dir is not None:
            sem_dir = Path(sem_dir)
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
    return target


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
    if not (folder / "manifest.json").is_file():
        _bundle_old_run(run_dir, data_dir)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LlmesrError(f"{folder / 'manifest.json'} is unreadable ({e}); delete {folder} and "
                          "load again with the run's dataset present to rebuild it") from None
    if manifest.get("kind") != KIND or manifest.get("format_version") != FORMAT_VERSION:
        raise LlmesrError(f"{folder} is not an llmesr {FORMAT_VERSION} serving bundle")
    for name, digest in manifest.get("files", {}).items():
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
    except (OSError, json.JSONDecodeError) as e:
        raise LlmesrError(f"cannot read {run_dir / 'config.json'} ({e})") from None
    data = Path(data_dir) if data_dir else Path(cfg["dataset"]["path"])
    if not (data / "manifest.json").is_file():
        raise LlmesrError(f"{run_dir} has no serving bundle and its dataset is not at {data}; "
                          "pass the dataset directory (--data) once to write the bundle")
    if sha256_file(data / "manifest.json") != cfg["dataset"].get("manifest_sha256"):
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
