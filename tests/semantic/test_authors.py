"""Importing the LLM-ESR authors' pickled embeddings (llmesr.semantic.authors)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from llmesr.data.io import sha256_file
from llmesr.data.pipeline import prepare
from llmesr.errors import LlmesrError
from llmesr.semantic import authors
from llmesr.semantic.authors import import_authors_files, load_numpy_pickle
from tests.conftest import write

SETTINGS = {"kcore_user": 0, "kcore_item": 0, "min_history": 0, "order": "file",
            "id_order": "source"}
U, N, D = 6, 5, 8

# 6 users, 5 items; lines deliberately not in id order (id_order=source renumbers by value)
INTER = "\n".join([
    "2 3", "2 1", "2 5",
    "1 1", "1 2", "1 4", "1 5",
    "3 2", "3 3",
    "4 4", "4 1", "4 2",
    "5 5",
    "6 3", "6 4", "6 1",
]) + "\n"


def _prepare(tmp_path: Path, text: str = INTER, settings: dict | None = None,
             sub: str = "ds") -> Path:
    src = write(tmp_path / f"{sub}_inter.txt", text)
    out = tmp_path / sub
    prepare("llmesr-inter", out, source=src, settings=settings or SETTINGS, log=lambda *a: None)
    return out


def _dump(path: Path, obj, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def _neighbors(emb: np.ndarray, k: int) -> np.ndarray:
    """The authors' recipe: argsort of -cosine similarity, column 0 dropped."""
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return np.argsort(-(unit @ unit.T), axis=1, kind="stable")[:, 1:k + 1]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return _prepare(tmp_path)


@pytest.fixture
def bundle(tmp_path: Path) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "itm_emb_np.pkl": rng.normal(size=(N, D)),
        "usr_emb_np.pkl": rng.normal(size=(U, D)),
        "pca64_itm_emb_np.pkl": rng.normal(size=(N, 4)),
    }
    arrays["sim_user_100.pkl"] = _neighbors(arrays["usr_emb_np.pkl"], 3)
    src = tmp_path / "bundle"
    for fname, arr in arrays.items():
        _dump(src / fname, arr)
    return {"dir": src, "arrays": arrays}


