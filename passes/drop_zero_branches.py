"""Drop Add / Sub operands that are entirely zero (design 3.2: depth pruning).

Rules: ``Add(x, z)`` or ``Add(z, x)``, and ``Sub(x, z)``, where ``z`` is identically
zero (every channel zero by :func:`smof_onnx.passes.analysis.channels.analyze_channels`, or a
constant of zeros), becomes ``x``: x + 0 = x - 0 = x. Only when ``x`` already has the
output's shape and dtype (no broadcast is lost); otherwise the node is left alone with
a reason. Consumers are rewired to ``x``; when the output is a graph output the node
becomes an ``Identity`` so the output name stays. The zero branch is left for
``eliminate_dead_nodes``.

stats: ``dropped`` [{node, op, zero_input, kept}], ``refused`` [{where, reason}].
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from .analysis.channels import ChannelAnalysis, analyze_channels
from .analysis.spaces import node_label
from .base import Pass, PassResult


def _all_zero(t: gs.Tensor, a: ChannelAnalysis) -> bool:
    if isinstance(t, gs.Constant):
        return bool(np.all(np.asarray(t.values) == 0))
    return t.name in a.spaces and bool(a.tensor_zero(t.name).all())


@dataclasses.dataclass(frozen=True)
class DropZeroBranches(Pass):
    """See the module docstring."""

    input_shapes: Mapping[str, Sequence[int]] | None = None
    name = "drop_zero_branches"

    def call(self, graph: gs.Graph) -> PassResult:
        a = analyze_channels(graph, self.input_shapes)
        b = a.builder
        outputs = {t.name for t in graph.outputs}
        dropped, refused = [], []
        for node in list(graph.nodes):
            if node.op not in ("Add", "Sub") or len(node.inputs) != 2 or (node.domain or "") not in ("", "ai.onnx"):
                continue
            zero = [i for i in (0, 1) if _all_zero(node.inputs[i], a)]
            if node.op == "Sub":
                zero = [1] if 1 in zero else []
            if not zero:
                continue
            z, keep, out = node.inputs[zero[0]], node.inputs[1 - zero[0]], node.outputs[0]
            ks, os = b.raw_shape(keep), b.raw_shape(out)
            if ks is None or os is None or any(d is None for d in ks) or tuple(ks) != tuple(os):
                refused.append({"where": node_label(node),
                                "reason": f"kept operand shape {ks} may differ from the output shape {os}"})
                continue
            if keep.dtype is not None and out.dtype is not None and np.dtype(keep.dtype) != np.dtype(out.dtype):
                refused.append({"where": node_label(node), "reason": "kept operand has another dtype"})
                continue
            dropped.append({"node": node.name, "op": node.op, "zero_input": z.name, "kept": keep.name})
            if out.name in outputs:
                node.op, node.attrs = "Identity", {}
                node.inputs.clear()
                node.inputs.append(keep)
                continue
            for consumer in list(out.outputs):
                for j, t in enumerate(consumer.inputs):
                    if t is out:
                        consumer.inputs[j] = keep
            node.inputs.clear()
            node.outputs.clear()
            graph.nodes.remove(node)
        return PassResult(graph, bool(dropped), {"dropped": dropped, "refused": refused})


def drop_zero_branches(graph: gs.Graph, input_shapes: Mapping[str, Sequence[int]] | None = None) -> PassResult:
    return DropZeroBranches(input_shapes)(graph)
