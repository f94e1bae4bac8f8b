"""Checks of a run's input before any work, and the translation of what reading bad input raises.

- :func:`reading`: around the code that reads one file or option, turns what bad input makes
  libraries raise -- ``OSError``, ``MemoryError``, ``ValueError`` / ``EOFError`` (numpy, zip),
  ``onnx.checker.ValidationError`` (external data outside the model's folder, absolute, a symlink,
  hard-linked), protobuf's ``DecodeError``, Pillow's errors (``DecompressionBombError``,
  ``UnidentifiedImageError``) -- into the given :class:`SmofError` subclass (exit 2) whose message
  names the file or option. Errors the product raised on purpose pass through unchanged.
- :func:`non_finite_tensors`: float initializers and Constant values holding NaN or inf
  (subgraphs included); ``cut`` and ``compress`` refuse such a model (:func:`refuse_non_finite`):
  the gate compares NaN with NaN and would pass a model whose every output is NaN.
- :func:`check_shape_specs`: ``--input-shape`` given twice for one input, or contradicting a
  dim the model fixes, is a :class:`UsageError` naming the option, the input, the axis and the
  model's value -- before any work, not as a runtime error after the method ran.
- :func:`check_memory`: the bytes the gate's random inputs and the model's largest activation
  need at the given shapes, against the memory available (``MemAvailable``, and the cgroup
  limit when there is one): ``--input-shape 1x3x100000x100000`` is refused before allocating.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import onnx

from .errors import SmofError, UsageError

__all__ = ["reading", "non_finite_tensors", "refuse_non_finite", "check_shape_specs", "check_memory",
           "available_memory", "MEMORY_HINT"]

MEMORY_HINT = ("the run needs more memory than is available: use a smaller --input-shape or --batch-size, "
               "fewer calibration samples, or free memory")


def _bad_input_types() -> tuple[type, ...]:
    from google.protobuf.message import DecodeError

    types: list[type] = [OSError, ValueError, EOFError, MemoryError, DecodeError, onnx.checker.ValidationError,
                         UnicodeError, KeyError]
    try:
        from PIL import Image, UnidentifiedImageError

        types += [Image.DecompressionBombError, UnidentifiedImageError]
    except ImportError:
        pass
    import zipfile

    types.append(zipfile.BadZipFile)
    return tuple(types)


@contextlib.contextmanager
def reading(what: str, error: type[SmofError]) -> Iterator[None]:
    """Raise ``error("{what}: ...")`` for what bad input makes a reader raise (module docstring)."""
    try:
        yield
    except SmofError:
        raise
    except _bad_input_types() as exc:
        raise error(f"{what}: {describe(exc)}") from exc


def describe(exc: BaseException) -> str:
    """One line saying what went wrong and what to do, for an exception from reading input."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, MemoryError):
        return f"out of memory while reading it ({first or 'MemoryError'}); {MEMORY_HINT}"
    if type(exc).__name__ == "DecompressionBombError":
        return (f"the image is too large to read safely ({first}); resize it, or leave it out of the data")
    if isinstance(exc, onnx.checker.ValidationError) and "TensorProto" in first:
        return (f"its external data cannot be read safely ({first}); keep every .data file a regular file (not "
                "a link) inside the model's folder, named relative to it")
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot be read ({exc.strerror}{': ' + exc.filename if exc.filename else ''})"
    return f"cannot be read ({type(exc).__name__}: {first})"


