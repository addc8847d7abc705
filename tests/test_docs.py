"""The documentation site builds with `mkdocs build --strict` (a broken link or anchor fails),
every command has its section, and the README stays a short front door whose links resolve."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llmesr.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path):
    for module in ("mkdocs", "material"):
        if importlib.util.find_spec(module) is None:
            pytest.fail(f"{module} is not installed; it comes with the test extra: "
                        "pip install -e '.[test]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(REPO / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for page in ("index.html", "python-api/index.html", "commands/index.html",
                 "results/beauty-sasrec-3seeds/groups.png", "benchmarks/suite-cpu-2core.json"):
        assert (tmp_path / "site" / page).is_file(), page


def test_every_command_has_a_section():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = (REPO / "docs" / "commands.md").read_text(encoding="utf-8")
    missing = [name for name in sub.choices if f"## `llmesr {name}`" not in text]
    assert not missing, f"docs/commands.md has no section for: {missing}"


def test_readme_is_short_and_its_links_resolve():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    # the first code block is the two commands; CI runs exactly the second
    first = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).splitlines()
    assert len(first) == 2 and first[0].endswith("llmesr demo")
    assert first[1] in (REPO / ".ci" / "run").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme):
        if "://" not in target:
            assert (REPO / target).exists(), f"README links to a missing file: {target}"
