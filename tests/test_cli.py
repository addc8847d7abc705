"""The command line: bad input ends with one line on stderr, exit 2, no traceback, no artifact."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llmesr.cli import main
from tests.conftest import write


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_error(code, err, needle):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("llmesr: error: ")
    assert needle in lines[0]
    assert "Traceback" not in err


@pytest.fixture()
def csv_files(tmp_path):
    inter = write(tmp_path / "inter.csv", "uid,iid,ts\n" + "".join(
        f"u{u},i{(u + k) % 7},{k}\n" for u in range(6) for k in range(5)))
    items = write(tmp_path / "items.csv", "iid,title\n" + "".join(f"i{k},Item {k}\n"
                                                                   for k in range(7)))
    return inter, items


def test_prepare_table_and_info(tmp_path, csv_files, capsys):
    inter, items = csv_files
    out = tmp_path / "ds"
    code, stdout, _ = run(["prepare", "table", "--source", str(inter), "--items", str(items),
                           "--user-col", "uid", "--item-col", "iid", "--time-col", "ts",
                           "--kcore-user", "0", "--kcore-item", "0", "--ts-user", "4",
                           "--out", str(out)], capsys)
    assert code == 0
    assert "users        6" in stdout and "ts_user = 4 (user)" in stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"] == {**m["counts"], "users": 6, "items": 7, "interactions": 30}
    assert m["reader"]["options"]["user_col"] == "uid"
    code, stdout, _ = run(["info", str(out), "--verify"], capsys)
    assert code == 0 and "tail users" in stdout and "all files match" in stdout
    code, stdout, _ = run(["info", str(out), "--json"], capsys)
    assert json.loads(stdout)["name"] == "table"


def test_missing_file(tmp_path, capsys):
    code, _, err = run(["prepare", "table", "--source", str(tmp_path / "none.csv"),
                        "--out", str(tmp_path / "ds")], capsys)
    assert_clean_error(code, err, "not found")
    assert not (tmp_path / "ds").exists()


def test_wrong_format(tmp_path, capsys):
    f = write(tmp_path / "seq.txt", "this is not a sequence file\n")
    code, _, err = run(["prepare", "s3rec", "--source", str(f), "--out", str(tmp_path / "ds")],
                       capsys)
    assert_clean_error(code, err, "seq.txt:1:")
    assert not (tmp_path / "ds").exists()


def test_malformed_line_number(tmp_path, capsys):
    f = write(tmp_path / "inter.txt", "1 1\n1 2\n1 3\n2 1\n2 two\n")
    code, _, err = run(["prepare", "llmesr-inter", "--source", str(f), "--out",
                        str(tmp_path / "ds")], capsys)
    assert_clean_error(code, err, "inter.txt:5:")


def test_missing_column(tmp_path, csv_files, capsys):
    inter, _ = csv_files
    code, _, err = run(["prepare", "table", "--source", str(inter), "--out",
                        str(tmp_path / "ds")], capsys)
    assert_clean_error(code, err, "missing column 'user_id'")


def test_unknown_item_in_text_file(tmp_path, capsys):
    seq = write(tmp_path / "S.txt", "1 1 2 3\n2 2 3 1\n")
    text = write(tmp_path / "t.txt", "1 a\n2 b\n3 c\n44 d\n")
    code, _, err = run(["prepare", "s3rec", "--source", str(seq), "--items", str(text),
                        "--out", str(tmp_path / "ds")], capsys)
    assert_clean_error(code, err, "t.txt:4: unknown item '44'")


@pytest.mark.shared_data
def test_checksum_mismatch(tmp_path, shared_data, capsys):
    folder = tmp_path / "llmesr-paper-splits"
    folder.mkdir()
    real = (shared_data / "llmesr-paper-splits" / "fashion_inter.txt").read_text()
    (folder / "fashion_inter.txt").write_text(real.replace("1 1\n", "1 2\n", 1))
    code, _, err = run(["prepare", "llmesr-fashion", "--source", str(folder), "--out",
                        str(tmp_path / "ds")], capsys)
    assert_clean_error(code, err, "checksum mismatch")
    assert not (tmp_path / "ds").exists()


def test_nothing_left_after_filtering(tmp_path, csv_files, capsys):
    inter, _ = csv_files
    code, _, err = run(["prepare", "table", "--source", str(inter), "--user-col", "uid",
                        "--item-col", "iid", "--min-history", "50", "--out",
                        str(tmp_path / "ds")], capsys)
    assert_clean_error(code, err, "no interactions left")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inter.csv", "items.csv"]


def test_bad_option_values(tmp_path, csv_files, capsys):
    inter, _ = csv_files
    code, _, err = run(["prepare", "table", "--source", str(inter), "--user-col", "uid",
                        "--item-col", "iid", "--kcore-mode", "sometimes", "--out",
                        str(tmp_path / "ds")], capsys)
    assert_clean_error(code, err, "kcore_mode must be one of")
    code, _, err = run(["prepare", "table", "--source", str(inter), "--kcore-user", "many",
                        "--out", str(tmp_path / "ds")], capsys)
    assert_clean_error(code, err, "needs a number")
    code, _, err = run(["prepare", "nosuchdata", "--out", str(tmp_path / "ds")], capsys)
    assert_clean_error(code, err, "unknown dataset or format 'nosuchdata'")
    code, _, err = run(["prepare", "s3rec", "--source", str(inter), "--user-col", "u",
                        "--out", str(tmp_path / "ds")], capsys)
    assert_clean_error(code, err, "only apply to 'prepare table'")


def test_info_on_non_dataset(tmp_path, capsys):
    code, _, err = run(["info", str(tmp_path)], capsys)
    assert_clean_error(code, err, "no manifest.json")


def test_console_script_exit_code(tmp_path):
    """The installed entry point itself exits 2 with a one-line message."""
    proc = subprocess.run([sys.executable, "-m", "llmesr.cli", "prepare", "table", "--source",
                           str(tmp_path / "x.csv"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "llmesr.cli", "--version"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("llmesr ")


def test_datasets_listing(capsys):
    code, out, _ = run(["datasets"], capsys)
    assert code == 0 and "beauty-s3rec" in out and "amazon2014" in out


def test_import_authors_needs_allow_pickle(tmp_path, capsys):
    code, _, err = run(["import-authors", str(tmp_path), "--source", str(tmp_path)], capsys)
    assert_clean_error(code, err, "--allow-pickle")


def test_embed_cli_with_hash_encoder(tmp_path, csv_files, capsys):
    inter, items = csv_files
    out = tmp_path / "ds"
    assert main(["prepare", "table", "--source", str(inter), "--items", str(items),
                 "--user-col", "uid", "--item-col", "iid", "--time-col", "ts", "--kcore-user",
                 "0", "--kcore-item", "0", "--quiet", "--out", str(out)]) == 0
    code, stdout, _ = run(["embed", str(out), "--encoder", "hash:16", "--pca-dim", "4",
                           "--neighbors", "3", "--quiet"], capsys)
    assert code == 0
    folder = next((out / "semantic").glob("hash16-*"))
    m = json.loads((folder / "manifest.json").read_text())
    assert m["stages"]["neighbors"]["k"] == 3 and m["dim"] == 16
    code, _, err = run(["embed", str(out), "--encoder", "hash:16", "--backend", "annoy"],
                       capsys)
    assert_clean_error(code, err, "annoy")
