"""Remove nodes whose outputs reach no graph output, and initializers / tensors nobody reads.

Rules:
- Top-level graph only (If / Loop bodies are not entered); a node with a subgraph counts the
  outer tensors its body reads as read (onnx-graphsurgeon's ``cleanup`` does this).
- Graph inputs are never removed, even when nothing reads them, so the model's interface
  (input names, count and order) is unchanged; graph outputs are by definition live.
- A node is live when any of its outputs is read by a live node or is a graph output; its
  other (unread) outputs are kept, since dropping an optional output can change an op's
  meaning (e.g. Dropout's mask, BatchNormalization's training outputs).

``stats``: ``removed`` counts removed nodes per op type, ``removed_initializers`` lists the
constants no longer present.
"""
from __future__ import annotations

import collections
import dataclasses

import onnx_graphsurgeon as gs

from .base import Pass, PassResult


@dataclasses.dataclass(frozen=True)
class EliminateDeadNodes(Pass):
    """See the module docstring."""

    name = "eliminate_dead_nodes"

    def call(self, graph: gs.Graph) -> PassResult:
        inputs = [t.name for t in graph.inputs]
        before_ops = collections.Counter(n.op for n in graph.nodes)
        before_consts = {n for n, t in graph.tensors().items() if isinstance(t, gs.Constant)}
        graph.cleanup(remove_unused_node_outputs=False, recurse_subgraphs=False,
                      remove_unused_graph_inputs=False, recurse_functions=False)
        if [t.name for t in graph.inputs] != inputs:
            raise self.fail(f"graph inputs changed from {inputs} to {[t.name for t in graph.inputs]}")
        after_ops = collections.Counter(n.op for n in graph.nodes)
        removed = {op: n - after_ops.get(op, 0) for op, n in sorted(before_ops.items()) if n > after_ops.get(op, 0)}
        gone = sorted(before_consts - set(graph.tensors()))
        stats = {"removed": removed, "removed_nodes": sum(removed.values()), "removed_initializers": gone}
        return PassResult(graph, bool(removed or gone), stats)


def eliminate_dead_nodes(graph: gs.Graph) -> PassResult:
    """Remove dead nodes and unread initializers (top level); graph inputs are kept."""
    return EliminateDeadNodes()(graph)
