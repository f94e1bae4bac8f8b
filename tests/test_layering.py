"""Imports point one way: cli -> api -> methods -> learn | pipeline -> passes (design 2).

The contracts live in pyproject.toml ``[tool.importlinter]`` and are checked by ``lint-imports``
(import-linter). import-linter finds a package's modules by walking its folder, and in the
checkout ``smof_onnx.passes`` lives in ``passes/`` (a package-dir mapping), so the check runs on a
copy laid out as the wheel installs it: ``smof_onnx/`` with ``passes/`` at ``smof_onnx/passes``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("importlinter", reason="install the test extra: pip install -e '.[test]'")


def wheel_layout(dest: Path) -> Path:
    """Copy smof_onnx/ and passes/ into ``dest`` as the wheel lays them out; returns ``dest``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "smof_onnx", dest / "smof_onnx", ignore=ignore)
    shutil.copytree(ROOT / "passes", dest / "smof_onnx" / "passes", ignore=ignore)
    return dest


def lint_imports(tree: Path, config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    script = Path(sys.executable).with_name("lint-imports")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "importlinter.cli"]
    return subprocess.run(cmd + [str(config), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return wheel_layout(tmp_path_factory.mktemp("layout"))


def test_import_contracts_are_kept(tree):
    result = lint_imports(tree, ROOT / "pyproject.toml")
    report = result.stdout + result.stderr
    assert "Contracts:" in report, report  # the contracts were read and checked
    assert result.returncode == 0, report


def test_a_broken_contract_is_reported(tree, tmp_path):
    """The check can fail: a passes module that imports the api breaks the layers contract."""
    bad = tmp_path / "bad"
    shutil.copytree(tree, bad)
    (bad / "smof_onnx" / "passes" / "upward.py").write_text("from smof_onnx import api  # noqa: F401\n")
    config = tmp_path / "layers.toml"
    config.write_text('[tool.importlinter]\nroot_packages = ["smof_onnx"]\n\n'
                      '[[tool.importlinter.contracts]]\nname = "layers"\ntype = "layers"\n'
                      'layers = ["smof_onnx.api", "smof_onnx.passes"]\n')
    result = lint_imports(bad, config)
    assert result.returncode != 0
    assert "smof_onnx.passes.upward -> smof_onnx.api" in result.stdout + result.stderr


_UPWARD = """
import json, grimp
graph = grimp.build_graph("smof_onnx", cache_dir=None)
passes = {m for m in graph.modules if m == "smof_onnx.passes" or m.startswith("smof_onnx.passes.")}
upward = sorted(
    f"{d['importer']}:{d['line_number']} -> {d['imported']}"
    for importer in passes
    for imported in graph.find_modules_directly_imported_by(importer) - passes
    if imported == "smof_onnx" or imported.startswith("smof_onnx.")
    for d in graph.get_import_details(importer=importer, imported=imported))
print(json.dumps({"passes": sorted(passes), "upward": upward}))
"""


def passes_imports_upward(tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run([sys.executable, "-c", _UPWARD], cwd=tree, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_passes_imports_nothing_of_smof_onnx_outside_passes(tree, tmp_path):
    """passes/ is the graph library: of smof_onnx it may import only smof_onnx.passes (and never torch,
    a contract of pyproject.toml). Checked for every module, so a module added later is covered too."""
    found = passes_imports_upward(tree)
    assert "smof_onnx.passes.pipeline" in found["passes"]  # the copy was analysed, passes included
    assert not found["upward"], "passes imports smof_onnx outside smof_onnx.passes:\n" + "\n".join(found["upward"])

    bad = tmp_path / "bad"
    shutil.copytree(tree, bad)
    (bad / "smof_onnx" / "passes" / "upward.py").write_text("import smof_onnx.report  # noqa: F401\n")
    assert passes_imports_upward(bad)["upward"] == ["smof_onnx.passes.upward:1 -> smof_onnx.report"]
