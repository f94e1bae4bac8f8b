"""Turn ``Constant`` nodes into initializers (``gs.Constant`` tensors), keeping the tensor name.

Paddle exports (PP-OCR) and some torch exports carry every weight as a ``Constant`` node; the
later passes read and edit weights only as initializers, so this pass runs first.

Rules:
- Top-level graph only; Constant nodes inside If / Loop / Scan bodies are left as they are.
- Attributes handled: ``value`` (any tensor dtype, kept exactly, bfloat16/float8 included),
  ``value_float`` / ``value_int`` (0-d float32 / int64), ``value_floats`` / ``value_ints`` (1-d).
- Left alone, each with a reason in ``refused``: ``sparse_value`` and ``value_string(s)``
  (no dense numeric array), a Constant whose output is a graph output (an initializer
  cannot stand in for a node output without changing the graph's interface), and a node
  without a recognised attribute.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from .base import Pass, PassResult

_SCALARS = {"value_float": np.float32, "value_int": np.int64}
_LISTS = {"value_floats": np.float32, "value_ints": np.int64}
_UNSUPPORTED = ("sparse_value", "value_string", "value_strings")


def _constant_of(node: gs.Node) -> gs.Constant | np.ndarray | str:
    """The node's value as a gs.Constant (``value``) or array, else the reason it has none."""
    attrs = node.attrs
    if "value" in attrs and isinstance(attrs["value"], gs.Constant):
        return attrs["value"]
    for key, dtype in _SCALARS.items():
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    for key, dtype in _LISTS.items():
        if key in attrs:
            return np.array(list(attrs[key]), dtype=dtype)
    for key in _UNSUPPORTED:
        if key in attrs:
            return f"Constant with attribute '{key}' has no dense numeric value to store"
    return f"Constant with no recognised value attribute (has {sorted(attrs)})"


@dataclasses.dataclass(frozen=True)
class ConstantsToInitializers(Pass):
    """See the module docstring."""

    name = "constants_to_initializers"

    def call(self, graph: gs.Graph) -> PassResult:
        converted: list[str] = []
        refused: list[dict[str, str]] = []
        for node in [n for n in graph.nodes if n.op == "Constant" and n.domain in (None, "", "ai.onnx")]:
            out = node.outputs[0] if len(node.outputs) == 1 else None
            if out is None:
                refused.append({"node": node.name, "reason": f"Constant node with {len(node.outputs)} outputs"})
                continue
            if out in graph.outputs:
                refused.append({"node": node.name, "reason": f"its output '{out.name}' is a graph output"})
                continue
            value = _constant_of(node)
            if isinstance(value, str):
                refused.append({"node": node.name, "reason": value})
                continue
            node.outputs.clear()
            if isinstance(value, gs.Constant):
                # _values keeps the TensorProto (LazyValues), so dtype and bytes are exported as read.
                out.to_constant(value._values)
                out.data_location = value.data_location
            else:
                out.to_constant(value)
            graph.nodes.remove(node)
            converted.append(out.name)
        stats: dict[str, Any] = {"converted": len(converted), "tensors": converted, "refused": refused}
        return PassResult(graph, bool(converted), stats)


def constants_to_initializers(graph: gs.Graph) -> PassResult:
    """Replace every top-level Constant node by an initializer of the same name."""
    return ConstantsToInitializers()(graph)
