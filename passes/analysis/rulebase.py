"""The :class:`Rule` protocol and helpers shared by the rule modules.

A rule answers three questions about one op type:

``couple(node, b)``
    Which channel spaces its outputs get and how their atoms relate to the inputs'
    (see :class:`smof_onnx.passes.analysis.spaces.Builder`). A rule that cannot model a node
    calls :func:`refuse`, which freezes every tracked input with the reason.
``zero(node, z)``
    Forward transfer of the *zero* fact: ``z.zero(tensor)`` gives the input masks,
    ``z.set(tensor, mask)`` the output's. Omitted outputs are "not known zero".
    (Weighted producers are handled generically from their :class:`Sink`.)
``fold(node, c)``
    Before ``drop``: a weighted reader adds the contribution of removed constant input
    channels (``c.folded(tensor)``: value per channel, 0 where nothing is folded) to its bias.
``drop(node, c)``
    The editing half: ``c.removed(tensor)`` is the bool mask of removed channels of a
    tracked tensor (``None``: nothing removed), ``c.set_input(node, i, values)``
    replaces a constant input (cloned when shared), ``c.data(node)`` is what
    ``couple`` stored. Called only for nodes touching a removed channel.

The backward *unused* fact needs no per-rule code: it follows the ``flow`` /
``read`` edges and sinks that ``couple`` recorded.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from .spaces import Builder, Space

CATEGORIES = ("producer", "elementwise", "normalization", "route", "layout", "pooling")


class Rule:
    """One op type's coupling, zero transfer and drop rule (see the module docstring)."""

    category: ClassVar[str] = ""

    def couple(self, node: gs.Node, b: Builder) -> None:
        raise NotImplementedError

    def zero(self, node: gs.Node, z: Any) -> None:
        """Default: no output is known to be zero."""

    def drop(self, node: gs.Node, c: Any) -> None:
        """Default: removing channels needs no edit of the node."""

    def fold(self, node: gs.Node, c: Any) -> None:
        """Absorb removed constant input channels (``c.folded(tensor)``) before ``drop``.

        Default: nothing to absorb (the analysis lets only foldable readers keep reading a
        removed non-zero constant; see :mod:`smof_onnx.passes.analysis.constants`).
        """


def data_inputs(node: gs.Node, indices: list[int] | None = None) -> list[tuple[int, gs.Tensor]]:
    """(index, tensor) of the node's present inputs (optional empty inputs skipped)."""
    idx = range(len(node.inputs)) if indices is None else indices
    return [(i, node.inputs[i]) for i in idx if i < len(node.inputs) and node.inputs[i].name]


def refuse(node: gs.Node, b: Builder, reason: str, tensors: list[gs.Tensor] | None = None) -> None:
    """Freeze every tracked input of ``node``: its reading is not modelled, so the inputs
    are needed whenever ``node`` is live (one of its outputs is needed; see facts).

    Output spaces the rule may already have made are frozen too, so a refused node is
    never edited.
    """
    tensors = [t for t in (node.inputs if tensors is None else tensors) if t is not None and t.name]
    b.freeze_tensors(node, reason, tensors + [o for o in node.outputs if b.space(o) is not None])
    for t in tensors:
        if b.space(t) is not None:
            b.declare(node, t)


def extra_outputs_used(node: gs.Node, b: Builder, first: int = 1) -> bool:
    """Whether any output after the first is read by a node or is a graph output."""
    return any(o.name and (o.outputs or o.name in b.graph_outputs) for o in node.outputs[first:])


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


@dataclasses.dataclass
class Operand:
    """One input of an elementwise node, seen from the output's channel axis."""

    index: int
    kind: str                          # "space" | "bcast" | "const" | "other"
    value: np.ndarray | None = None    # constants, aligned to the output rank
    per_channel: bool = False          # constant whose channel-axis size is the channel count


@dataclasses.dataclass
class Elementwise:
    axis: int
    size: int
    rank: int
    operands: list[Operand]
    out: Space


