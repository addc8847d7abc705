"""Bad input to `recommend`, `add-items` and `serve`, tried as a user would: each gets one
line `llmesr: error: ...` and exit status 2, never a traceback, and changes nothing."""

from __future__ import annotations

import io
import json
import socket
import sys

import pytest

from llmesr.cli import main

pytestmark = pytest.mark.shared_data


def _config(run, **changes):
    cfg = json.loads((run / "config.json").read_text())
    cfg.update(changes)
    (run / "config.json").write_text(json.dumps(cfg))


BROKEN_RUNS = {
    "config {}": (lambda r: (r / "config.json").write_text("{}"), "no 'configs' section"),
    "config []": (lambda r: (r / "config.json").write_text("[]"), "not a JSON object"),
    "config truncated": (lambda r: (r / "config.json").write_text(
        (r / "config.json").read_text()[:100]), "config.json is unreadable"),
    "config not UTF-8": (lambda r: (r / "config.json").write_bytes(b"\xff\xfe{}"),
                         "config.json is unreadable"),
    "config without settings": (lambda r: (r / "config.json").write_text(json.dumps(
        {"configs": {}, "dataset": {"num_items": 3}})), "settings are invalid"),
    "config a folder": (lambda r: ((r / "config.json").unlink(), (r / "config.json").mkdir()),
                        "not a run directory"),
    "llm_dim not a number": (lambda r: _config(r, llm_dim="a"), "llm_dim is 'a'"),
    "weights of another model": (lambda r: _config(r, llm_dim=64), "do not fit"),
    "weights missing": (lambda r: (r / "model.safetensors").unlink(), "no trained weights"),
    "weights truncated": (lambda r: (r / "model.safetensors").write_bytes(
        (r / "model.safetensors").read_bytes()[:1000]), "missing or corrupt"),
    "bundle manifest []": (lambda r: (r / "bundle" / "manifest.json").write_text("[]"),
                           "not an llmesr 1 serving bundle"),
    "bundle manifest cut": (lambda r: (r / "bundle" / "manifest.json").write_text(json.dumps(
        {"kind": "llmesr-bundle", "format_version": 1})), "manifest.json is damaged"),
    "added items not ours": (lambda r: ((r / "added_items").mkdir(), (
        r / "added_items" / "manifest.json").write_text('{"kind": "x"}')), "is corrupt"),
}


def _one_line_error(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmesr: error: ") and err.count("\n") == 1, err
    assert message in err, err
    return err


@pytest.mark.parametrize("case", list(BROKEN_RUNS))
def test_a_damaged_run_directory_is_one_line(run_copy, capsys, case):
    damage, message = BROKEN_RUNS[case]
    damage(run_copy)
    _one_line_error(capsys, ["recommend", str(run_copy), "--history", "1,2"], message)


@pytest.mark.parametrize("argv, message", [
    (["recommend", "RUN", "--batch", "LATIN1"], "line 2: not valid UTF-8"),
    (["add-items", "RUN", "LATIN1"], "line 2: not valid UTF-8"),
    (["recommend", "RUN", "--batch", "FOLDER"], "is a folder"),
    (["add-items", "RUN", "FOLDER"], "is a folder"),
    (["recommend", "RUN", "--batch", "DEEP"], "nested too deeply"),
    (["recommend", "RUN", "--batch", "SURROGATE"], "not valid Unicode"),
    (["add-items", "RUN", "SURROGATE_TITLE"], "not valid Unicode"),
    (["add-items", "RUN", "SURROGATE_ID"], "not valid Unicode"),
    (["recommend", "RUN", "--history", "1,a\udcff"], "not valid Unicode"),   # bytes not UTF-8
    (["recommend", "RUN", "--history", "1", "--device", "banana"], "unknown device"),
    (["recommend", "RUN/config.json", "--history", "1"], "is a file"),
    (["add-items", "RUN/config.json", "ITEMS"], "is a file"),
])
def test_bad_input_files_are_one_line(run_copy, tmp_path, capsys, argv, message):
    files = {
        "LATIN1": '["1"]\n["caf\xe9"]\n'.encode("latin-1"),
        "DEEP": b"[" * 100_000 + b"]" * 100_000,
        "SURROGATE": b'["1", "\\ud800"]\n',
        "SURROGATE_TITLE": b'{"id": "N1", "title": "bad \\ud800 text"}\n',
        "SURROGATE_ID": b'{"id": "\\udfff", "title": "x"}\n',
        "ITEMS": b'{"id": "N1", "title": "x"}\n',
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "FOLDER").mkdir()
    if argv[0] == "add-items" and "LATIN1" in argv:
        (tmp_path / "LATIN1").write_bytes('{"id": "N1", "title": "x"}\n{"id": "N2", '
                                          '"title": "caf\xe9"}\n'.encode("latin-1"))
    argv = [a.replace("RUN", str(run_copy)) if a.startswith("RUN") else
            str(tmp_path / a) if a in (*files, "FOLDER") else a for a in argv]
    _one_line_error(capsys, argv, message)
    assert not (run_copy / "added_items").exists()


def test_standard_input_that_is_not_utf8(run_copy, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"id": "\xff"}\n')))
    _one_line_error(capsys, ["add-items", str(run_copy), "-"], "standard input line 1: not "
                    "valid UTF-8")


def test_a_reader_that_stops_early_gets_no_traceback(trained_run, tmp_path, capsys):
    import contextlib

    (tmp_path / "h.jsonl").write_text('["1"]\n' * 50)

    class Closed(io.StringIO):          # `llmesr recommend --batch ... | head -1`
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

    with contextlib.redirect_stdout(Closed()):
        rc = main(["recommend", str(trained_run), "--batch", str(tmp_path / "h.jsonl")])
    assert rc == 141 and capsys.readouterr().err == ""


def test_serve_on_a_port_in_use_is_one_line(trained_run, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        _one_line_error(capsys, ["serve", str(trained_run), "--port", str(port)],
                        f"port {port} is already in use")


def test_serve_on_an_address_of_another_machine_is_one_line(trained_run, capsys):
    _one_line_error(capsys, ["serve", str(trained_run), "--host", "192.0.2.1", "--port",
                             "8123"], "not an address of this machine")


def test_serve_on_a_broken_run_is_one_line(run_copy, capsys):
    (run_copy / "config.json").write_text("{}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _one_line_error(capsys, ["serve", str(run_copy), "--port", str(port)],
                    "no 'configs' section")


def test_add_items_that_cannot_be_saved_is_one_line(run_copy, tmp_path, capsys, monkeypatch):
    import llmesr.serving.recommender as recommender

    def denied(target, *a, **k):
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(recommender, "replace_directory", denied)   # a read-only run
    (tmp_path / "items.jsonl").write_text('{"id": "N1", "title": "x"}\n')
    _one_line_error(capsys, ["add-items", str(run_copy), str(tmp_path / "items.jsonl")],
                    "cannot save the added items")
