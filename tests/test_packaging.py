"""The wheel's package list (pyproject.toml [tool.setuptools] packages) names every package of the
source tree, so a new subpackage cannot be left out of the wheel (it was: smof_onnx.selection);
the version has one source, and the test zoo and the bench stay out."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def source_packages() -> set[str]:
    """Import names of every folder with an __init__.py, as the wheel maps them."""
    names = set()
    for top, name in (("smof_onnx", "smof_onnx"), ("passes", "smof_onnx.passes")):
        for init in (ROOT / top).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(ROOT / top).parts
            names.add(".".join((name, *rel)))
    return names


def test_every_package_is_in_the_wheel():
    cfg = _pyproject()["tool"]["setuptools"]
    assert cfg["package-dir"] == {"smof_onnx.passes": "passes"}
    listed = set(cfg["packages"])
    assert source_packages() - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert not any(p.split(".")[0] in ("passes", "models", "tests", "bench") for p in listed)


def test_version_has_one_source():
    project = _pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "smof_onnx.__version__"}
    tree = ast.parse((ROOT / "smof_onnx" / "__init__.py").read_text())
    assigned = [n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "__version__"]
    assert len(assigned) == 1 and isinstance(assigned[0].value, ast.Constant)  # read statically by setuptools


def test_license_is_declared_and_shipped():
    project = _pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
