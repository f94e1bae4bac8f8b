"""Constant folding with onnx-graphsurgeon (``Graph.fold_constants``, evaluated by ONNX Runtime).

Rule: a node is replaced by its value when every input is a constant, or (``fold_shapes``) when
it computes a shape that the graph declares static. Everything else stays as it is:

- Shapes are *re-inferred* from the graph inputs before folding (ONNX shape inference with data
  propagation on a copy; stale ``value_info`` written by exporters is discarded), so a
  ``Shape`` folds only where the declared input dims make it static. A symbolic batch (or any
  symbolic dim) is never baked into a Reshape or Slice constant: dynamic inputs stay dynamic.
  When shape inference fails, intermediate shapes are dropped and no shape is folded.
- Graph inputs and outputs never change: nodes producing a graph output are not folded (the
  output stays a node output, not an initializer) and unused graph inputs are kept.
- Control flow (If / Loop / Scan) is neither evaluated nor flattened and subgraphs are not
  folded into; random ops (Random*, Bernoulli, Multinomial) are never folded; nodes of
  non-standard domains are left to the runtime.
- ``size_threshold`` (bytes) keeps Tile / Expand / ConstantOfShape results larger than it as
  runtime computations instead of bloating the file; None folds regardless of size.
- Folding failures of one partition do not stop the rest (``partitioning="basic"``).

After folding, nodes and initializers nobody reads are removed (top level; graph inputs kept).
``stats``: ``folded`` counts removed nodes per op type; ``initializers`` the change in count.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

from .base import Pass, PassResult
from .graph import infer_graph_shapes

_NEVER_FOLD = frozenset({"If", "Loop", "Scan", "SequenceMap", "RandomNormal", "RandomUniform",
                         "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial"})


def _refresh_shapes(graph: gs.Graph) -> bool:
    """Replace intermediate tensors' shapes by ones inferred from the graph inputs alone."""
    boundary = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    inferred: dict[str, onnx.ValueInfoProto] = {}
    ok = True
    try:
        model = infer_graph_shapes(graph)
        inferred = {vi.name: vi for vi in model.graph.value_info}
    except Exception:  # noqa: BLE001 - any failure means: trust no intermediate shape
        ok = False
    for name, tensor in graph.tensors().items():
        if isinstance(tensor, gs.Constant) or name in boundary or not name:
            continue
        vi = inferred.get(name)
        if vi is not None and vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            tensor.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                            for d in vi.type.tensor_type.shape.dim]
            if vi.type.tensor_type.elem_type:
                tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        else:
            tensor.shape = None
    return ok


@dataclasses.dataclass(frozen=True)
class FoldConstants(Pass):
    """See the module docstring."""

    name = "fold_constants"
    fold_shapes: bool = True
    size_threshold: int | None = 64 << 20

    def call(self, graph: gs.Graph) -> PassResult:
        before_ops = collections.Counter(n.op for n in graph.nodes)
        before_vars = {n for n, t in graph.tensors().items() if not isinstance(t, gs.Constant)}
        before_inits = len(graph.tensors()) - len(before_vars)
        graph.toposort(recurse_subgraphs=False, recurse_functions=False)
        shapes_ok = _refresh_shapes(graph) if self.fold_shapes else False
        outputs = {t.name for t in graph.outputs}

        def exclude(node: gs.Node) -> bool:
            return (node.op in _NEVER_FOLD or node.domain not in (None, "", "ai.onnx")
                    or any(o.name in outputs for o in node.outputs))

        with G_LOGGER.suppress(G_LOGGER.ERROR):  # failed partitions are expected, not errors here
            graph.fold_constants(fold_shapes=self.fold_shapes and shapes_ok, recurse_subgraphs=False,
                                 partitioning="basic", error_ok=True, flatten_subgraphs=False,
                                 size_threshold=self.size_threshold, should_exclude_node=exclude,
                                 recurse_functions=False)
        graph.cleanup(remove_unused_node_outputs=False, recurse_subgraphs=False,
                      remove_unused_graph_inputs=False, recurse_functions=False)
        after_ops = collections.Counter(n.op for n in graph.nodes)
        folded = {op: n - after_ops.get(op, 0) for op, n in sorted(before_ops.items()) if n > after_ops.get(op, 0)}
        tensors = graph.tensors()
        now_constant = sorted(n for n in before_vars if isinstance(tensors.get(n), gs.Constant))
        after_inits = sum(isinstance(t, gs.Constant) for t in tensors.values())
        stats: dict[str, Any] = {"folded": folded, "removed_nodes": sum(folded.values()),
                                 "now_constant": now_constant, "initializers": after_inits - before_inits,
                                 "shapes_inferred": shapes_ok}
        return PassResult(graph, bool(folded or now_constant), stats)


def fold_constants(graph: gs.Graph, *, fold_shapes: bool = True, size_threshold: int | None = 64 << 20) -> PassResult:
    """Fold what is constant regardless of the input's (symbolic) dims; see the module docstring."""
    return FoldConstants(fold_shapes=fold_shapes, size_threshold=size_threshold)(graph)
