"""The layout of the learning stage: torch-free selection apart, imports one way, no circles.

Read from the source (``ast``), so a violation fails here before it fails a user without torch.
"""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "smof_onnx"


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path, top_level_only: bool) -> set[str]:
    return _imports_of(path.read_text(), _module_name(path), path.name == "__init__.py", top_level_only)


def _imports_of(source: str, name: str, is_package: bool, top_level_only: bool) -> set[str]:
    """Absolute names of the smof_onnx modules that ``source`` (module ``name``) imports
    (``from . import x`` counts as the module ``x`` when it is one)."""
    package = name if is_package else name.rsplit(".", 1)[0]
    tree = ast.parse(source)
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("smof_onnx")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("smof_onnx"):
                continue
            out.add(mod)
            for a in node.names:
                if (PKG.parent / (mod.replace(".", "/") + f"/{a.name}.py")).exists():
                    out.add(f"{mod}.{a.name}")
    return out


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (module -> modules it imports), or None."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def _files(*subdirs: str) -> list[pathlib.Path]:
    return sorted(p for d in subdirs for p in (PKG / d).glob("*.py"))


def test_selection_imports_without_torch():
    """The torch-free half (and the methods' option handling) imports with torch blocked."""
    mods = [_module_name(p) for p in _files("selection")] + ["smof_onnx.methods"]
    code = ("import sys, importlib\nsys.modules['torch'] = None\n"
            + "".join(f"importlib.import_module({m!r})\n" for m in mods)
            + "assert sys.modules['torch'] is None\nprint('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_learn_and_selection_never_import_methods_and_selection_never_imports_learn():
    for path in _files("learn", "selection"):
        bad = {m for m in _imports(path, top_level_only=False) if m.startswith("smof_onnx.methods")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
    for path in _files("selection"):
        bad = {m for m in _imports(path, top_level_only=False) if m.startswith("smof_onnx.learn")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
        top = [n for n in ast.parse(path.read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert not [n for n in top if "torch" in ast.unparse(n)], f"{path.relative_to(ROOT)} imports torch"


def test_no_import_circles_in_learn_and_selection():
    """Module-level imports among learn/ and selection/ form no cycle (the op modules register
    into :mod:`smof_onnx.learn.ops_registry`, which imports none of them)."""
    files = _files("learn", "selection")
    names = {_module_name(p) for p in files}
    graph = {_module_name(p): {m for m in _imports(p, top_level_only=True) if m in names} for p in files}
    circle = _circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_checks_see_a_methods_import_and_a_circle():
    """The helpers above are not blind: the imports the old layout had are found."""
    found = _imports_of("from ..methods import FEATURE_DISTILL\n", "smof_onnx.learn.train", False, True)
    assert found == {"smof_onnx.methods"}
    found = _imports_of("from . import ops_nn, ops_tensor\n", "smof_onnx.learn.ops", False, True)
    assert found == {"smof_onnx.learn", "smof_onnx.learn.ops_nn", "smof_onnx.learn.ops_tensor"}
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
