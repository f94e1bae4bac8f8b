"""The registry of the executor's op table (:mod:`.ops`): :func:`op` registers a torch function
for ONNX op types, :data:`OPS` holds them; plus the helpers every op module shares. The op
modules (:mod:`.ops_elementwise`, :mod:`.ops_nn`, :mod:`.ops_tensor`) import this module and
:mod:`.ops` imports them, so the imports run one way."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import onnx
import torch

from smof_onnx.passes.base import UnsupportedModelError

__all__ = ["OPS", "Op", "Node", "op", "validate_table", "UnsupportedOpError", "DTYPES", "ints", "axis_of",
           "from_numpy", "is_int"]


class UnsupportedOpError(UnsupportedModelError):
    """The executor has no torch implementation for this op (or this configuration of it)."""

    def __init__(self, op_type: str, node: str, reason: str | None = None):
        self.op_type = op_type
        self.node = node
        why = f": {reason}" if reason else " is not supported by the torch executor"
        super().__init__(f"op '{op_type}' at node '{node}'{why}")


@dataclasses.dataclass(frozen=True)
class Node:
    """What an op function needs to know about its node."""

    name: str
    op_type: str
    attrs: dict[str, Any]
    opset: int
    n_outputs: int

    def get(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


@dataclasses.dataclass(frozen=True)
class Op:
    fn: Callable[..., Any]
    check: Callable[[Node], str | None] | None = None


OPS: dict[str, Op] = {}


def op(*names: str, check: Callable[[Node], str | None] | None = None):
    def register(fn):
        for name in names:
            if name in OPS:
                raise RuntimeError(f"op {name} registered twice")
            OPS[name] = Op(fn, check)
        return fn
    return register


def validate_table() -> None:
    for name, entry in OPS.items():
        if not onnx.defs.has(name):
            raise RuntimeError(f"op table entry {name!r} is not an ONNX op of the default domain")
        if not callable(entry.fn):
            raise RuntimeError(f"op table entry {name!r} is not callable")


# ---------------------------------------------------------------- dtypes and helpers

DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT16: torch.int16, onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8, onnx.TensorProto.BOOL: torch.bool,
}


def ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def axis_of(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def is_int(t: torch.Tensor) -> bool:
    return not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)


def from_numpy(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a).copy())
