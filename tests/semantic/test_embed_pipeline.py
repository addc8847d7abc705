"""The embed stage end to end with the hashing encoder: outputs, reuse, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llmesr.data.pipeline import prepare
from llmesr.errors import LlmesrError
from llmesr.semantic.cache import EmbeddingCache, embed_texts, text_key
from llmesr.semantic.encoders import HashingEncoder
from llmesr.semantic.pipeline import embed
from tests.conftest import write

WORDS = ["red", "blue", "soft", "cream", "lip", "balm", "oil", "hair", "nail", "gloss", "matte",
         "rose", "mint", "shea", "argan", "clay"]


def make_dataset(tmp_path: Path, n_items: int = 600, n_users: int = 150) -> Path:
    rng = np.random.default_rng(0)
    rows = ["user_id,item_id,ts"]
    for u in range(n_users):
        for k, it in enumerate(rng.permutation([(u * 8 + j) % n_items for j in range(8)])):
            rows.append(f"u{u},i{it},{k}")
    inter = write(tmp_path / "inter.csv", "\n".join(rows) + "\n")
    titles = [" ".join(rng.choice(WORDS, size=3)) + f" {i}" for i in range(n_items)]
    items = write(tmp_path / "items.csv", "item_id,title\n" + "".join(
        f"i{i},{t}\n" for i, t in enumerate(titles)))
    out = tmp_path / "ds"
    prepare("table", out, source=inter, items=items, reader_options={"time_col": "ts"},
            settings={"kcore_user": 0, "kcore_item": 0, "min_history": 0}, log=lambda *a: None)
    return out


def test_cache_roundtrip_and_dedup(tmp_path):
    cache = EmbeddingCache(tmp_path, "hash|dim=8|v1")
    enc = HashingEncoder(dim=8)
    calls = []

    def encode(texts):
        calls.append(len(texts))
        return enc.encode(texts)

    vecs, stats = embed_texts(["a b", "c", "a b", "d e f"], encode, cache, shard_size=2,
                              progress=False)
    assert stats == {"texts": 4, "unique": 3, "cached": 0, "computed": 3}
    assert calls == [2, 1] and np.allclose(vecs[0], vecs[2])
    again = EmbeddingCache(tmp_path, "hash|dim=8|v1")
    assert len(again) == 3 and text_key("c") in again
    vecs2, stats2 = embed_texts(["d e f", "c"], encode, again, progress=False)
    assert stats2["computed"] == 0 and calls == [2, 1]
    assert np.array_equal(vecs2, vecs[[3, 1]])
    other = EmbeddingCache(tmp_path, "hash|dim=16|v1")  # another identity shares nothing
    assert len(other) == 0


def test_keys_ending_in_a_nul_byte_survive_a_reload(tmp_path):
    # numpy's S32 strips trailing NUL bytes: such a key (1 text in 256) was never found again
    texts = [f"text {i}" for i in range(5000)]
    nul = [t for t in texts if text_key(t).endswith(b"\0")][:3]
    assert nul
    cache = EmbeddingCache(tmp_path, "x")
    cache.put([text_key(t) for t in nul], np.arange(3 * 4, dtype=np.float32).reshape(3, 4))
    again = EmbeddingCache(tmp_path, "x")
    assert all(text_key(t) in again for t in nul)
    np.testing.assert_array_equal(again.get([text_key(t) for t in nul]),
                                  cache.get([text_key(t) for t in nul]))


def test_refresh_reads_shards_other_processes_wrote(tmp_path):
    a, b = EmbeddingCache(tmp_path, "x"), EmbeddingCache(tmp_path, "x")
    a.put([text_key("one")], np.ones((1, 4), np.float32))
    assert text_key("one") not in b
    assert b.refresh() == 1 and text_key("one") in b
    assert a.refresh() == 0          # its own shard is indexed already


def test_corrupt_shard_is_set_aside(tmp_path):
    cache = EmbeddingCache(tmp_path, "x")
    cache.put([text_key("a")], np.ones((1, 4), dtype=np.float32))
    shard = next(cache.dir.glob("shard-*.npz"))
    shard.write_bytes(shard.read_bytes()[:20])
    (cache.dir / ".shard-abc.tmp").write_bytes(b"half")
    fresh = EmbeddingCache(tmp_path, "x")
    assert len(fresh) == 0 and not list(cache.dir.glob(".*.tmp"))
    assert list(cache.dir.glob("*.corrupt"))


def test_embed_outputs_and_reuse(tmp_path):
    ds = make_dataset(tmp_path)
    logs: list[str] = []
    m = embed(ds, encoder=HashingEncoder(dim=32), pca_dim=8, neighbors=5, progress=False,
              log=logs.append)
    out = next((ds / "semantic").glob("hash32-*"))
    items = np.load(out / "items.npy")
    users = np.load(out / "users.npy")
    nb = np.load(out / "neighbors.npy")
    assert items.shape == (600, 32) and users.shape == (150, 32)
    assert np.load(out / "items_pca.npy").shape == (600, 8)
    assert nb.shape == (150, 5) and nb.dtype == np.int32
    assert not (nb == np.arange(150)[:, None]).any()
    assert m["stages"]["items"]["computed"] == 600
    assert set(m["files"]) >= {"items.npy", "users.npy", "neighbors.npy", "items_pca.npy"}
    # a second run reuses every stage
    logs.clear()
    m2 = embed(ds, encoder=HashingEncoder(dim=32), pca_dim=8, neighbors=5, progress=False,
               log=logs.append)
    assert any("unchanged" in line for line in logs)
    assert m2["stages"] == m["stages"]
    # the user prompt only sees training items: changing a test item changes nothing
    manifest = json.loads((out / "manifest.json").read_text())
    assert "user" in manifest["examples"] and manifest["prompt"]["domain"] == "generic"


def test_embed_refuses_dataset_without_text(tmp_path):
    f = write(tmp_path / "inter.txt", "1 1\n1 2\n1 3\n2 1\n2 2\n2 3\n")
    prepare("llmesr-inter", tmp_path / "ds", source=f, settings={"kcore_user": 0,
            "kcore_item": 0}, log=lambda *a: None)
    with pytest.raises(LlmesrError, match="no item text"):
        embed(tmp_path / "ds", encoder=HashingEncoder(dim=8), progress=False)


def _run_embed(ds: Path, cache: Path, delay: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "llmesr.cli", "embed", str(ds), "--encoder", "hash:32",
           "--encoder-opt", "batch_size=8", "--encoder-opt", f"delay={delay}",
           "--cache-dir", str(cache), "--neighbors", "0", "--pca-dim", "8", "--quiet"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_midway_then_resume(tmp_path):
    """Kill an embedding run with SIGKILL; the restart embeds only what was not saved."""
    ds = make_dataset(tmp_path)
    cache = tmp_path / "cache"
    proc = _run_embed(ds, cache, delay=0.15)   # 64 texts per shard, 10 shards of items
    deadline = time.monotonic() + 60
    shards: list[Path] = []
    while time.monotonic() < deadline:
        shards = list(cache.glob("*/shard-*.npz"))
        if len(shards) >= 3:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = len(EmbeddingCache(cache, HashingEncoder(dim=32).identity))
    assert 0 < saved < 600 + 150, saved   # interrupted midway
    assert not list((ds / "semantic").glob("hash32-*/manifest.json"))

    proc = _run_embed(ds, cache, delay=0.0)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    out = next((ds / "semantic").glob("hash32-*"))
    m = json.loads((out / "manifest.json").read_text())
    computed = m["stages"]["items"]["computed"] + m["stages"]["users"]["computed"]
    unique = m["stages"]["items"]["unique"] + m["stages"]["users"]["unique"]
    assert computed == unique - saved   # nothing that finished was recomputed

    # identical to an uninterrupted run in a fresh cache
    ref = make_dataset(tmp_path / "ref")
    embed(ref, encoder=HashingEncoder(dim=32), pca_dim=8, neighbors=0, progress=False,
          cache_dir=tmp_path / "cache2", log=lambda *a: None)
    ref_out = next((ref / "semantic").glob("hash32-*"))
    for name in ("items.npy", "users.npy", "items_pca.npy"):
        assert np.array_equal(np.load(out / name), np.load(ref_out / name)), name
