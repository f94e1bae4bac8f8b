"""The FLOPs of the would-be cut model as a differentiable function of the gate values.

Built from the layer table of :func:`smof_onnx.passes.analysis.flops.count_cost` (FLOPs = 2 x MACs of
Conv, ConvTranspose, Gemm, MatMul) and the gates of :mod:`smof_onnx.selection.gates`. For a layer
with counted FLOPs ``F``::

    F(g) = F * prod_axes (k_a - 2 L_a + 2 sum_j e_{a,j}) / k_a  *  in(g) * out(g)

- ``e_{a,j} = prod_{i >= j} g_{a,i}``: the effective keep of ring level j on axis a (a ring
  survives only with every ring inside it), so the kept kernel size on axis a is
  ``k_a - 2 L_a + 2 sum_j e_{a,j}`` where L_a is the number of gated levels;
- ``in(g)`` / ``out(g)``: the mean keep over the channels of the layer's input / output tensor
  (a channel's keep is its slot's gate, 1 when ungated). Since ``F`` is proportional to
  ``Cin/group * Cout`` this is exact for ordinary convs and Gemm/MatMul over their feature
  axis. A depthwise conv (group == Cin) loses input and output channels together, so only
  ``out(g)`` counts there.

With binary gates this equals the count of the cut model, as long as the cut removes exactly
what the gates drop (tested against ``count_cost`` after :func:`smof_onnx.passes.pipeline.cut`); the
final selection re-counts the real cut model anyway. Works on numpy arrays (selection, the
torch-free ``l2`` method) and on torch tensors (training), same code.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx

from smof_onnx.passes.graph import node_attributes

from .gates import GateSpace, slot_gate_index

__all__ = ["LayerTerm", "FlopsBudget", "build_budget"]

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclasses.dataclass(frozen=True)
class LayerTerm:
    name: str
    op: str
    flops: int
    axes: tuple[tuple[int, tuple[int, ...]], ...]  # (kernel size, gate indices outer -> inner)
    in_idx: np.ndarray                            # gate index per input channel (-1: always kept)
    out_idx: np.ndarray
    depthwise: bool


class FlopsBudget:
    """``flops(g)`` / ``ratio(g)`` for gate values ``g`` (numpy or torch, 1-D, length = gates)."""

    def __init__(self, terms: list[LayerTerm], total: int, n_gates: int):
        self.terms = terms
        self.total = int(total)
        self.n_gates = n_gates
        self.fixed = float(sum(t.flops for t in terms if not t.axes and _ungated(t)))
        self._torch_idx: dict[int, Any] = {}

    def flops(self, g):
        is_torch = not isinstance(g, np.ndarray)
        if is_torch:
            import torch

            ext = torch.cat([g, torch.ones(1, dtype=g.dtype, device=g.device)])
        else:
            ext = np.concatenate([np.asarray(g, np.float64), [1.0]])
        total = ext.new_tensor(self.fixed) if is_torch else self.fixed
        for i, t in enumerate(self.terms):
            if not t.axes and _ungated(t):
                continue
            f = float(t.flops)
            term = None
            for k, idx in t.axes:
                kept = float(k - 2 * len(idx))
                e = None
                for j in reversed(idx):
                    e = ext[j] if e is None else e * ext[j]
                    kept = kept + 2 * e
                term = kept / k if term is None else term * (kept / k)
            out = self._mean(ext, t.out_idx, i, "out", is_torch)
            term = out if term is None else term * out
            if not t.depthwise:
                term = term * self._mean(ext, t.in_idx, i, "in", is_torch)
            total = total + f * term
        return total

    def ratio(self, g):
        """``flops(g)`` over the model's FLOPs; 1 for a model without counted FLOPs (0 / 0: there is
        nothing to remove, so all of it is kept). Stays a tensor of ``g`` when ``g`` is one."""
        f = self.flops(g)
        if self.total <= 0:
            return f * 0.0 + 1.0
        return f / self.total

    def _mean(self, ext, idx: np.ndarray, i: int, side: str, is_torch: bool):
        if (idx < 0).all():
            return 1.0
        pos = np.where(idx < 0, self.n_gates, idx)
        if is_torch:
            key = (i, side)
            if key not in self._torch_idx:
                import torch

                self._torch_idx[key] = torch.as_tensor(pos, dtype=torch.long)
            return ext[self._torch_idx[key].to(ext.device)].mean()
        return ext[pos].mean()


def _ungated(t: LayerTerm) -> bool:
    return bool((t.in_idx < 0).all() and (t.out_idx < 0).all())


def build_budget(model: onnx.ModelProto, cost: Any, space: GateSpace, analysis: Any | None) -> FlopsBudget:
    """The budget of ``model`` (whose ``count_cost`` is ``cost``) under the gates of ``space``."""
    nodes = [n for n in model.graph.node if n.op_type in WEIGHTED_OPS]
    if len(nodes) != len(cost.layers):
        raise ValueError(f"count_cost listed {len(cost.layers)} layers but the model has {len(nodes)} weighted nodes")
    terms = []
    for node, layer in zip(nodes, cost.layers):
        axes: tuple = ()
        if node.op_type == "Conv" and len(node.input) > 1:
            w = node.input[1]
            axes = tuple((int(layer.kernel[a]), tuple(space.axes[(w, a)]))
                         for a in range(len(layer.kernel)) if (w, a) in space.axes)
        in_idx = _feature_idx(space, analysis, node, node.input[0], node.op_type)
        out_idx = _feature_idx(space, analysis, node, node.output[0], node.op_type)
        depthwise = node.op_type == "Conv" and layer.groups > 1 and layer.groups == layer.in_channels
        terms.append(LayerTerm(layer.name, layer.op, int(layer.flops), axes, in_idx, out_idx, depthwise))
    return FlopsBudget(terms, cost.flops, space.size)


def _feature_idx(space: GateSpace, analysis: Any | None, node: onnx.NodeProto, tensor: str, op: str) -> np.ndarray:
    """Gate index per channel of the axis the layer's FLOPs scale with (else all -1)."""
    if analysis is None or tensor not in analysis.spaces:
        return np.full(1, -1, np.int64)
    sp = analysis.spaces[tensor]
    if op in ("Conv", "ConvTranspose", "Gemm") and sp.axis != 1:
        return np.full(1, -1, np.int64)
    if op == "Gemm":
        attrs = node_attributes(node)
        if tensor == node.input[0] and attrs.get("transA", 0):
            return np.full(1, -1, np.int64)
    if op == "MatMul" and sp.axis != sp.rank - 1:
        return np.full(1, -1, np.int64)
    return slot_gate_index(space, analysis, tensor)
