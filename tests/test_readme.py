"""The README's Python API example runs as written (from a temporary directory, paths rooted at
the repository) and its first code block opens with the two fresh-clone commands."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_is_short_and_opens_with_the_set_up_and_test_commands():
    assert len(README.splitlines()) <= 200
    first = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert len(first) == 2
    assert "pip install torch==2.13.0" in first[0] and "smof-onnx compress models/default/" in first[0]
    assert first[1] == "python -m pytest -q -n 2"


def test_the_python_api_example_runs(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    code = code.replace('"models/', f'"{ROOT}/models/')
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 -- the README's own example
    assert (tmp_path / "small.onnx").is_file() and (tmp_path / "report.json").is_file()
    assert scope["report"]["flops"]["ratio"] <= 0.5 + 1e-9
    assert (tmp_path / "cut.onnx").is_file() and scope["info"]
