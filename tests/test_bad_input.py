"""Bad input and faults, tried as a user would (issue 17 §3-§4): each ends with one line on
stderr and exit status 2, never a traceback, and leaves nothing half-written behind."""

from __future__ import annotations

import gzip
import json
import logging
import os
import stat
import warnings

import numpy as np
import pandas as pd
import pytest

from llmesr.cli import main
from tests.conftest import write

ITEMS = 40   # a catalogue under 64 items: the default --pca-dim and hidden do not fit
USERS = 30


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_error(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("llmesr: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def prepare_table(source, out, *extra):
    return [str(a) for a in ["prepare", "table", "--source", source, "--out", out,
                             "--kcore-user", "0", "--kcore-item", "0", *extra]]


@pytest.fixture()
def tiny(tmp_path, capsys):
    """A 30-user, 40-item dataset with item titles, prepared (not embedded)."""
    inter = write(tmp_path / "inter.csv", "uid,iid,ts\n" + "".join(
        f"u{u},i{(3 * u + k) % ITEMS},{k}\n" for u in range(USERS) for k in range(6)))
    items = write(tmp_path / "items.csv", "iid,title\n" + "".join(
        f"i{k},Item number {k} thing\n" for k in range(ITEMS)))
    out = tmp_path / "ds"
    assert main(prepare_table(inter, out, "--items", items, "--user-col", "uid",
                              "--item-col", "iid", "--time-col", "ts", "--quiet")) == 0
    capsys.readouterr()
    return out


@pytest.fixture()
def embedded(tiny, capsys):
    """``tiny`` embedded with hash:32 (PCA 32); returns (dataset dir, embeddings folder)."""
    assert main(["embed", str(tiny), "--encoder", "hash:32", "--pca-dim", "32",
                 "--neighbors", "5", "--quiet"]) == 0
    capsys.readouterr()
    return tiny, next((tiny / "semantic").glob("hash32-*"))


# ---- prepare ---------------------------------------------------------------------------------

def test_header_only_csv_with_a_time_column(tmp_path, capsys):
    src = write(tmp_path / "h.csv", "user_id,item_id,timestamp\n")
    code, _, err = run(prepare_table(src, tmp_path / "o", "--time-col", "timestamp"), capsys)
    assert_clean_error(code, err, "no interactions were read from")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("body, needle", [
    ("[1, 2]\n", "a.jsonl:1: expected a JSON object"),
    ('{"user_id": "u", "item_id": "i"}\n["u", "i"]\n', "a.jsonl:2: expected a JSON object"),
    ('{"user_id": "u", "item_id": "i"}\n{"user_id": \n', "a.jsonl:2: not valid JSON"),
])
def test_json_lines_whose_line_is_not_an_object(tmp_path, capsys, body, needle):
    src = write(tmp_path / "a.jsonl", body)
    code, _, err = run(prepare_table(src, tmp_path / "o"), capsys)
    assert_clean_error(code, err, needle)


def test_json_lines_table_still_reads(tmp_path, capsys):
    src = write(tmp_path / "a.jsonl", "".join(
        json.dumps({"user_id": f"u{u}", "item_id": i, "ts": 10 * i}) + "\n"
        for u in range(3) for i in range(4)))
    code, _, err = run(prepare_table(src, tmp_path / "o", "--time-col", "ts", "--quiet"),
                       capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["counts"]["users"] == 3 and m["counts"]["items"] == 4


def test_truncated_gzip_table(tmp_path, capsys):
    data = gzip.compress(b"user_id,item_id\n" + b"".join(
        f"u{k % 97},i{k % 89}\n".encode() for k in range(50_000)))
    src = tmp_path / "t.csv.gz"
    src.write_bytes(data[: len(data) // 2])
    code, _, err = run(prepare_table(src, tmp_path / "o"), capsys)
    assert_clean_error(code, err, "t.csv.gz", "truncated")


def test_one_huge_field_does_not_ask_for_terabytes(tmp_path, capsys):
    """A 2 MB "id" (a wrong separator, an open quote) in 20,000 rows: a NumPy "<U" array of
    ids would want 160 GB. Now memory follows the input and the id is refused by line."""
    lines = ["user_id,item_id", "u" + "x" * 2_000_000 + ",i1"]
    lines += [f"u{k % 500},i{k % 50}" for k in range(20_000)]
    src = write(tmp_path / "big.csv", "\n".join(lines) + "\n")
    code, _, err = run(prepare_table(src, tmp_path / "o"), capsys)
    assert_clean_error(code, err, "big.csv:2:", "user id is 2,000,001 characters")
    assert len(err) < 500


def test_duplicated_header_column(tmp_path, capsys):
    src = write(tmp_path / "dup.csv", "user_id,item_id,user_id\nu1,i1,u2\nu2,i2,u3\n")
    code, _, err = run(prepare_table(src, tmp_path / "o"), capsys)
    assert_clean_error(code, err, "dup.csv:1:", "'user_id' twice")
    items = write(tmp_path / "items.csv", "item_id,title,title\ni1,a,b\n")
    good = write(tmp_path / "ok.csv", "user_id,item_id\nu1,i1\n")
    code, _, err = run(prepare_table(good, tmp_path / "o", "--items", items), capsys)
    assert_clean_error(code, err, "items.csv:1:", "'title' twice")


@pytest.mark.parametrize("value", ["inf", "-inf", "1e30", "99999999999999999999"])
def test_absurd_timestamps_are_refused_by_line(tmp_path, capsys, value):
    """They used to become garbage integers, with only a RuntimeWarning from the cast."""
    src = write(tmp_path / "t.csv", f"user_id,item_id,ts\nu1,i1,5\nu1,i2,{value}\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = run(prepare_table(src, tmp_path / "o", "--time-col", "ts"), capsys)
    assert_clean_error(code, err, "t.csv:3:", "not a Unix time")
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_absurd_timestamps_in_recbole_and_movielens(tmp_path, capsys):
    inter = write(tmp_path / "x.inter", "user_id:token\titem_id:token\ttimestamp:float\n"
                  "u1\ti1\t5\nu1\ti2\t1e30\n")
    code, _, err = run(["prepare", "recbole", "--source", inter, "--out", tmp_path / "o"],
                       capsys)
    assert_clean_error(code, err, "x.inter:3:", "not a Unix time")
    folder = tmp_path / "ml"
    write(folder / "u.data", "1\t1\t5\t881250949\n1\t2\t3\t99999999999999999999\n")
    write(folder / "u.item", "1|A (1995)|01-Jan-1995||x|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n")
    code, _, err = run(["prepare", "movielens-100k", "--source", folder, "--out",
                        tmp_path / "o"], capsys)
    assert_clean_error(code, err, "u.data:2:", "not a Unix time")


def test_parquet_datetime_column_is_read_as_seconds(tmp_path):
    from llmesr.data.readers.table import parse_times

    s = pd.Series(pd.to_datetime(["1970-01-01 00:00:10", "2020-01-01 00:00:00"]))
    assert parse_times(s, tmp_path / "x.parquet", "parquet").tolist() == [10, 1577836800]


@pytest.mark.parametrize("name, body", [
    ("text.txt", b"1 caf\xe9 latte\n2 tea\n"),
    ("text.json", b'{"1": "tea",\n "2": "caf\xe9"}'),
])
def test_item_text_that_is_not_utf8(tmp_path, capsys, name, body):
    seq = write(tmp_path / "S.txt", "1 1 2\n2 2 1\n")
    text = tmp_path / name
    text.write_bytes(body)
    code, _, err = run(["prepare", "s3rec", "--source", seq, "--items", text, "--out",
                        tmp_path / "o"], capsys)
    line = 1 if name == "text.txt" else 2
    assert_clean_error(code, err, f"{name}:{line}: not valid utf-8")


def test_folders_where_files_are_expected(tmp_path, capsys):
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    seq = write(tmp_path / "S.txt", "1 1 2\n2 2 1\n")
    code, _, err = run(prepare_table(folder, tmp_path / "o"), capsys)
    assert_clean_error(code, err, "is not a file")
    code, _, err = run(["prepare", "s3rec", "--source", seq, "--items", folder, "--out",
                        tmp_path / "o"], capsys)
    assert_clean_error(code, err, "item-text file is not a file")
    good = write(tmp_path / "ok.csv", "user_id,item_id\nu1,i1\nu1,i2\nu1,i3\n")
    code, _, err = run(prepare_table(good, seq / "out"), capsys)      # --out under a file
    assert_clean_error(code, err, "a file of that name is in the way")


def test_info_on_damaged_datasets(tiny, tmp_path, capsys):
    import shutil

    for name, damage in (("list", lambda d: (d / "manifest.json").write_text("[]")),
                         ("nocounts", lambda d: (d / "manifest.json").write_text(json.dumps(
                             {k: v for k, v in json.loads((tiny / "manifest.json").read_text())
                              .items() if k != "counts"}))),
                         ("parquet", lambda d: (d / "users.parquet").write_text("garbage"))):
        d = tmp_path / name
        shutil.copytree(tiny, d)
        damage(d)
        code, _, err = run(["embed", d, "--encoder", "hash:16"], capsys)
        assert_clean_error(code, err, str(d))


# ---- embed -----------------------------------------------------------------------------------

def test_embed_when_semantic_is_a_file(tiny, capsys):
    (tiny / "semantic").write_text("not a folder")
    code, _, err = run(["embed", tiny, "--encoder", "hash:16", "--pca-dim", "4"], capsys)
    assert_clean_error(code, err, "semantic", "in the way")


def test_embed_cache_under_a_file(tiny, tmp_path, capsys):
    blocker = write(tmp_path / "blocker", "x")
    code, _, err = run(["embed", tiny, "--encoder", "hash:16", "--pca-dim", "4",
                        "--cache-dir", blocker / "cache"], capsys)
    assert_clean_error(code, err, "cannot create the embedding cache folder")


def test_embed_into_an_unwritable_folder(tiny, capsys, monkeypatch):
    """Tests run as root, who may write anywhere: the refusal is simulated where the
    pipeline writes its arrays."""
    import llmesr.semantic.pipeline as pipeline

    def refuse(path, array):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(pipeline, "_save_npy", refuse)
    code, _, err = run(["embed", tiny, "--encoder", "hash:16", "--pca-dim", "4", "--quiet"],
                       capsys)
    assert_clean_error(code, err, "Permission denied", "items.npy")


@pytest.mark.parametrize("args, needle", [
    (["--encoder-opt", "colour=blue"], "has no option(s) colour; its options are: dim, "
                                       "batch_size"),
    (["--encoder-opt", "batch_size=abc"], "batch_size='abc': expected an integer"),
    (["--encoder-opt", "batch_size=0"], "batch_size must be >= 1"),
    (["--encoder", "hash:abc"], "must be an integer"),
    (["--encoder", "openai:m", "--encoder-opt", "timeout=soon"], "timeout='soon'"),
    (["--encoder", "default", "--encoder-opt", "normalize=maybe"], "expected true or false"),
    (["--encoder", "default", "--encoder-opt", "bogus=1"], "options are: device"),
])
def test_embed_bad_encoder_options(tiny, capsys, args, needle):
    if "--encoder" not in args:
        args = ["--encoder", "hash:16", *args]
    code, _, err = run(["embed", tiny, *args], capsys)
    assert_clean_error(code, err, needle)
    assert not any((tiny / "semantic").glob("*/items.npy")) if (tiny / "semantic").is_dir() \
        else True


def test_encoder_options_are_converted(tiny):
    from llmesr.semantic.encoders import make_encoder

    enc = make_encoder("hash:16", batch_size="7")
    assert enc.batch_size == 7 and enc.dim == 16
    enc = make_encoder("default", batch_size="3", normalize="true", max_seq_length="none")
    assert enc.batch_size == 3 and enc.normalize is True and enc.max_seq_length is None


def test_small_catalogue_gets_a_smaller_pca_and_a_clear_train_error(tiny, capsys):
    code, out, err = run(["embed", tiny, "--encoder", "hash:128", "--neighbors", "5"], capsys)
    assert code == 0, err
    assert f"using {ITEMS}" in out and f"--set hidden={ITEMS}" in out
    folder = next((tiny / "semantic").glob("hash128-*"))
    assert np.load(folder / "items_pca.npy").shape == (ITEMS, ITEMS)
    m = json.loads((folder / "manifest.json").read_text())
    assert m["stages"]["pca"]["dim"] == ITEMS and m["stages"]["pca"]["dim_asked"] == 64
    code, _, err = run(["train", tiny, "--model", "llmesr", "--epochs", "1", "--out",
                        tiny.parent / "run"], capsys)
    assert_clean_error(code, err, f"has {ITEMS} dimensions but the model has hidden=64",
                       f"--set hidden={ITEMS}")


# ---- train's data files ----------------------------------------------------------------------

def _train_error(data, run_dir, capsys, *needles):
    code, _, err = run(["train", data, "--model", "llmesr", "--epochs", "1", "--set",
                        "hidden=32", "--out", run_dir], capsys)
    assert_clean_error(code, err, *needles)


def test_neighbors_that_name_users_that_do_not_exist(embedded, tmp_path, capsys):
    data, folder = embedded
    nb = np.load(folder / "neighbors.npy")
    nb[3, 0] = USERS + 500
    np.save(folder / "neighbors.npy", nb)
    _train_error(data, tmp_path / "run", capsys, "neighbors.npy names user row 530",
                 f"0..{USERS - 1}")


def test_truncated_item_embeddings(embedded, tmp_path, capsys):
    data, folder = embedded
    raw = (folder / "items.npy").read_bytes()
    (folder / "items.npy").write_bytes(raw[: len(raw) // 2])
    _train_error(data, tmp_path / "run", capsys, "items.npy is truncated or damaged",
                 "llmesr embed")


def test_embeddings_of_the_wrong_size(embedded, tmp_path, capsys):
    data, folder = embedded
    items = np.load(folder / "items.npy")
    np.save(folder / "items.npy", items[:-3])
    _train_error(data, tmp_path / "run", capsys, f"{ITEMS - 3:,} rows but the dataset has "
                 f"{ITEMS:,} items")
    np.save(folder / "items.npy", items)
    pca = np.load(folder / "items_pca.npy")
    np.save(folder / "items_pca.npy", pca[:, :16])
    _train_error(data, tmp_path / "run", capsys, "has 16 dimensions but the model has "
                 "hidden=32", "--pca-dim 32")


def test_unknown_embeddings_name_lists_the_known_ones(embedded, tmp_path, capsys):
    data, folder = embedded
    code, _, err = run(["train", data, "--model", "llmesr", "--embeddings", "nope", "--out",
                        tmp_path / "run"], capsys)
    assert_clean_error(code, err, "no embeddings at", folder.name)


# ---- permissions -----------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_follow_the_umask(tmp_path, capsys, umask):
    inter = write(tmp_path / "inter.csv", "uid,iid\n" + "".join(
        f"u{u},i{(u + k) % 9}\n" for u in range(8) for k in range(5)))
    items = write(tmp_path / "items.csv", "iid,title\n" + "".join(f"i{k},t {k}\n"
                                                                   for k in range(9)))
    old = os.umask(umask)
    try:
        assert main(prepare_table(inter, tmp_path / "ds", "--items", items, "--user-col",
                                  "uid", "--item-col", "iid", "--quiet")) == 0
        assert main(["embed", str(tmp_path / "ds"), "--encoder", "hash:8", "--pca-dim", "4",
                     "--neighbors", "2", "--quiet"]) == 0
    finally:
        os.umask(old)
    capsys.readouterr()
    paths = [tmp_path / "ds", *(tmp_path / "ds").rglob("*")]
    assert len(paths) > 15
    for p in paths:
        mode = stat.S_IMODE(p.stat().st_mode)
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        assert mode == want, f"{p}: {oct(mode)}, expected {oct(want)}"


def test_atomic_helpers_follow_the_umask(tmp_path):
    from llmesr.data.io import atomic_directory, atomic_file, write_json_atomic

    old = os.umask(0o002)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
        with atomic_file(tmp_path / "b.bin") as f:
            f.write(b"x")
        with atomic_directory(tmp_path / "d") as d:
            (d / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o664
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o664
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o775
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---- the demo's download -----------------------------------------------------------------

def test_demo_fallback_download_is_calm(tmp_path, capsys, caplog, monkeypatch, shared_data):
    """GroupLens unreachable, a local copy there: no warning on stderr, the fallback said
    as information."""
    from llmesr.data.fetch import movielens_100k

    monkeypatch.setenv("LLMESR_DATA_ROOT", str(shared_data))
    lines: list[str] = []
    with caplog.at_level(logging.WARNING):
        name, folder = movielens_100k(tmp_path / "cache", log=lines.append, use_pip=False,
                                      grouplens_url="http://127.0.0.1:9/ml-100k.zip")
    assert name == "ml-100k" and (folder / "ml-100k.inter").is_file()
    assert capsys.readouterr().err == ""
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("not reachable" in line for line in lines)
    assert not any("failed" in line.lower() for line in lines)


def test_download_retry_notices_can_be_redirected(tmp_path):
    from llmesr.data.download import download
    from llmesr.errors import LlmesrError

    notices: list[str] = []
    with pytest.raises(LlmesrError, match="could not reach"):
        download("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", retries=2, timeout=2,
                 sleep=lambda s: None, on_retry=notices.append)
    assert len(notices) == 2 and "retrying" in notices[0]


def test_describe_os_error_names_path_and_cause():
    from llmesr.data.io import describe_os_error

    msg = describe_os_error(NotADirectoryError(20, "Not a directory", "/a/b"), "write x")
    assert msg == ("cannot write x: /a/b: Not a directory (a part of that path is a file, "
                   "not a folder)")
    assert "disk is full" in describe_os_error(OSError(28, "No space left on device"), "w")
