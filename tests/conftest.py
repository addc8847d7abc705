from __future__ import annotations

from pathlib import Path

import pytest

from llmesr.data.pipeline import prepare
from llmesr.semantic.encoders import HashingEncoder
from llmesr.semantic.pipeline import embed

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets. Missing data is a failure, never a skip (CI must run these tests)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared datasets not found at {SHARED_DATA}; they must be present for the "
                    "integration tests (see ../shared/data/README.md)")
    return SHARED_DATA


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


USERS = 600


@pytest.fixture(scope="session")
def beauty_subset(shared_data, tmp_path_factory):
    """The first 600 users of beauty-s3rec with their real texts, embedded by hashing."""
    src = shared_data / "beauty-s3rec"
    tmp = tmp_path_factory.mktemp("beauty")
    seqs = (src / "Beauty.txt").read_text().splitlines()[:USERS]
    raw = (src / "user_sequence_raw_asin.txt").read_text().splitlines()[:USERS]
    asins = {a for line in raw for a in line.split()[1:]}
    text = [ln for ln in (src / "item_short_text.txt").read_text().splitlines()
            if ln.split(" ", 1)[0] in asins]
    (tmp / "S.txt").write_text("\n".join(seqs) + "\n")
    (tmp / "raw.txt").write_text("\n".join(raw) + "\n")
    (tmp / "text.txt").write_text("\n".join(text) + "\n")
    data = tmp / "ds"
    prepare("s3rec", data, source=tmp / "S.txt", items=tmp / "text.txt",
            reader_options={"raw_sequences": str(tmp / "raw.txt"), "text_field": "title"},
            settings={"kcore_user": 0, "kcore_item": 0, "min_history": 0, "order": "file"},
            log=lambda *a: None)
    embed(data, encoder=HashingEncoder(dim=128), pca_dim=64, neighbors=20, progress=False,
          log=lambda *a: None)
    return data
