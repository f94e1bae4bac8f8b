"""Give every weighted node its own copy of a weight that several nodes read.

Later passes edit weights per node (fold a BN into one conv, cut the channels of another); an
initializer read by two nodes would otherwise be edited for both.

Rule: a constant read at a *weight position* (Conv / ConvTranspose inputs 1-2, Gemm 0-2, MatMul
0-1, BatchNormalization 1-4, PRelu 1) is cloned when it has more than one reader (any node,
counting each input slot) or is a graph output. Each weighted reader then gets its own clone,
named ``f"{name}__{node.name}"`` (made unique); a node reading it in several slots gets one clone
for all of them. When *every* reader is a weighted node, the first one keeps the original (its
name stays stable) and the others get clones. Readers at non-weight positions (an Add, a
Reshape) keep the original. Top-level graph only; constants that are also graph inputs
(overridable initializers) are never cloned, since the caller may feed them.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from .base import Pass, PassResult
from .graph import unique_name

WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
    "BatchNormalization": (1, 2, 3, 4), "PRelu": (1,),
}


def _weighted_slots(node: gs.Node, tensor: gs.Tensor) -> list[int]:
    positions = WEIGHT_INPUTS.get(node.op, ())
    return [i for i, t in enumerate(node.inputs) if t is tensor and i in positions]


@dataclasses.dataclass(frozen=True)
class CloneSharedWeights(Pass):
    """See the module docstring."""

    name = "clone_shared_weights"

    def call(self, graph: gs.Graph) -> PassResult:
        clones: list[dict[str, Any]] = []
        refused: list[dict[str, str]] = []
        inputs = {t.name for t in graph.inputs}
        outputs = {t.name for t in graph.outputs}
        for name, tensor in list(graph.tensors().items()):
            if not isinstance(tensor, gs.Constant) or len(tensor.outputs) + (name in outputs) < 2:
                continue
            readers: list[gs.Node] = []  # distinct nodes in order of reads (gs nodes are unhashable)
            for node in tensor.outputs:
                if not any(node is r for r in readers):
                    readers.append(node)
            weighted = [n for n in readers if _weighted_slots(n, tensor)]
            if not weighted:
                continue
            if name in inputs:
                refused.append({"tensor": name, "reason": "the shared weight is also a graph input"})
                continue
            keeps_original = len(weighted) == len(readers) and name not in outputs
            for node in weighted[1:] if keeps_original else weighted:
                clone = gs.Constant(unique_name(graph, f"{name}__{node.name}"), np.array(tensor.values))
                for i in _weighted_slots(node, tensor):
                    node.inputs[i] = clone
                clones.append({"tensor": name, "clone": clone.name, "node": node.name})
        return PassResult(graph, bool(clones), {"cloned": clones, "refused": refused})


def clone_shared_weights(graph: gs.Graph) -> PassResult:
    """Clone every weight read by more than one node, one copy per weighted reader."""
    return CloneSharedWeights()(graph)
