"""Named datasets: where their files are, how to read them and the recipe that prepares them.

Two kinds of entries:

- local snapshots of public datasets (``beauty-s3rec``, ``yelp-s3rec``, ``llmesr-yelp``,
  ``llmesr-fashion``, ``ml-100k``) whose files live in a folder such as ``../shared/data/NAME``;
  their sha256 are pinned here and checked against the folder's ``PROVENANCE.tsv`` too;
- the paper's raw sources (``amazon2014-beauty``, ``amazon2018-fashion``, ``yelp-paper``), which
  the user downloads; the entry applies the paper's filtering (SPEC §1.2-1.3) and says where to
  get the files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmesr.data.io import read_text, sha256_file, verify_sha256
from llmesr.errors import ChecksumError, LlmesrError


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    reader: str
    summary: str
    #: role -> file name inside the source folder: "source", "items", or a reader option
    #: that takes a path (e.g. "raw_sequences"). Empty for raw sources (the reader finds files).
    files: dict[str, str] = field(default_factory=dict)
    #: file name -> sha256 of the expected version.
    sha256: dict[str, str] = field(default_factory=dict)
    reader_options: dict[str, Any] = field(default_factory=dict)
    prepare: dict[str, Any] = field(default_factory=dict)
    #: (ts_user, ts_item) from the paper's scripts, only for the paper's datasets.
    paper_thresholds: tuple[int, int] | None = None
    #: folder name under the shared data root (local snapshots only).
    folder: str | None = None
    #: where a user gets the files (human-readable).
    download: tuple[str, ...] = ()
    #: files that ``llmesr prepare NAME --download`` fetches.
    urls: tuple[str, ...] = ()
    notes: str = ""
    #: whether every item must have text (a missing text is then an error).
    require_text: bool = False
    #: default prompt settings for ``llmesr embed`` (a ``PromptConfig`` as a dict).
    prompt: dict[str, Any] = field(default_factory=dict)


#: Recipe for files that are already filtered, numbered and in time order.
_AS_IS = {"kcore_user": 0, "kcore_item": 0, "min_history": 0, "order": "file",
          "duplicates": "keep", "short_users": "keep"}

ENTRIES: dict[str, DatasetEntry] = {e.name: e for e in [
    DatasetEntry(
        name="beauty-s3rec", reader="s3rec", folder="beauty-s3rec",
        summary="Amazon Beauty 2014, 5-core, S3-Rec numbering, short item titles "
                "(22,363 users / 12,101 items / 198,502 interactions)",
        files={"source": "Beauty.txt", "items": "item_short_text.txt",
               "raw_sequences": "user_sequence_raw_asin.txt"},
        sha256={"Beauty.txt": "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
                "user_sequence_raw_asin.txt":
                    "47197cbee7bdc1896926e10d96b807dce0aecb9a1f0c2ccc887c21090237c9b7"},
        reader_options={"text_keys": "raw", "text_field": "title"},
        # S3-Rec numbered items by first appearance, so this keeps its ids (checked in tests).
        prepare=dict(_AS_IS, id_order="first_appearance"), require_text=True,
        # Only short title fragments exist here; a sentence frame around them adds no
        # information and halves the attribute signal (benchmarks/semantic_signal.py: pairs
        # sharing >= 3 attributes vs random, cosine 0.284 vs 0.187 bare, 0.632 vs 0.585 framed).
        prompt={"domain": "beauty", "item_template": "{title}"},
        notes="Not the paper's Beauty (52,204 users; see amazon2014-beauty); thresholds by the "
              "Pareto rule."),
    DatasetEntry(
        name="yelp-s3rec", reader="s3rec", folder="yelp-s3rec",
        summary="Yelp, S3-Rec numbering, business names and categories "
                "(30,431 users / 20,033 items / 316,354 interactions)",
        files={"source": "Yelp.txt", "items": "Yelp.item.json"},
        sha256={"Yelp.txt": "724b219106b81dd2349027da997334ddb6da9fe2f152ad6e0d97a93170f7caed",
                "Yelp.item.json":
                    "8f58a9d54111fc10ccd675f99e6f2afe988cd0ee70b40f1e37d04f9aea764c2d"},
        reader_options={"text_keys": "zero_based"},
        prepare=dict(_AS_IS, id_order="source"), require_text=True,
        # LETTER's file stores the categories under "description".
        prompt={"domain": "poi", "fields": {"categories": "description"}},
        notes="Not the paper's Yelp split (see llmesr-yelp); thresholds by the Pareto rule."),
    DatasetEntry(
        name="llmesr-yelp", reader="llmesr-inter", folder="llmesr-paper-splits",
        summary="the paper's exact Yelp interactions (inter.txt; no item text)",
        files={"source": "yelp_inter.txt"},
        sha256={"yelp_inter.txt":
                "5b093f6d03f2675f9b574b9e92a53b0153e2ef2fb5f6bfebba4955daea10512f"},
        prepare=dict(_AS_IS, id_order="source"), paper_thresholds=(12, 13)),
    DatasetEntry(
        name="llmesr-fashion", reader="llmesr-inter", folder="llmesr-paper-splits",
        summary="the paper's exact Fashion interactions (inter.txt; no item text)",
        files={"source": "fashion_inter.txt"},
        sha256={"fashion_inter.txt":
                "6719df22096b0dec432314a92ab87fd43012b08b1a7d3b11a354572bb0006226"},
        prepare=dict(_AS_IS, id_order="source"), paper_thresholds=(3, 4)),
    DatasetEntry(
        name="ml-100k", reader="recbole", folder="ml-100k",
        summary="MovieLens 100K (RecBole atomic files): titles, years, genres, timestamps",
        files={"source": "ml-100k.inter", "items": "ml-100k.item"},
        sha256={"ml-100k.inter":
                "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
                "ml-100k.item":
                "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"},
        reader_options={"text_fields": "movie_title,release_year,class"},
        prepare=dict(_AS_IS, order="timestamp", id_order="first_appearance"),
        require_text=True, prompt={"domain": "movie", "fields": {"date": "release_year"}},
        download=("https://files.grouplens.org/datasets/movielens/ml-100k.zip (use format "
                  "movielens-100k), or the 'recbole' wheel on PyPI: "
                  "recbole/dataset_example/ml-100k/",),
        notes="All ratings kept (no k-core), ordered by timestamp."),
    DatasetEntry(
        name="amazon2014-beauty", reader="amazon2014",
        summary="the paper's Beauty from the raw Amazon 2014 dump (MELT recipe: users and items "
                "with >= 5 reviews in one pass over the raw counts)",
        prepare={"kcore_user": 5, "kcore_item": 5, "kcore_mode": "single", "min_history": 0,
                 "order": "timestamp", "duplicates": "keep", "short_users": "keep",
                 "id_order": "file"},
        paper_thresholds=(9, 4), prompt={"domain": "beauty", "style": "paper"},
        download=("http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/ "
                  "(reviews_Beauty.json.gz and meta_Beauty.json.gz)",),
        urls=("http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
              "reviews_Beauty.json.gz",
              "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
              "meta_Beauty.json.gz"),
        notes="Reproduces the authors' released Beauty statistics (394,908 interactions; 1,706 "
              "users with < 3 interactions, kept as the paper does)."),
    DatasetEntry(
        name="amazon2018-fashion", reader="amazon2018",
        summary="the paper's Fashion source (Amazon 2018 AMAZON_FASHION) with the paper code's "
                "filtering (users and items >= 3 in one pass, then users >= 3)",
        prepare={"kcore_user": 3, "kcore_item": 3, "kcore_mode": "single", "min_history": 3,
                 "order": "timestamp", "duplicates": "keep", "short_users": "keep",
                 "id_order": "first_appearance"},
        paper_thresholds=(3, 4), prompt={"domain": "fashion", "style": "paper"},
        download=("https://nijianmo.github.io/amazon/ (AMAZON_FASHION.json.gz and "
                  "meta_AMAZON_FASHION.json.gz)",),
        urls=("https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/categoryFiles/"
              "AMAZON_FASHION.json.gz",
              "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/metaFiles2/"
              "meta_AMAZON_FASHION.json.gz"),
        notes="The released code does not reproduce the authors' Fashion file (SPEC §1.3); use "
              "llmesr-fashion for the exact split."),
    DatasetEntry(
        name="yelp-paper", reader="yelp",
        summary="the paper's Yelp recipe on the Yelp Open Dataset (dates 2000-01-01 .. "
                "2019-12-31, users and items >= 3 in one pass, then users >= 3)",
        prepare={"date_start": "2000-01-01 00:00:00", "date_end": "2019-12-31 00:00:00",
                 "kcore_user": 3, "kcore_item": 3, "kcore_mode": "single", "min_history": 3,
                 "order": "timestamp", "duplicates": "keep", "short_users": "keep",
                 "id_order": "first_appearance"},
        paper_thresholds=(12, 13), prompt={"domain": "poi", "style": "paper"},
        download=("https://www.yelp.com/dataset (accept the licence, download the JSON "
                  "archive, extract yelp_academic_dataset_review.json and "
                  "yelp_academic_dataset_business.json)",),
        notes="The current Yelp release yields ~441k users, not the paper's 15,720 (SPEC §1.2); "
              "use llmesr-yelp for the exact split."),
]}


def get_entry(name: str) -> DatasetEntry | None:
    return ENTRIES.get(name)


def shared_data_root() -> Path | None:
    """Where the local dataset snapshots live.

    ``$LLMESR_DATA_ROOT`` if set; else the first ``shared/data`` found beside the current
    directory or one of its parents, or beside this source tree (a development checkout).
    """
    env = os.environ.get("LLMESR_DATA_ROOT")
    if env:
        return Path(env)
    starts = [Path.cwd(), *Path.cwd().parents, *Path(__file__).resolve().parents]
    for base in starts:
        for cand in (base / "shared" / "data", base / ".." / "shared" / "data"):
            if (cand / "README.md").is_file() or any(
                    (cand / e.folder).is_dir() for e in ENTRIES.values() if e.folder):
                return cand.resolve()
    return None


def read_provenance(folder: Path) -> dict[str, str]:
    """``file name -> sha256`` from a ``PROVENANCE.tsv`` (tab-separated, a ``sha256=`` field)."""
    out: dict[str, str] = {}
    prov = folder / "PROVENANCE.tsv"
    if not prov.is_file():
        return out
    for line in read_text(prov).splitlines():
        parts = line.split("\t")
        for p in parts[1:]:
            if p.startswith("sha256="):
                out[parts[0]] = p[len("sha256="):]
    return out


def resolve_files(entry: DatasetEntry, source: str | Path | None
                  ) -> tuple[dict[str, Path], dict[str, str]]:
    """Find the entry's files and verify their checksums; return (role -> path, path -> sha256).

    ``source`` is the folder with the files (default: the shared data root's folder).
    """
    if not entry.files:
        if source is None:
            where = "\n  ".join(entry.download) or "(see the dataset's documentation)"
            raise LlmesrError(f"dataset '{entry.name}' needs --source PATH (the downloaded files "
                              f"or their folder); get them from: {where}")
        return {"source": Path(source)}, {}
    if source is None:
        root = shared_data_root()
        if root is None or entry.folder is None:
            raise LlmesrError(f"cannot find the files of '{entry.name}': pass --source FOLDER "
                              "or set LLMESR_DATA_ROOT to the folder that holds "
                              f"'{entry.folder}/'")
        folder = root / entry.folder
    else:
        folder = Path(source)
        if folder.is_file():
            folder = folder.parent
    if not folder.is_dir():
        raise LlmesrError(f"dataset folder not found: {folder}")
    provenance = read_provenance(folder)
    paths: dict[str, Path] = {}
    digests: dict[str, str] = {}
    for role, fname in entry.files.items():
        path = folder / fname
        if not path.is_file():
            raise LlmesrError(f"{entry.name}: missing file {path}")
        digest = sha256_file(path)
        for expected, origin in ((entry.sha256.get(fname), "llmesr's registry"),
                                 (provenance.get(fname), f"{folder / 'PROVENANCE.tsv'}")):
            if expected is not None and digest != expected:
                raise ChecksumError(f"checksum mismatch for {path}: sha256 {digest}, expected "
                                    f"{expected} (from {origin}); the file is corrupt or a "
                                    "different version")
        paths[role] = path
        digests[str(path)] = digest
    return paths, digests


__all__ = ["DatasetEntry", "ENTRIES", "get_entry", "resolve_files", "shared_data_root",
           "read_provenance", "verify_sha256"]
