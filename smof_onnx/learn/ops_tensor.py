"""Shape, tensor, matmul and reduction ops of the executor's table (see :mod:`.ops`; registered in :mod:`.ops_registry`).

Rules:
- Shape tensors are int64 tensors on the input's device; ops that need Python ints
  (Reshape, Slice, Expand, Split sizes) read them with ``.tolist()``.
- Slice clamps exactly like Python / numpy slicing, which is what the ONNX spec defines.
- Reshape: 0 copies the input dim unless ``allowzero=1``; -1 is inferred.
- Reductions read ``axes`` from the attribute before the opset that moved it to an input
  (13 for ReduceSum, 18 for the others); with no axes they reduce everything unless
  ``noop_with_empty_axes`` is set.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx
import torch

from .ops_registry import axis_of, from_numpy, ints, op

# ---------------------------------------------------------------- shape and tensor ops

@op("Shape")
def _shape(n, x):
    dims = list(x.shape)
    start, end = n.get("start", 0), n.get("end", None)
    dims = dims[slice(start, end)]
    return torch.tensor(dims, dtype=torch.int64, device=x.device)


@op("Size")
def _size(n, x): return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


@op("Reshape")
def _reshape(n, x, shape):
    dims = ints(shape)
    if not n.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@op("Flatten")
def _flatten(n, x):
    axis = axis_of(n.get("axis", 1), x.dim())
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    cols = int(np.prod(x.shape[axis:], dtype=np.int64))
    return x.reshape(rows, cols)


@op("Transpose")
def _transpose(n, x):
    perm = n.get("perm") or list(range(x.dim()))[::-1]
    return x.permute(*perm)


@op("Squeeze")
def _squeeze(n, x, axes=None):
    axes = n.get("axes") if n.opset < 13 else ints(axes)
    if not axes:
        return x.squeeze() if x.dim() else x
    axes = sorted(axis_of(a, x.dim()) for a in axes)
    for a in reversed(axes):
        x = x.squeeze(a)
    return x


@op("Unsqueeze")
def _unsqueeze(n, x, axes=None):
    axes = n.get("axes") if n.opset < 13 else ints(axes)
    rank = x.dim() + len(axes)
    for a in sorted(axis_of(a, rank) for a in axes):
        x = x.unsqueeze(a)
    return x


@op("Concat")
def _concat(n, *xs):
    xs = [x for x in xs if x is not None]
    return torch.cat(xs, axis_of(n.get("axis"), xs[0].dim()))


@op("Split")
def _split(n, x, split=None, *_):
    axis = axis_of(n.get("axis", 0), x.dim())
    sizes = n.get("split") if n.opset < 13 else ints(split)
    if not sizes:
        parts = n.get("num_outputs", n.n_outputs)
        # Uneven split (opset 18): every chunk ceil(dim / parts), the last one smaller.
        chunk = -(-x.shape[axis] // parts)
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(parts)]
    return tuple(torch.split(x, list(sizes), axis))


@op("Slice")
def _slice(n, x, starts=None, ends=None, axes=None, steps=None):
    if n.opset < 10:
        starts, ends, axes, steps = n.get("starts"), n.get("ends"), n.get("axes"), None
    else:
        starts, ends, axes, steps = ints(starts), ints(ends), ints(axes), ints(steps)
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = axis_of(a, x.dim())
        # ONNX Slice clamps exactly like Python/numpy slicing.
        idx = range(*slice(s, e, st).indices(x.shape[a]))
        if st == 1:
            x = x.narrow(a, idx.start, len(idx))
        else:
            x = x.index_select(a, torch.tensor(list(idx), dtype=torch.int64, device=x.device))
    return x


@op("Gather")
def _gather(n, x, idx):
    axis = axis_of(n.get("axis", 0), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx).to(torch.int64)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:]))


@op("GatherElements")
def _gather_el(n, x, idx):
    axis = axis_of(n.get("axis", 0), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx).to(torch.int64)
    return torch.gather(x, axis, idx)


@op("Expand")
def _expand(n, x, shape):
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(ints(shape))))


@op("Tile")
def _tile(n, x, repeats): return x.repeat(*ints(repeats))


def _constant_value(attrs: dict[str, Any]) -> torch.Tensor:
    if "value" in attrs:
        return from_numpy(onnx.numpy_helper.to_array(attrs["value"]))
    scalar = {"value_float": torch.float32, "value_int": torch.int64}
    lists = {"value_floats": torch.float32, "value_ints": torch.int64}
    for key, dtype in scalar.items():
        if key in attrs:
            return torch.tensor(attrs[key], dtype=dtype)
    for key, dtype in lists.items():
        if key in attrs:
            return torch.tensor(list(attrs[key]), dtype=dtype)
    raise KeyError("Constant node without a numeric value attribute")


def constant_value(attrs: dict[str, Any]) -> torch.Tensor:
    """The tensor a Constant node holds (used by the executor at construction time)."""
    return _constant_value(attrs)


@op("Constant", check=lambda n: None if any(k in n.attrs for k in (
        "value", "value_float", "value_int", "value_floats", "value_ints"))
        else f"Constant attribute {sorted(n.attrs)} is not a numeric tensor")
def _constant(n):
    return _constant_value(n.attrs)


@op("ConstantOfShape")
def _const_of_shape(n, shape):
    value = n.get("value")
    fill = from_numpy(onnx.numpy_helper.to_array(value)).reshape(-1) if value is not None \
        else torch.zeros(1, dtype=torch.float32)
    return torch.full(tuple(ints(shape)), fill[0].item(), dtype=fill.dtype, device=shape.device)


@op("Range")
def _range(n, start, limit, delta):
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


@op("Einsum")
def _einsum(n, *xs): return torch.einsum(n.get("equation"), *xs)


@op("Trilu")
def _trilu(n, x, k=None):
    k = 0 if k is None else int(k.item())
    return torch.triu(x, k) if n.get("upper", 1) else torch.tril(x, k)


@op("CumSum")
def _cumsum(n, x, axis):
    a = axis_of(int(axis.item()), x.dim())
    if n.get("reverse", 0):
        x = x.flip(a)
    out = torch.cumsum(x, a)
    if n.get("exclusive", 0):
        out = out - x
    return out.flip(a) if n.get("reverse", 0) else out


@op("ArgMax", "ArgMin")
def _argmax(n, x):
    axis = axis_of(n.get("axis", 0), x.dim())
    keep = bool(n.get("keepdims", 1))
    if n.get("select_last_index", 0):
        flipped = x.flip(axis)
        fn = torch.argmax if n.op_type == "ArgMax" else torch.argmin
        return x.shape[axis] - 1 - fn(flipped, axis, keepdim=keep)
    return (torch.argmax if n.op_type == "ArgMax" else torch.argmin)(x, axis, keepdim=keep)


# ---------------------------------------------------------------- matmul and reductions

@op("MatMul")
def _matmul(n, a, b): return torch.matmul(a, b)


@op("Gemm")
def _gemm(n, a, b, c=None):
    if n.get("transA", 0):
        a = a.t()
    if n.get("transB", 0):
        b = b.t()
    y = a @ b
    alpha, beta = n.get("alpha", 1.0), n.get("beta", 1.0)
    if alpha != 1.0:
        y = alpha * y
    if c is not None:
        y = y + (c if beta == 1.0 else beta * c)
    return y


# Opset where each reduction moved `axes` from attribute to input.
_AXES_INPUT_SINCE = {"ReduceSum": 13}


def _reduce_all(fn, x, dims, keep):
    for d in sorted(dims, reverse=True):
        x = fn(x, d, keep)
    return x


_REDUCERS: dict[str, Callable[[torch.Tensor, list[int], bool], torch.Tensor]] = {
    "ReduceMean": lambda x, d, k: torch.mean(x, d, keepdim=k),
    "ReduceSum": lambda x, d, k: torch.sum(x, d, keepdim=k),
    "ReduceMax": lambda x, d, k: torch.amax(x, d, keepdim=k),
    "ReduceMin": lambda x, d, k: torch.amin(x, d, keepdim=k),
    "ReduceProd": lambda x, d, k: _reduce_all(lambda t, i, kk: torch.prod(t, i, keepdim=kk), x, d, k),
    "ReduceL1": lambda x, d, k: torch.sum(torch.abs(x), d, keepdim=k),
    "ReduceL2": lambda x, d, k: torch.sqrt(torch.sum(x * x, d, keepdim=k)),
    "ReduceSumSquare": lambda x, d, k: torch.sum(x * x, d, keepdim=k),
    "ReduceLogSum": lambda x, d, k: torch.log(torch.sum(x, d, keepdim=k)),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, d, keepdim=k),
}


_NOOP = {"ReduceL1": torch.abs, "ReduceL2": torch.abs, "ReduceSumSquare": lambda t: t * t,
         "ReduceLogSum": torch.log}


@op(*_REDUCERS)
def _reduce(n, x, axes=None):
    since = _AXES_INPUT_SINCE.get(n.op_type, 18)
    axes = n.get("axes") if n.opset < since else ints(axes)
    keep = bool(n.get("keepdims", 1))
    if not axes:
        if n.get("noop_with_empty_axes", 0):
            # ORT still applies the reduction's elementwise part (|x| for L1/L2, x^2, log).
            return _NOOP.get(n.op_type, lambda t: t)(x)
        axes = list(range(x.dim()))
    dims = sorted(axis_of(a, x.dim()) for a in axes)
    if x.dim() == 0:
        return x
    return _REDUCERS[n.op_type](x, dims, keep)
