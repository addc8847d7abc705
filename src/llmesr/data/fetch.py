"""Getting public datasets onto disk: MovieLens 100K for the demo, raw dumps for `--download`.

Every path here also works offline from a local copy (``--source``), and every file that has a
known checksum is verified.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from llmesr.data.download import download, extract_zip
from llmesr.data.io import sha256_file
from llmesr.data.registry import ENTRIES, DatasetEntry, shared_data_root
from llmesr.errors import ChecksumError, LlmesrError

GROUPLENS_ML100K = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
#: The RecBole wheel on PyPI ships ml-100k in RecBole's atomic format.
RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_ML100K_DIR = "recbole/dataset_example/ml-100k"


def cache_dir() -> Path:
    """``$LLMESR_CACHE``, else ``~/.cache/llmesr``."""
    return Path(os.environ.get("LLMESR_CACHE", Path.home() / ".cache" / "llmesr"))


def _recbole_files_ok(folder: Path) -> bool:
    entry = ENTRIES["ml-100k"]
    for fname in ("ml-100k.inter", "ml-100k.item"):
        f = folder / fname
        if not f.is_file() or sha256_file(f) != entry.sha256[fname]:
            return False
    return True


def movielens_100k(cache: Path | None = None, log: Callable[[str], None] = print,
                   grouplens_url: str = GROUPLENS_ML100K, use_pip: bool = True
                   ) -> tuple[str, Path]:
    """Find or fetch MovieLens 100K; return ``(dataset or format name, source folder)``.

    Tried in order: the cache; the GroupLens archive (format ``movielens-100k``); the RecBole
    wheel from PyPI via ``pip download`` (dataset ``ml-100k``, checksums pinned); the local
    shared data folder. Raises :class:`LlmesrError` listing what failed.
    """
    cache = cache or cache_dir()
    grouplens_dir = cache / "ml-100k-grouplens"
    recbole_dir = cache / "ml-100k-recbole"
    if (grouplens_dir / "ml-100k" / "u.data").is_file():
        return "movielens-100k", grouplens_dir / "ml-100k"
    if _recbole_files_ok(recbole_dir):
        return "ml-100k", recbole_dir
    failures = []
    try:
        log(f"downloading MovieLens 100K from {grouplens_url} ...")
        cache.mkdir(parents=True, exist_ok=True)
        # Quiet retries: there are fallbacks below, and each says calmly what it does.
        archive = download(grouplens_url, cache / "ml-100k.zip", timeout=30, retries=1,
                           on_retry=lambda notice: None)
        extract_zip(archive, grouplens_dir, members=["ml-100k"], overwrite=True)
        return "movielens-100k", grouplens_dir / "ml-100k"
    except (LlmesrError, OSError) as e:
        failures.append(f"GroupLens: {str(e).splitlines()[0] if str(e) else e!r}")
        log("GroupLens is not reachable from here; looking for another copy")
    if use_pip:
        try:
            log(f"trying the '{RECBOLE_WHEEL}' wheel from PyPI (it ships ml-100k) ...")
            with tempfile.TemporaryDirectory() as tmp:
                proc = subprocess.run(
                    [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                     "--quiet", "-d", tmp, RECBOLE_WHEEL],
                    capture_output=True, text=True, timeout=300, check=False)
                wheels = list(Path(tmp).glob("recbole-*.whl"))
                if proc.returncode != 0 or not wheels:
                    raise LlmesrError((proc.stderr.strip().splitlines() or ["pip failed"])[-1])
                extracted = Path(tmp) / "x"
                extract_zip(wheels[0], extracted, members=[RECBOLE_ML100K_DIR])
                recbole_dir.mkdir(parents=True, exist_ok=True)
                for fname in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):
                    src = extracted / RECBOLE_ML100K_DIR / fname
                    if src.is_file():
                        os.replace(src, recbole_dir / fname)
            if not _recbole_files_ok(recbole_dir):
                raise ChecksumError("the ml-100k files in the wheel do not have the expected "
                                    "sha256")
            return "ml-100k", recbole_dir
        except (LlmesrError, OSError, subprocess.SubprocessError) as e:
            failures.append(f"PyPI wheel: {str(e).splitlines()[0] if str(e) else e!r}")
    root = shared_data_root()
    if root is not None and _recbole_files_ok(root / "ml-100k"):
        log(f"using the local copy in {root / 'ml-100k'}")
        return "ml-100k", root / "ml-100k"
    raise LlmesrError("could not get MovieLens 100K (" + "; ".join(failures) + "); download "
                      f"{grouplens_url}, unzip it and pass --source FOLDER")


def download_entry(entry: DatasetEntry, cache: Path | None = None) -> Path:
    """Download a raw-source entry's files into ``cache/NAME``; return that folder."""
    if not entry.urls:
        raise LlmesrError(f"'{entry.name}' cannot be downloaded automatically; get the files "
                          f"from: {' '.join(entry.download)} and pass --source PATH")
    folder = (cache or cache_dir()) / entry.name
    folder.mkdir(parents=True, exist_ok=True)
    for url in entry.urls:
        download(url, folder / url.rstrip("/").rsplit("/", 1)[-1])
    return folder