class _Evil:
    """Unpickling this would create ``marker`` (via builtins.open)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# ---- the pickle opt-in ---------------------------------------------------------------------

def test_refuses_without_allow_pickle_before_touching_files(tmp_path, dataset):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil"
    _dump(src / "itm_emb_np.pkl", _Evil(marker))
    with pytest.raises(LlmesrError, match="pickle") as e:
        import_authors_files(dataset, src)
    msg = str(e.value)
    assert "--allow-pickle" in msg and "trusted" in msg and "code" in msg
    assert not marker.exists()
    # checked before anything is opened: even missing folders give the pickle refusal
    with pytest.raises(LlmesrError, match="--allow-pickle"):
        import_authors_files(tmp_path / "nope", tmp_path / "nothing")
    assert not (dataset / "semantic").exists()


def test_restricted_unpickler_refuses_malicious_globals(tmp_path, dataset):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil"
    _dump(src / "itm_emb_np.pkl", _Evil(marker))
    with pytest.raises(LlmesrError, match=r"refused pickle global '(io|builtins)\.open'"):
        import_authors_files(dataset, src, allow_pickle=True)
    assert not marker.exists()
    assert not (dataset / "semantic").exists()
    # a malicious object nested inside an otherwise valid container is refused too
    _dump(tmp_path / "nested.pkl", [np.zeros(3), _Evil(marker)])
    with pytest.raises(LlmesrError, match="refused pickle global"):
        load_numpy_pickle(tmp_path / "nested.pkl")
    assert not marker.exists()
    # sanity: the payload is real, a plain pickle.load would have created the marker
    with open(src / "itm_emb_np.pkl", "rb") as f:
        pickle.load(f).close()
    assert marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_loads_numpy_arrays_of_every_protocol(tmp_path, protocol):
    arr = np.random.default_rng(1).normal(size=(4, 3))
    got = load_numpy_pickle(_dump(tmp_path / "a.pkl", arr, protocol))
    assert got.dtype == arr.dtype and np.array_equal(got, arr)
    ints = np.arange(12, dtype=np.int64).reshape(3, 4)
    assert np.array_equal(load_numpy_pickle(_dump(tmp_path / "b.pkl", ints, protocol)), ints)


@pytest.mark.parametrize("obj, match", [
    ({"a": 1}, "expected a pickled NumPy array, got dict"),
    (np.array(["x", "y"]), "numeric"),
    (np.array([1, "x"], dtype=object), "numeric"),
    (np.array([True, False]), "numeric"),
])
def test_rejects_non_numeric_pickles(tmp_path, obj, match):
    with pytest.raises(LlmesrError, match=match):
        load_numpy_pickle(_dump(tmp_path / "x.pkl", obj))


def test_corrupt_pickle_is_reported(tmp_path):
    path = tmp_path / "x.pkl"
    data = pickle.dumps(np.zeros((3, 3)))
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(LlmesrError, match="x.pkl: cannot read the pickle"):
        load_numpy_pickle(path)


# ---- a successful import -------------------------------------------------------------------

def test_import_writes_float32_copies_and_manifest(dataset, bundle):
    m = import_authors_files(dataset, bundle["dir"], allow_pickle=True)
    out = dataset / "semantic" / "authors-ada002"
    arrays = bundle["arrays"]
    for fname, stored, dtype in [("itm_emb_np.pkl", "items.npy", np.float32),
                                 ("usr_emb_np.pkl", "users.npy", np.float32),
                                 ("pca64_itm_emb_np.pkl", "items_pca.npy", np.float32),
                                 ("sim_user_100.pkl", "neighbors.npy", np.int32)]:
        got = np.load(out / stored, allow_pickle=False)
        assert got.dtype == dtype
        assert np.array_equal(got, arrays[fname].astype(dtype))
        assert m["files"][stored] == sha256_file(out / stored)
        assert m["source"]["files"][fname]["sha256"] == sha256_file(bundle["dir"] / fname)
        assert m["source"]["files"][fname]["shape"] == list(arrays[fname].shape)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == m
    assert m["kind"] == "llmesr-semantic" and m["format_version"] == 1
    assert m["encoder"] == {"name": "imported", "identity": "authors-bundle", "dim": D,
                            "label": "authors-ada002"}
    assert m["dataset"]["manifest_sha256"] == sha256_file(dataset / "manifest.json")
    assert m["dataset"]["name"] == "llmesr-inter"
    assert m["counts"] == {"items": N, "users": U, "dim": D, "has_users": True, "pca_dim": 4,
                           "neighbors": 3}
    assert m["self_in_neighbors"] == 0 and m["notes"] == []
    assert sorted(p.name for p in (dataset / "semantic").iterdir()) == ["authors-ada002"]


def test_items_only_and_overwrite(tmp_path, dataset):
    emb = np.random.default_rng(2).normal(size=(N, D))
    src = tmp_path / "only_items"
    _dump(src / "itm_emb_np.pkl", emb)
    m = import_authors_files(dataset, src, allow_pickle=True, name="mine")
    out = dataset / "semantic" / "mine"
    assert sorted(p.name for p in out.iterdir()) == ["items.npy", "manifest.json"]
    assert m["counts"]["has_users"] is False and m["neighbors"] is None
    with pytest.raises(LlmesrError, match="already exists"):
        import_authors_files(dataset, src, allow_pickle=True, name="mine")
    _dump(src / "itm_emb_np.pkl", emb * 2)
    import_authors_files(dataset, src, allow_pickle=True, name="mine", overwrite=True)
    assert np.array_equal(np.load(out / "items.npy"), (emb * 2).astype(np.float32))


def test_missing_item_file(tmp_path, dataset):
    src = tmp_path / "empty"
    src.mkdir()
    with pytest.raises(LlmesrError, match="itm_emb_np.pkl not found"):
        import_authors_files(dataset, src, allow_pickle=True)


def test_bad_name(dataset, bundle):
    with pytest.raises(LlmesrError, match="invalid name"):
        import_authors_files(dataset, bundle["dir"], allow_pickle=True, name="../x")


# ---- validation against the dataset -------------------------------------------------------

@pytest.mark.parametrize("fname, arr, match", [
    ("itm_emb_np.pkl", np.zeros((N + 2, D)),
     rf"itm_emb_np.pkl has shape \({N + 2}, {D}\): {N + 2} rows but the dataset has {N} "
     "items.*right dataset"),
    ("itm_emb_np.pkl", np.zeros(N), r"2-D"),
    ("usr_emb_np.pkl", np.zeros((U - 1, D)),
     rf"usr_emb_np.pkl has shape \({U - 1}, {D}\): {U - 1} rows but the dataset has {U} users"),
    ("usr_emb_np.pkl", np.zeros((U, D + 1)), r"dimension 8"),
    ("pca64_itm_emb_np.pkl", np.zeros((N + 1, 4)), r"pca64_itm_emb_np.pkl has shape"),
    ("sim_user_100.pkl", np.zeros((U + 1, 3), dtype=np.int64),
     rf"sim_user_100.pkl has shape \({U + 1}, 3\) but the dataset has {U} users"),
    ("sim_user_100.pkl", np.zeros((U, 3)), "integer"),
    ("itm_emb_np.pkl", np.full((N, D), np.nan), "NaN"),
])
def test_shape_and_type_mismatches(dataset, bundle, fname, arr, match):
    _dump(bundle["dir"] / fname, arr)
    with pytest.raises(LlmesrError, match=match):
        import_authors_files(dataset, bundle["dir"], allow_pickle=True)
    assert not (dataset / "semantic").exists()


@pytest.mark.parametrize("bad", [U, -1])
def test_out_of_range_neighbors(dataset, bundle, bad):
    sim = bundle["arrays"]["sim_user_100.pkl"].copy()
    sim[4, 1] = bad
    _dump(bundle["dir"] / "sim_user_100.pkl", sim)
    with pytest.raises(LlmesrError, match=rf"row 4 column 1 holds {bad}, outside .*\[0, {U}\)"):
        import_authors_files(dataset, bundle["dir"], allow_pickle=True)
    assert not (dataset / "semantic").exists()


def test_item_ids_must_be_the_authors(tmp_path, bundle):
    # item 4 never occurs: the dataset's item 4 is raw item '5', so rows would be shifted
    text = INTER.replace(" 4\n", " 5\n")
    ds = _prepare(tmp_path, text, sub="gap")
    with pytest.raises(LlmesrError, match=r"item id 4 has raw id '5'.*id_order=source"):
        import_authors_files(ds, bundle["dir"], allow_pickle=True)
    # renumbered by first appearance: item 1 is raw item '3'
    ds2 = _prepare(tmp_path, settings=dict(SETTINGS, id_order="file"), sub="renumbered")
    with pytest.raises(LlmesrError, match=r"item id 1 has raw id '3'"):
        import_authors_files(ds2, bundle["dir"], allow_pickle=True)


def test_user_file_rows_follow_the_dataset(tmp_path):
    ds = _prepare(tmp_path, "2 1\n2 2\n1 3\n1 4\n1 5\n", sub="u")  # 2 users, 5 items
    src = tmp_path / "b2"
    _dump(src / "itm_emb_np.pkl", np.ones((5, 3)))
    _dump(src / "usr_emb_np.pkl", np.ones((3, 3)))
    with pytest.raises(LlmesrError, match=r"usr_emb_np.pkl has shape \(3, 3\).*has 2 users"):
        import_authors_files(ds, src, allow_pickle=True)
    assert not (ds / "semantic").exists()
    (src / "usr_emb_np.pkl").unlink()
    m = import_authors_files(ds, src, allow_pickle=True)
    assert m["counts"] == {"items": 5, "users": 2, "dim": 3, "has_users": False,
                           "pca_dim": None, "neighbors": None}


def test_user_raw_ids_mismatch(tmp_path, bundle):
    import pandas as pd

    ds = _prepare(tmp_path, sub="users")
    users = pd.read_parquet(ds / "users.parquet")
    users.loc[0, "raw_id"] = "7"
    users.to_parquet(ds / "users.parquet", index=False)
    with pytest.raises(LlmesrError, match=r"user id 1 has raw id '7'"):
        import_authors_files(ds, bundle["dir"], allow_pickle=True)
    # without user-indexed files the user ids do not matter
    for f in ("usr_emb_np.pkl", "sim_user_100.pkl"):
        (bundle["dir"] / f).unlink()
    import_authors_files(ds, bundle["dir"], allow_pickle=True)


# ---- self-neighbours -----------------------------------------------------------------------

def _expected_fix(sim: np.ndarray, emb: np.ndarray, u: int) -> np.ndarray:
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    s = unit @ unit[u]
    row = [int(v) for v in sim[u] if v != u]
    candidates = sorted((j for j in range(len(emb)) if j != u and j not in row),
                        key=lambda j: (-s[j], j))
    return np.array(row + candidates[:len(sim[u]) - len(row)])


def test_self_neighbor_fix(dataset, bundle):
    emb = bundle["arrays"]["usr_emb_np.pkl"]
    sim = bundle["arrays"]["sim_user_100.pkl"].copy()
    sim[2] = [sim[2][0], 2, sim[2][1]]  # row 2 lists itself in the middle
    sim[5] = [5, sim[5][0], sim[5][1]]  # row 5 lists itself first
    _dump(bundle["dir"] / "sim_user_100.pkl", sim)
    m = import_authors_files(dataset, bundle["dir"], allow_pickle=True)
    got = np.load(dataset / "semantic" / "authors-ada002" / "neighbors.npy")
    assert m["self_in_neighbors"] == 2
    assert m["neighbors"]["fixed_rows"] == 2 and m["neighbors"]["self_rows"] == [2, 5]
    for u in range(U):
        assert u not in got[u]
        if u in (2, 5):
            assert np.array_equal(got[u], _expected_fix(sim, emb, u))
        else:
            assert np.array_equal(got[u], sim[u])
    # row 2: the two real neighbours keep their order, then the best remaining one
    assert list(got[2][:2]) == [sim[2][0], sim[2][2]]
    # with the authors' recipe this equals the true top-3 of row 2 / row 5
    true = _neighbors(emb, 3)
    assert np.array_equal(got[5], true[5]) and np.array_equal(got[2], true[2])
    assert any("contained the user itself" in n for n in m["notes"])


def test_self_neighbor_fix_disabled_keeps_rows(dataset, bundle):
    sim = bundle["arrays"]["sim_user_100.pkl"].copy()
    sim[3] = [3, sim[3][0], sim[3][1]]
    _dump(bundle["dir"] / "sim_user_100.pkl", sim)
    m = import_authors_files(dataset, bundle["dir"], allow_pickle=True,
                             fix_self_neighbors=False)
    got = np.load(dataset / "semantic" / "authors-ada002" / "neighbors.npy")
    assert np.array_equal(got, sim.astype(np.int32))
    assert m["self_in_neighbors"] == 1 and m["neighbors"]["fixed_rows"] == 0
    assert any("kept as released" in n for n in m["notes"])


def test_self_neighbor_fix_needs_user_embeddings(dataset, bundle):
    sim = bundle["arrays"]["sim_user_100.pkl"].copy()
    sim[1] = [1, sim[1][0], sim[1][1]]
    _dump(bundle["dir"] / "sim_user_100.pkl", sim)
    (bundle["dir"] / "usr_emb_np.pkl").unlink()
    with pytest.raises(LlmesrError, match=r"usr_emb_np.pkl.*fix_self_neighbors=False"):
        import_authors_files(dataset, bundle["dir"], allow_pickle=True)
    assert not (dataset / "semantic").exists()
    m = import_authors_files(dataset, bundle["dir"], allow_pickle=True,
                             fix_self_neighbors=False)
    assert m["self_in_neighbors"] == 1


def test_self_neighbor_fix_with_duplicate_embeddings(dataset, bundle):
    # users 0 and 4 share an embedding: the authors' argsort may put 4 first in row 0's list,
    # so dropping column 0 keeps row 0 itself
    emb = bundle["arrays"]["usr_emb_np.pkl"].copy()
    emb[4] = emb[0]
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    order = np.argsort(-(unit @ unit.T), axis=1, kind="stable")
    order[0, :2] = [4, 0]  # the tie resolved the "wrong" way
    sim = order[:, 1:4]
    _dump(bundle["dir"] / "usr_emb_np.pkl", emb)
    _dump(bundle["dir"] / "sim_user_100.pkl", sim)
    m = import_authors_files(dataset, bundle["dir"], allow_pickle=True)
    got = np.load(dataset / "semantic" / "authors-ada002" / "neighbors.npy")
    # row 0 lists itself; row 4 too (its stable argsort put its twin 0 first)
    assert m["self_in_neighbors"] == 2 and m["neighbors"]["self_rows"] == [0, 4]
    # the twin is the best remaining candidate and fills the freed last slot
    assert list(got[0]) == [*[int(v) for v in order[0, 2:4]], 4]
    assert list(got[4]) == [*[int(v) for v in order[4, 2:4]], 0]


def test_self_neighbor_fix_impossible_when_too_few_users(dataset, bundle):
    sim = np.array([[(u + d) % U for d in range(U)] for u in range(U)])  # K == U: self in all
    _dump(bundle["dir"] / "sim_user_100.pkl", sim)
    with pytest.raises(LlmesrError, match="cannot fix user row 0"):
        import_authors_files(dataset, bundle["dir"], allow_pickle=True)


# ---- atomic output -------------------------------------------------------------------------

def test_failure_while_writing_leaves_nothing(dataset, bundle, monkeypatch):
    calls = {"n": 0}
    real_save = np.save

    def flaky_save(path, arr, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real_save(path, arr, *a, **kw)

    monkeypatch.setattr(authors.np, "save", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        import_authors_files(dataset, bundle["dir"], allow_pickle=True)
    semantic = dataset / "semantic"
    assert not semantic.exists() or list(semantic.iterdir()) == []


def test_failed_overwrite_keeps_previous_import(dataset, bundle, monkeypatch):
    import_authors_files(dataset, bundle["dir"], allow_pickle=True)
    out = dataset / "semantic" / "authors-ada002"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(authors, "write_json_atomic",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError, match="boom"):
        import_authors_files(dataset, bundle["dir"], allow_pickle=True, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in (dataset / "semantic").iterdir()) == ["authors-ada002"]
