"""Every path a run reads, and the one check that keeps its outputs off them.

A run reads (:func:`run_reads`): the model file, the files its tensors keep their external
data in (``location`` entries, relative to the model's folder), and ``--data`` -- the file,
or every file under the folder. It writes: ``-o OUT``, ``OUT.data`` (the cut model's weights
when it is over 2 GB, :func:`smof_onnx.passes.graph.save_model`) and ``--report``.

:func:`check_outputs` refuses, before any work, with a :class:`UsageError` naming both paths:

- an output that is one of the files read (the same path after resolving ``..`` and symlinks,
  or the same inode: a hard link) -- writing it would destroy an input of the run;
- an output that exists and is not a regular file after following symlinks (a FIFO, a
  character device such as ``/dev/null``, a socket, a directory): the atomic rename would
  replace the special file by a regular one;
- an output under a file, naming a directory, or in a folder without write permission;
- an image file written into the ``--data`` folder (the next run would read it as data);
- two outputs on the same file (the report on the model or on its ``OUT.data``).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Iterable

import onnx

from .errors import UsageError

__all__ = ["run_reads", "check_outputs", "external_data_files", "data_file"]

Read = tuple[str, Path]  # (what it is, for the message; the path)


def data_file(output: Any) -> Path:
    """The external-data file of a model saved at ``output`` (``OUT.data``, save_model's name)."""
    path = Path(output)
    return path.parent / (path.name + ".data")


def external_data_files(src: Path) -> set[Path]:
    """The files the tensors of the model at ``src`` keep their data in (graph and subgraphs)."""
    try:
        raw = onnx.load(str(src), load_external_data=False)
    except Exception:  # noqa: BLE001 -- unreadable models are refused by the loader with their own message
        return set()
    files: set[Path] = set()

    def visit(graph: onnx.GraphProto) -> None:
        tensors = [*graph.initializer, *(t for s in graph.sparse_initializer for t in (s.values, s.indices))]
        for node in graph.node:
            for attr in node.attribute:
                tensors += ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    visit(sub)
        for tensor in tensors:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                location = next((e.value for e in tensor.external_data if e.key == "location"), None)
                if location:
                    files.add(src.parent / location)

    visit(raw.graph)
    return files


def run_reads(model: Any = None, data: Any = None) -> list[Read]:
    """The files a run reads: the model (a path), its external data, and ``--data`` (a path)."""
    reads: list[Read] = []
    if isinstance(model, (str, os.PathLike)):
        src = Path(model)
        reads.append(("the input model", src))
        if src.is_file():
            reads += [("the input model's external data", p) for p in sorted(external_data_files(src))]
    if isinstance(data, (str, os.PathLike)):
        d = Path(data)
        reads.append(("--data", d))
        if d.is_dir():
            reads += [("a file of the --data folder", p) for p in sorted(d.rglob("*")) if p.is_file()]
    return reads


def check_outputs(reads: Iterable[Read], output: Any = None, report_path: Any = None,
                  model_name: str = "model.onnx", report_flag: str = "--report") -> None:
    """Refuse outputs that would destroy what the run reads, or cannot be written (module docstring).
    ``report_flag``: how messages name ``report_path`` (``plan`` writes its JSON with ``-o``)."""
    reads = list(reads)
    targets: list[tuple[str, Path, str]] = []
    given = []
    if output is not None:
        targets.append(("-o", Path(output), model_name))
        given.append(output)
    if report_path is not None:
        targets.append((report_flag, Path(report_path), "report.json"))
        given.append(report_path)
    for (what, t, example), g in zip(targets, given):
        _check_writable(what, g, t, example)
    if output is not None:
        targets.append((f"-o {output} (its external data)", data_file(output), ""))
    index = {}  # every identity of every read -> (role, path): one stat per file, for folders of images
    for role, r in reads:
        for key in _keys(r):
            index.setdefault(key, (role, r))
    for what, t, _ in targets:
        _check_kind(what, t)
        hit = next((index[k] for k in _keys(t) if k in index), None)
        if hit is not None:
            role, r = hit
            if role == "the input model":
                raise UsageError(f"{what} {t} is the input model; the input file is never modified, "
                                 "choose another output path")
            if role == "the input model's external data":
                raise UsageError(f"{what} {t} holds the weights of the input model (its external data, {r}); "
                                 "the input is never modified, choose another output path")
            raise UsageError(f"{what} {t} is {role} ({r}), which this run reads; writing it would destroy "
                             "that input: choose another output path")
        for r in [r for role, r in reads if role == "--data"]:
            if r.is_dir() and _inside(t, r) and t.suffix.lower() in _IMAGE_SUFFIXES:
                raise UsageError(f"{what} {t} is inside the --data folder {r}, and would be read as an image by the "
                                 "next run; choose a path outside it")
    if output is not None and report_path is not None:
        _check_distinct(output, report_path)


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _check_writable(what: str, given: Any, t: Path, example: str) -> None:
    if t.is_dir() or os.fspath(given).endswith(("/", os.sep)):
        kind = "is a directory" if t.is_dir() else "names a directory (ends with a slash)"
        raise UsageError(f"{what} {given} {kind}; give the file to write, e.g. {what} {t / example}")
    existing = next(p for p in (t.parent, *t.parent.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise UsageError(f"{what} {given}: {existing} is a file, not a directory, so nothing can be "
                         "written under it; choose a path in a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {given}: no permission to write in {existing}; choose a writable directory")


def _check_kind(what: str, t: Path) -> None:
    """An existing output must be a regular file (symlinks followed): the rename would replace a
    FIFO or a device (``-o /dev/null`` as root would replace the system's /dev/null)."""
    try:
        st = os.stat(t)
    except FileNotFoundError:
        return  # absent, or a dangling symlink: the rename replaces the link itself
    except OSError as exc:
        raise UsageError(f"{what} {t}: cannot be checked ({exc.strerror or exc}); choose another output path") from exc
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{what} {t} is a directory; give the file to write")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a character device" if stat.S_ISCHR(st.st_mode)
                else "a block device" if stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "not a regular file")
        link = f" (through the symlink {t})" if t.is_symlink() else ""
        raise UsageError(f"{what} {t} exists and is {kind}{link}; outputs are written as regular files and would "
                         "replace it: choose a regular file path")


def _check_distinct(output: Any, report_path: Any) -> None:
    other = Path(output).with_suffix(".report.json")
    if _same_file(Path(report_path), Path(output)):
        raise UsageError(f"--report {report_path} is the -o model path: the report would replace the model; "
                         f"give the report its own name, e.g. --report {other}")
    if _same_file(Path(report_path), data_file(output)):
        raise UsageError(f"--report {report_path} is where the weights of -o {output} go when it is written with "
                         f"external data (models over 2 GB); give the report another name, e.g. --report {other}")


def _keys(path: Path) -> list:
    """What identifies the file ``path`` names: its resolved path, and (device, inode) when it exists."""
    try:
        keys: list = [str(path.resolve())]
    except OSError:  # a symlink loop, a path too long: compared by name only
        keys = [os.path.abspath(path)]
    try:
        st = os.stat(path)
        keys.append((st.st_dev, st.st_ino))
    except OSError:
        pass
    return keys


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:  # a symlink loop, a path too long: compared by name only
        return os.path.abspath(a) == os.path.abspath(b)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False