# --- NaN / inf weights -------------------------------------------------------------------------

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def non_finite_tensors(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(kind, name) of every float initializer / Constant value holding NaN or inf, in graph order."""
    out: list[tuple[str, str]] = []

    def bad(t: onnx.TensorProto) -> bool:
        return t.data_type in _FLOAT_TYPES and not np.isfinite(onnx.numpy_helper.to_array(t)).all()

    def visit(graph: onnx.GraphProto) -> None:
        out.extend(("initializer", t.name) for t in graph.initializer if bad(t))
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t") and bad(attr.t):
                    what = "Constant" if node.op_type == "Constant" else f"{node.op_type} attribute {attr.name} of"
                    out.append((what, node.name or (node.output[0] if node.output else "?")))
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    visit(sub)

    visit(model.graph)
    return out


def refuse_non_finite(model: onnx.ModelProto, source: str | None) -> None:
    """:class:`ModelError` naming the first non-finite tensor of the input model."""
    from .errors import ModelError

    bad = non_finite_tensors(model)
    if bad:
        kind, name = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        where = f"{source}: " if source else ""
        raise ModelError(f"{where}input model has NaN/inf in {kind} '{name}'{more}; every output it computes from "
                         "there is NaN, so there is nothing to verify a cut against: fix or re-export the model")


# --- --input-shape -----------------------------------------------------------------------------

def check_shape_specs(model: onnx.ModelProto, specs: Sequence[str] | Mapping[str, Sequence[int]],
                      shapes: Mapping[str, Sequence[int]]) -> None:
    """``specs`` (as given) named each input once; ``shapes`` (parsed) keep every fixed dim."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not isinstance(specs, Mapping):
        seen: dict[str, str] = {}
        for spec in specs:
            name, sep, _ = str(spec).rpartition("=")
            name = name if sep else (inputs[0].name if len(inputs) == 1 else name)
            if name in seen:
                raise UsageError(f"--input-shape given twice for input '{name}' ({seen[name]} and {spec}); "
                                 "give each input once")
            seen[name] = str(spec)
    for inp in inputs:
        if inp.name not in shapes:
            continue
        given = [int(d) for d in shapes[inp.name]]
        for axis, (d, g) in enumerate(zip(inp.type.tensor_type.shape.dim, given)):
            if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != g:
                raise UsageError(f"--input-shape {'x'.join(map(str, given))} contradicts input '{inp.name}': "
                                 f"axis {axis} is fixed at {d.dim_value} in the model, the option says {g}; give "
                                 f"--input-shape {inp.name}=" + "x".join(
                                     str(x.dim_value) if x.HasField("dim_value") and x.dim_value > 0 else str(v)
                                     for x, v in zip(inp.type.tensor_type.shape.dim, given))
                                 + " or leave the option out")


# --- memory ------------------------------------------------------------------------------------

def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, lowered by a cgroup limit (None: unknown)."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            left = int(limit) - used
            avail = left if avail is None else min(avail, left)
    except (OSError, ValueError):
        pass
    return avail


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_memory(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], batch: int = 2,
                 what: str = "--input-shape") -> None:
    """Refuse shapes whose gate feeds and largest activation cannot fit in the available memory.

    Estimate: per input, its elements at ``batch`` (a symbolic batch) times 8 + its dtype's bytes
    (the feeds are drawn in float64 then cast); plus three times the largest tensor ONNX shape
    inference finds (a layer's input and output live together, plus ONNX Runtime's arena).
    """
    avail = available_memory()
    if avail is None:
        return
    inits = {i.name for i in model.graph.initializer}
    total = 0
    for inp in model.graph.input:
        if inp.name in inits or inp.name not in shapes:
            continue
        dims = [int(d) for d in shapes[inp.name]]
        declared = inp.type.tensor_type.shape.dim
        fixed_batch = bool(declared) and declared[0].HasField("dim_value") and declared[0].dim_value > 0
        scale = 1.0 if fixed_batch or not dims else max(batch, dims[0]) / max(dims[0], 1)
        n = float(np.prod(dims, dtype=np.float64)) * scale
        total += n * (8 + _itemsize(inp.type.tensor_type.elem_type))
    largest = 0
    if total < avail:  # only then is inference worth its time
        try:
            from smof_onnx.passes import graph as pgraph

            inferred = pgraph.with_static_shapes(model, shapes)
            for vi in inferred.graph.value_info:
                dims = vi.type.tensor_type.shape.dim
                if dims and all(d.HasField("dim_value") for d in dims):
                    n = float(np.prod([d.dim_value for d in dims], dtype=np.float64))
                    largest = max(largest, n * _itemsize(vi.type.tensor_type.elem_type))
        except Exception:  # noqa: BLE001 -- an estimate: without inference, the inputs alone are checked
            largest = 0
    need = total + 3 * largest
    if need > avail:
        shown = "; ".join(f"{k}={'x'.join(map(str, v))}" for k, v in shapes.items())
        raise UsageError(f"{what} {shown}: verifying the cut needs about {_gib(need)} (inputs and activations), more "
                         f"than the {_gib(avail)} of memory available; give a smaller --input-shape")


def _itemsize(elem_type: int) -> int:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 4
