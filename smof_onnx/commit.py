"""Writing a run's results: the model and its report, both or neither, and a message that tells the truth.

:func:`commit` stages the report in a temp file beside its target (a report that cannot be
serialised stops the run before any write), writes the model atomically
(:func:`smof_onnx.passes.graph.save_model`: temp file + rename, ``OUT.data`` first when the model
is over 2 GB), then renames the report into place. A failure on the way removes what this run
placed (files and the folders it created) and re-raises; an ``OSError`` (full disk, a path
changed since the checks) becomes a :class:`UsageError` naming the file.

SIGINT and SIGTERM are deferred while the commit runs (:func:`deferred_signals`: handlers that
record the signal; the previous handlers come back afterwards), so a Ctrl-C can never stop it
half-way. A signal received during the commit is raised once it is done, as :class:`Interrupted`
(a KeyboardInterrupt) whose ``written`` lists what was written: the caller can say "nothing was
written" or "X and R are complete", and either is true. :func:`written` keeps the files of the
last commit of this process, for a signal that arrives after :func:`commit` returned.
Signals are only deferred in the main thread (Python delivers them there only).
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from smof_onnx.passes import graph as pgraph

from . import report as rep
from .errors import UsageError
from .paths import data_file

__all__ = ["commit", "deferred_signals", "Interrupted", "written", "forget"]

_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)
_last_written: list[str] = []
# Called with the name of each step of a commit ("staged", "model", "report"); tests send signals from it.
_step_hook: Callable[[str], None] | None = None


class Interrupted(KeyboardInterrupt):
    """A SIGINT / SIGTERM; ``written``: the files complete on disk when it was raised."""

    def __init__(self, signum: int, written: list[str] | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.written = list(written or [])


def written() -> list[str]:
    """The files the last commit of this process wrote (empty after :func:`forget`)."""
    return list(_last_written)


def forget() -> None:
    """Start a new run: no file written yet."""
    _last_written.clear()


@contextlib.contextmanager
def deferred_signals() -> Iterator[list[int]]:
    """Record SIGINT / SIGTERM instead of acting on them; yields the list they are appended to."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def commit(model: Any, output: Any, report: dict, report_path: Any,
           progress: Callable[[str], None] | None = None) -> list[str]:
    """Write ``model`` to ``output`` and ``report`` to ``report_path`` (either may be None), both or
    neither; returns the paths written. Raises :class:`Interrupted` after a complete commit when a
    signal arrived during it."""
    forget()
    if output is None and report_path is None:
        return []
    with deferred_signals() as received:
        done = _write(model, output, report, report_path, progress)
    _last_written[:] = done
    if received:
        raise Interrupted(received[0], done)
    return done


def _step(name: str) -> None:
    if _step_hook is not None:
        _step_hook(name)


def _write(model: Any, output: Any, report: dict, report_path: Any,
           progress: Callable[[str], None] | None) -> list[str]:
    targets = [Path(t) for t in (output, report_path) if t is not None]
    new_dirs = {d for t in targets for d in _missing_dirs(t)}
    data = data_file(output) if output is not None else None
    data_before = _identity(data)
    staged = model_placed = None
    writing = f"--report {report_path}"
    try:
        if report_path is not None:
            staged = rep.stage_report(report, report_path)
            _readable_like_a_new_file(staged)
            _step("staged")
        if output is not None:
            if progress is not None:
                progress(f"writing {output}")
            writing = f"-o {output}"
            model_placed = pgraph.save_model(model, output)
            _step("model")
        if staged is not None:
            writing = f"--report {report_path}"
            os.replace(staged, report_path)
            staged = None
            _step("report")
    except BaseException as exc:
        if model_placed is not None:
            model_placed.unlink(missing_ok=True)
        if data is not None and _identity(data) not in (None, data_before):  # save_model placed OUT.data
            data.unlink(missing_ok=True)
        if staged is not None:
            staged.unlink(missing_ok=True)
        for d in sorted(new_dirs, key=lambda p: len(p.parts), reverse=True):  # deepest first; only if empty
            try:
                d.rmdir()
            except OSError:
                pass
        if isinstance(exc, OSError):  # a full disk or a path changed since the checks: not our bug
            raise UsageError(f"{writing}: could not write ({exc.strerror or exc}); nothing from this run was kept "
                             "(check the path, its permissions and the free space, then run again)") from exc
        raise
    return [str(t) for t in (output, report_path) if t is not None]


def _readable_like_a_new_file(path: Path) -> None:
    """The staged report comes from mkstemp (mode 0600); give it the mode a new file gets (0666
    less the umask, 0644 usually), the mode the model gets."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _missing_dirs(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet (writing creates them)."""
    return [p for p in (path.parent, *path.parent.parents) if not p.exists()]


def _identity(path: Path | None) -> tuple[int, int, int] | None:
    """(device, inode, mtime) of an existing file, else None: tells a file replaced by this run."""
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns) if st is not None else None
