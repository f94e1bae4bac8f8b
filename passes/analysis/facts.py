"""The zero (forward) and unused (backward) facts over channel atoms.

zero(a)
    atom a is identically 0 for every input. One pass in topological order: a
    weighted producer's output f is zero when its bias is 0 and every non-zero weight
    of f reads a zero input channel (:meth:`Sink.zero_outputs`); every other op
    transfers zero by its rule's ``zero`` (Relu keeps it, Sigmoid does not, Mul needs
    one zero operand, Add all ...).
unused(a)
    no graph output depends on a. One pass in reverse topological order: atom a is
    *needed* when it is a graph output, feeds a live atom through a ``flow``/``read``
    edge, is read with a non-zero weight by a live filter, or is read without a model
    (an op without a rule, a refusal, an undeclared read) by a *live node*, one with a
    needed output; live atom = needed and not zero. Untracked tensors (shapes, rank-3
    blocks, anything outside the channel spaces) are needed as a whole when a live
    node reads them, so "unused" flows back through nodes the analysis does not model
    whenever none of their outputs is needed. unused = not needed.

Both passes are single sweeps: zero depends only on producers, needed only on
consumers, and the graph is acyclic. Soundness, for any set R of removed slots whose
atoms are all zero or unused: every surviving live atom keeps its value and every
surviving zero atom stays zero (a live filter never reads a removed non-zero channel
with a non-zero weight; a coupled op's output shares its inputs' slot). A node that is
not live may see other values after the cut, but no graph output reads them; it never
sees other shapes, because every tensor an unmodelled read touches is frozen.

The hypothesis used by the learning stage ("if the producer entries of a slot were
zeroed") reruns both sweeps with every producer entry zero, but judges liveness
across slots with the real facts, so one slot's hypothesis never leans on another's.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from .spaces import Builder


class ZeroCtx:
    """What a rule's ``zero`` sees: input masks, output setter, its coupling data."""

    def __init__(self, b: Builder, z: np.ndarray):
        self.b, self.z, self.opset = b, z, b.opset

    def zero(self, tensor: gs.Tensor) -> np.ndarray | None:
        sp = self.b.space(tensor)
        return None if sp is None else self.z[sp.base:sp.base + sp.size]

    def set(self, tensor: gs.Tensor, mask: np.ndarray) -> None:
        sp = self.b.space(tensor)
        if sp is not None:
            self.z[sp.base:sp.base + sp.size] = np.broadcast_to(np.asarray(mask, bool), (sp.size,))

    def data(self, node: gs.Node) -> Any:
        return self.b.data.get(id(node))


def forward_zero(nodes: Sequence[gs.Node], b: Builder, rules: dict, hyp: np.ndarray | None = None) -> np.ndarray:
    """bool per atom: identically zero. ``hyp``: atoms forced zero (hypothetical producer zeroing)."""
    z = np.zeros(b.n_atoms, bool)
    ctx = ZeroCtx(b, z)
    for node in nodes:
        sink = b.sinks.get(id(node))
        if sink is not None:
            xs = b.spaces.get(sink.input) if sink.input else None
            ys = b.spaces[sink.output]
            zin = z[xs.base:xs.base + xs.size] if xs is not None else None
            z[ys.base:ys.base + ys.size] = sink.zero_outputs(zin)
        elif node.op in rules and (node.domain or "") in ("", "ai.onnx"):
            rules[node.op].zero(node, ctx)
        if hyp is not None:
            for out in node.outputs:
                sp = b.space(out)
                if sp is not None:
                    z[sp.base:sp.base + sp.size] |= hyp[sp.base:sp.base + sp.size]
    return z


def backward_needed(nodes: Sequence[gs.Node], b: Builder, zero: np.ndarray,
                    cross: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                    live_nodes: set[int] | None = None) -> tuple[np.ndarray, set[int]]:
    """(bool per atom: some graph output depends on it, ids of the *live* nodes).

    A node is live when one of its outputs is needed: a graph output, a tracked output
    with a needed atom, or an untracked output some live node reads. Only a live node
    needs what it reads without a model (untracked inputs, inputs of a refused node,
    reads the safety net froze); a node none of whose outputs is needed needs nothing,
    whatever its op (Shape, a runtime Reshape, a node outside the channel spaces).

    ``cross`` = (slot label per atom, real zero, real needed): when given (the
    hypothesis), an edge between two different slots is judged by the real facts, and
    ``live_nodes`` (the real run's) decides which nodes are live: unmodelled reads join
    no slots, so they always cross.
    """
    needed = np.zeros(b.n_atoms, bool)
    for ids in b.needed_always:
        needed[ids] = True
    tensor_needed = set(b.graph_outputs)     # untracked tensors some live node reads
    live_set: set[int] = set()

    def live(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        mine = needed[dst] & ~zero[dst]
        if cross is None:
            return mine
        label, zero_real, needed_real = cross
        return np.where(label[src] == label[dst], mine, needed_real[dst] & ~zero_real[dst])

    spaces = b.spaces
    for node in reversed(nodes):
        key = id(node)
        if live_nodes is not None:
            is_live = key in live_nodes
        else:
            is_live = False
            for o in node.outputs:
                sp = spaces.get(o.name)
                if o.name in tensor_needed or (sp is not None and needed[sp.base:sp.base + sp.size].any()):
                    is_live = True
                    break
        sink = b.sinks.get(key)
        if is_live:
            live_set.add(key)
            for ids in b.needed_if_live.get(key, ()):
                needed[ids] = True
            skip = None
            if sink is not None and sink.input is None and live_nodes is None:
                # an untracked input of a weighted node is read only through live filters' non-zero weights
                ys = spaces[sink.output]
                if not sink.needed_inputs(needed[ys.ids] & ~zero[ys.ids]).any():
                    skip = node.inputs[0].name
            tensor_needed.update(name for name in b.reads.get(key, ()) if name not in spaces and name != skip)
        for src, dst in b.flows.get(key, ()):
            np.logical_or.at(needed, src, live(src, dst))
        if sink is None or sink.input is None:
            continue
        xs, ys = spaces[sink.input], spaces[sink.output]
        out_ids = ys.ids
        if cross is not None and np.intersect1d(cross[0][out_ids], cross[0][xs.ids]).size:
            _sink_needed_mixed(sink, xs.ids, out_ids, needed, live)
        else:
            if cross is None:
                live_f = needed[out_ids] & ~zero[out_ids]
            else:  # filters and inputs lie in different slots: judge by the real facts
                live_f = cross[2][out_ids] & ~cross[1][out_ids]
            needed[xs.ids] |= sink.needed_inputs(live_f)
    return needed, live_set


def _sink_needed_mixed(sink: Any, in_ids: np.ndarray, out_ids: np.ndarray, needed: np.ndarray, live) -> None:
    """Sink whose filters share slots with its inputs (grouped conv, residual coupling)."""
    cout, k = sink.dep.shape
    m = cout // sink.groups
    in_index = (np.arange(cout)[:, None] // m) * k + np.arange(k)[None, :]
    src = in_ids[in_index]
    dst = np.broadcast_to(out_ids[:, None], src.shape)
    reads = sink.dep & live(src, dst)
    needed[np.unique(src[reads])] = True
