"""The op table of the torch executor: ONNX op_type -> torch function.

Rules:
- Every op is a function ``fn(node, *inputs)`` registered with :func:`op`; it returns
  one tensor or a tuple of tensors (one per node output). ``inputs`` holds ``None``
  for an omitted optional input (an empty name in the ONNX node).
- Attribute defaults follow the ONNX spec per opset (11-21; older opsets where an
  export still uses them): where an opset moved an attribute to an input (Clip
  min/max, Squeeze/Unsqueeze/Reduce* axes, Split sizes, Pad pads, Slice starts...),
  the function reads whichever the node's opset defines.
- An op may register a ``check(node) -> str | None`` that refuses, at construction
  time, a configuration it does not implement (returns the reason). Unknown op
  types are refused too: :class:`UnsupportedOpError` names the op and the node.
- Integer tensors (shape subgraphs) stay integer tensors; where an op needs Python
  ints (Reshape's shape, Slice's starts) it reads them with ``.tolist()``.

The table is validated at import: every key is an ONNX op type of the default domain.
"""
from __future__ import annotations

# Importing the op modules registers their ops in the registry's table.
from . import ops_elementwise, ops_nn, ops_tensor  # noqa: F401
from .ops_registry import (DTYPES, OPS, Node, Op, UnsupportedOpError, axis_of, from_numpy, ints, op,
                           validate_table)

__all__ = ["OPS", "Op", "Node", "op", "validate_table", "UnsupportedOpError", "DTYPES", "ints", "axis_of",
           "from_numpy"]

validate_table()