def couple_elementwise(node: gs.Node, b: Builder, indices: list[int] | None = None,
                       out_index: int = 0) -> Elementwise | None:
    """Couple channel c of every broadcast-compatible input with channel c of the output.

    Inputs whose channel-axis size is 1 broadcast: a tracked one is read by every
    output channel (not coupled); a constant one is kept as is; a constant with the
    full channel count is a per-channel operand, dropped along with the channel.
    """
    ins = data_inputs(node, indices)
    out = node.outputs[out_index]
    tracked = [(i, t, b.space(t)) for i, t in ins if b.space(t) is not None]
    if not tracked:
        return None
    ranks = [sp.rank if sp else b.rank(t) for _, t, sp in [(i, t, b.space(t)) for i, t in ins]]
    out_rank = b.rank(out)
    if out_rank is None:
        if any(r is None for r in ranks):
            refuse(node, b, "input rank unknown; cannot align broadcast", [t for _, t in ins])
            return None
        out_rank = max(ranks)
    _, _, anchor = max(tracked, key=lambda x: x[2].size)
    axis = anchor.axis + out_rank - anchor.rank
    size = anchor.size
    operands: list[Operand] = []
    for (i, t), r in zip(ins, ranks):
        sp = b.space(t)
        if sp is not None:
            if sp.axis + out_rank - sp.rank != axis:
                refuse(node, b, f"input '{t.name}' carries channels on another axis", [t for _, t in ins])
                return None
            if sp.size == size:
                operands.append(Operand(i, "space"))
            elif sp.size == 1:
                operands.append(Operand(i, "bcast"))
            else:
                refuse(node, b, f"input '{t.name}' has {sp.size} channels, expected {size}", [t for _, t in ins])
                return None
            continue
        v = b.const(t)
        if v is not None:
            if v.ndim > out_rank:
                refuse(node, b, f"constant '{t.name}' has a higher rank than the output", [t for _, t in ins])
                return None
            v = v.reshape((1,) * (out_rank - v.ndim) + v.shape)
            d = v.shape[axis]
            if d not in (1, size):
                refuse(node, b, f"constant '{t.name}' has {d} entries on the channel axis, expected {size}",
                       [t for _, t in ins])
                return None
            operands.append(Operand(i, "const", v, per_channel=(d == size and size > 1)))
            continue
        pos = None if r is None else axis - (out_rank - r)
        if r is None or (pos >= 0 and b.dim(t, pos) != 1):
            refuse(node, b, f"input '{t.name}' is not tracked and may vary along the channel axis",
                   [t for _, t in ins])
            return None
        operands.append(Operand(i, "other"))
    out_space = b.new_space(out, axis, size, out_rank)
    if out_space is None:
        refuse(node, b, f"output '{out.name}' shape disagrees with {size} channels on axis {axis}",
               [t for _, t in ins])
        return None
    for op in operands:
        t = node.inputs[op.index]
        if op.kind == "space":
            b.flow(node, b.space(t).ids, out_space.ids)
        elif op.kind == "bcast":
            b.flow(node, b.space(t).ids, out_space.ids, couple=False)
        if op.kind in ("space", "bcast"):
            b.declare(node, t)
    data = Elementwise(axis, size, out_rank, operands, out_space)
    b.data[id(node)] = data
    return data


def operand_zero(node: gs.Node, data: Elementwise, op: Operand, z: Any) -> np.ndarray:
    """bool [C]: channels where this operand is identically zero."""
    c = data.size
    if op.kind == "space":
        return z.zero(node.inputs[op.index])
    if op.kind == "bcast":
        return np.full(c, bool(z.zero(node.inputs[op.index])[0]))
    if op.kind == "const":
        return channel_all(op.value == 0, data.axis, c)
    return np.zeros(c, bool)


def operand_nonzero(data: Elementwise, op: Operand) -> np.ndarray:
    """bool [C]: channels where a constant operand has no zero entry (others: unknown -> False)."""
    if op.kind != "const":
        return np.zeros(data.size, bool)
    return channel_all(op.value != 0, data.axis, data.size)


def channel_all(mask: np.ndarray, axis: int, size: int) -> np.ndarray:
    moved = np.moveaxis(mask, axis, 0).reshape(mask.shape[axis], -1).all(axis=1)
    return np.broadcast_to(moved, (size,)).copy()


def drop_const_operands(node: gs.Node, data: Elementwise, c: Any) -> None:
    """Drop removed channels from every per-channel constant operand."""
    removed = c.removed(node.outputs[0])
    if removed is None:
        return
    for op in data.operands:
        if op.kind == "const" and op.per_channel:
            orig = np.asarray(node.inputs[op.index].values)
            new = np.compress(~removed, op.value, axis=data.axis)
            c.set_input(node, op.index, new.reshape(new.shape[data.rank - orig.ndim:]))
