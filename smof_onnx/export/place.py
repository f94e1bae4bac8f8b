"""Destinations of an export, checked before any work, and placed all together or not at all.

An export is one file (``.onnx``, ``.ort``, ``.tflite``), or two for OpenVINO (``NAME.xml`` and
``NAME.bin``, which ``read_model`` pairs by stem), plus the optional JSON report. Everything is
written in a work folder beside the destination (same file system, so ``os.replace`` is atomic
per file), verified there, then moved into place; a destination that already existed is set
aside first and restored if any later move fails, so a failure leaves what was there before.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import UsageError

def destination(output, suffix: str) -> Path:
    """Where an artifact file goes: ``output`` itself (suffix ""), ``output`` with another suffix
    (OpenVINO's ``.bin``), or ``output`` + ``.data`` (external data of an ONNX model over 2 GB)."""
    out = Path(output)
    if not suffix:
        return out
    return out.parent / (out.name + suffix) if suffix == ".data" else out.with_suffix(suffix)


def check_paths(src: Path | None, output, to: str, report_path) -> None:
    """UsageError naming the option when a destination cannot or must not be written."""
    out = Path(output)
    if to == "openvino" and out.suffix.lower() != ".xml":
        raise UsageError(f"-o {output}: an OpenVINO IR is NAME.xml plus NAME.bin; give -o {out.with_suffix('.xml')}")
    taken = [out] + ([out.with_suffix(".bin")] if to == "openvino" else [])
    for what, path in [("-o", p) for p in taken] + ([("--report", Path(report_path))] if report_path else []):
        if path.is_dir() or str(path).endswith(("/", os.sep)):
            raise UsageError(f"{what} {path} is a directory; give the file to write")
        parent = next(p for p in (path.parent, *path.parent.parents) if p.exists() or p == p.parent)
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"{what} {path}: {parent} is not a writable directory; choose another path")
        if src is not None and path.resolve() == src.resolve():
            raise UsageError(f"{what} {path} is the input model; the input is never modified, choose another path")
    if report_path is not None and Path(report_path).resolve() in {p.resolve() for p in taken}:
        raise UsageError(f"--report {report_path} is a file of the export itself; give the report its own name")


def work_folder(output) -> Path:
    parent = Path(output).parent
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".smof-export-", dir=parent))


def place(moves: list[tuple[Path, Path]]) -> None:
    """``os.replace`` every (source, destination), all or none (earlier files restored on failure)."""
    backups: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for _, dest in moves:
            if dest.exists():
                fd, keep = tempfile.mkstemp(prefix=f".{dest.name}.old.", dir=dest.parent)
                os.close(fd)
                os.replace(dest, keep)
                backups.append((Path(keep), dest))
        for src, dest in moves:
            os.replace(src, dest)
            placed.append(dest)
    except BaseException:
        for dest in placed:
            dest.unlink(missing_ok=True)
        for keep, dest in backups:
            os.replace(keep, dest)
        raise
    for keep, _ in backups:
        keep.unlink(missing_ok=True)
