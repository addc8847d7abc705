"""`add-items` and RUN_DIR/added_items/: a kill at any instant loses no item, leftovers never
block the next start, and two processes adding items to one run keep each other's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from llmesr.cli import main
from llmesr.serving import Recommender
from llmesr.serving.recommender import ItemExistsError
from llmesr.training import checkpoint as ck

pytestmark = pytest.mark.shared_data


def _leftovers(run) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith(".added_items")
                  and not p.name.endswith(".lock"))


def _item(i: str) -> dict:
    return {"id": i, "title": f"item {i} argan oil shampoo"}


def test_a_kill_at_every_step_of_add_items_loses_nothing(run_copy, tmp_path, monkeypatch):
    r = Recommender.load(run_copy)
    r.add_items([_item("A1"), _item("A2")])
    shots = {}
    monkeypatch.setattr(ck, "STEP_HOOK", lambda step: shots.setdefault(
        step, shutil.copytree(run_copy, tmp_path / "shots" / step)))
    r.add_items([_item("B1")])
    monkeypatch.setattr(ck, "STEP_HOOK", None)
    assert set(shots) == {"filled", "committed", "aside", "swapped", "cleaned"}
    for step, shot in shots.items():
        # before the commit the interrupted call's item is not there yet; after it, it is
        have = ["A1", "A2"] + ([] if step == "filled" else ["B1"])
        rec = Recommender.load(shot)
        assert rec.num_added == len(have) and all(i in rec for i in have), step
        assert _leftovers(shot) == [], step
        rec.add_items([_item("C1")])                      # the next add-items keeps them all
        again = Recommender.load(shot)
        assert again.num_added == len(have) + 1 and all(i in again for i in have + ["C1"])
        assert _leftovers(shot) == []


def test_what_older_versions_left_when_killed_is_recovered(run_copy):
    r = Recommender.load(run_copy)
    r.add_items([_item("A1"), _item("A2")])
    # llmesr 0.1, killed between its two renames: the items only in a hidden copy ...
    os.replace(run_copy / "added_items", run_copy / f".added_items.old-{4242}")
    # ... and a killed add-items' unfinished temporary folder
    half = run_copy / ".added_items.x1y2z3w4.partial"
    half.mkdir()
    (half / "items.parquet").write_bytes(b"half a file")
    rec = Recommender.load(run_copy)
    assert rec.num_added == 2 and "A1" in rec and "A2" in rec
    assert _leftovers(run_copy) == []
    rec.add_items([_item("B1")])
    assert Recommender.load(run_copy).num_added == 3
    # killed between the renames after a whole temporary was written: the newer one wins
    shutil.copytree(run_copy / "added_items", run_copy / ".added_items.old-7")
    Recommender.load(run_copy).add_items([_item("B2")])
    os.replace(run_copy / "added_items", run_copy / ".added_items.abcdefgh.partial")
    rec = Recommender.load(run_copy)
    assert rec.num_added == 4 and "B2" in rec and _leftovers(run_copy) == []


_CHILD = textwrap.dedent("""
    import os, signal, sys
    from llmesr.training import checkpoint as ck
    from llmesr.cli import main

    # SIGKILL at the instant the issue describes: the old folder moved aside, the new one
    # not yet in its place
    ck.STEP_HOOK = lambda s: os.kill(os.getpid(), signal.SIGKILL) if s == "aside" else None
    main(["add-items", sys.argv[1], sys.argv[2]])
""")


def test_a_real_sigkill_in_the_middle_of_add_items(run_copy, tmp_path, capsys):
    Recommender.load(run_copy).add_items([_item("A1")])
    (tmp_path / "new.jsonl").write_text(json.dumps(_item("B1")) + "\n")
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(run_copy),
                           str(tmp_path / "new.jsonl")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (run_copy / "added_items").exists()         # the state the kill left
    assert main(["recommend", str(run_copy), "--history", "A1,B1", "-k", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["unknown"] == []
    (tmp_path / "more.jsonl").write_text(json.dumps(_item("C1")) + "\n")
    assert main(["add-items", str(run_copy), str(tmp_path / "more.jsonl")]) == 0
    assert "(3 added)" in capsys.readouterr().out
    assert _leftovers(run_copy) == []


def test_two_processes_adding_items_keep_each_others(run_copy):
    a = Recommender.load(run_copy)          # e.g. `llmesr serve` ...
    b = Recommender.load(run_copy)          # ... and `llmesr add-items` at the same time
    a.add_items([_item("X")])
    b.add_items([_item("Y")])
    assert "X" in b and b.item("X")["added"]
    with pytest.raises(ItemExistsError):
        a.add_items([_item("Y")])           # a reads what b saved before adding
    assert "Y" in a
    c = Recommender.load(run_copy)
    assert c.num_added == 2 and "X" in c and "Y" in c
    assert c.item("Y")["title"] == "item Y argan oil shampoo"
