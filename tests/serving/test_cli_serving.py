"""`llmesr recommend`, `llmesr add-items` and `llmesr serve` argument handling."""

from __future__ import annotations

import json

import pytest

from llmesr.cli import main
from llmesr.data.artifact import load_dataset

pytestmark = pytest.mark.shared_data


def test_recommend_prints_json(trained_run, beauty_subset, capsys, tmp_path):
    ds = load_dataset(beauty_subset)
    raw = ds.item_table["raw_id"].tolist()
    assert main(["recommend", str(trained_run), "--history", f"{raw[0]},{raw[1]},zzz",
                 "-k", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["items"]) == 4 and out["unknown"] == ["zzz"] and out["used"] == 2
    batch = tmp_path / "h.jsonl"
    batch.write_text(json.dumps([raw[0]]) + "\n\n" + json.dumps([raw[2], raw[3]]) + "\n")
    assert main(["recommend", str(trained_run), "--batch", str(batch), "-k", "2",
                 "--include-seen"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [len(json.loads(x)["items"]) for x in lines] == [2, 2]


def test_add_items_from_a_file(run_copy, tmp_path, capsys):
    items = tmp_path / "items.json"
    items.write_text(json.dumps([{"id": "C1", "title": "argan oil"},
                                 {"id": "C2", "text": "a blue nail polish"}]))
    assert main(["add-items", str(run_copy), str(items)]) == 0
    assert "added 2 item(s)" in capsys.readouterr().out
    assert main(["recommend", str(run_copy), "--history", "C1,C2"]) == 0
    assert json.loads(capsys.readouterr().out)["used"] == 2


@pytest.mark.parametrize("argv, message", [
    (["add-items", "RUN", "BAD"], "line 2: not valid JSON"),
    (["add-items", "RUN", "DUP"], "already exists"),
    (["recommend", "RUN", "--history", "1", "-k", "0"], "-k must be at least 1"),
    (["recommend", "RUN", "--batch", "BAD"], "line 2: not valid JSON"),
    (["serve", "RUN", "--port", "70000"], "--port must be"),
    (["serve", "RUN", "--max-k", "0"], "--max-k must be at least 1"),
    (["recommend", "NOWHERE", "--history", "1"], "not a run directory"),
])
def test_mistakes_are_one_line_errors(run_copy, tmp_path, capsys, argv, message):
    (tmp_path / "BAD").write_text('{"id": "A", "title": "x"}\n{oops\n')
    (tmp_path / "DUP").write_text('{"id": "A", "title": "x"}\n{"id": "A", "title": "y"}\n')
    argv = [str(run_copy) if a == "RUN" else str(tmp_path / a) if a in ("BAD", "DUP",
                                                                        "NOWHERE") else a
            for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (run_copy / "added_items").exists()
