"""Rules for ops that are the identity on channels: pooling, Resize / Upsample, Pad, spatial reductions.

Pooling (MaxPool, AveragePool, LpPool, Global*) works on axes 2+: channel c in, channel c
out, zero preserved. Resize / Upsample need scale 1 (or size = channel count, rewritten
when channels go) on the channel axis; Pad needs zero pads on it and preserves zero in
reflect / edge mode or with constant value 0. ReduceMean / Max / Min / Sum / L1 / L2 /
SumSquare / Prod over non-channel axes keep channels apart and preserve zero
(ReduceLogSum / LogSumExp do not); a reduction over the channel axis is frozen.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from .rulebase import Rule, norm_axis, refuse
from .rules_elementwise import Map, _same
from .rules_layout import Refusal, _ints
from .spaces import Builder


class Pool(Map):
    """Pooling and spatial resizing: identity on channels (channel axis must be 1)."""

    category = "pooling"

    def __init__(self, indices: list[int] | None = None):
        super().__init__(_same, indices or [0])

    def check(self, node: gs.Node, b: Builder, axis: int, rank: int) -> str | None:
        return None if axis == 1 else f"channels on axis {axis}, pooling acts on axes 2+"

    def couple(self, node: gs.Node, b: Builder) -> None:
        xs = b.space(node.inputs[0])
        if xs is None:
            return
        try:
            why = self.check(node, b, xs.axis, xs.rank)
        except Refusal as exc:
            why = str(exc)
        if why:
            refuse(node, b, why)
            return
        super().couple(node, b)


class Resize(Pool):
    """Resize / Upsample: the channel-axis scale must be 1 (or size = channel count)."""

    def check(self, node: gs.Node, b: Builder, axis: int, rank: int) -> str | None:
        if node.op == "Upsample" or b.opset < 11:
            scales = node.attrs.get("scales") or _floats(node, b, 1)
            sizes = None
        else:
            scales, sizes = _floats(node, b, 2), _floats(node, b, 3)
        axes = [norm_axis(a, rank) for a in node.attrs.get("axes", range(rank))]
        for vals, want in ((scales, 1.0), (sizes, float(b.space(node.inputs[0]).size))):
            if vals:
                if axis in axes and float(vals[axes.index(axis)]) != want:
                    return f"resizes the channel axis ({vals})"
                return None
        return "neither scales nor sizes is a constant"

    def drop(self, node: gs.Node, c: Any) -> None:
        removed = c.removed(node.outputs[0])
        if removed is None or node.op == "Upsample" or c.opset < 11:
            return
        if len(node.inputs) > 3 and node.inputs[3].name:
            sizes = np.asarray(node.inputs[3].values).copy()
            axes = list(node.attrs.get("axes", range(len(sizes))))
            axis = c.data(node).axis
            sizes[[norm_axis(a, c.data(node).rank) for a in axes].index(axis)] = int((~removed).sum())
            c.set_input(node, 3, sizes)


def _floats(node: gs.Node, b: Builder, index: int) -> list[float] | None:
    if index < len(node.inputs) and node.inputs[index].name:
        v = b.const(node.inputs[index])
        if v is None:
            raise Refusal(f"input {index} ('{node.inputs[index].name}') is computed at run time")
        return [float(x) for x in np.asarray(v).reshape(-1)] or None
    return None


class Pad(Pool):
    def check(self, node: gs.Node, b: Builder, axis: int, rank: int) -> str | None:
        pads = node.attrs.get("pads") if b.opset < 11 else _ints(node, b, 1)
        if pads is None:
            return "pads unknown"
        axes = _ints(node, b, 3) if b.opset >= 18 else None
        axes = [norm_axis(a, rank) for a in (axes if axes is not None else range(rank))]
        n = len(axes)
        if axis in axes and (pads[axes.index(axis)] or pads[n + axes.index(axis)]):
            return "pads the channel axis"
        return None

    def zero(self, node: gs.Node, z: Any) -> None:
        mode = node.attrs.get("mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode == "constant":
            value = node.attrs.get("value", 0.0)
            if z.opset >= 11 and len(node.inputs) > 2 and node.inputs[2].name:
                t = node.inputs[2]
                if not isinstance(t, gs.Constant):
                    return
                value = float(np.asarray(t.values).reshape(-1)[0])
            if value != 0:
                return
        super().zero(node, z)


class Reduce(Rule):
    """Reductions over non-channel axes (ReduceMean over H, W keeps each channel apart)."""

    category = "pooling"

    def __init__(self, preserves_zero: bool):
        self.preserves_zero = preserves_zero

    def couple(self, node: gs.Node, b: Builder) -> None:
        xs = b.space(node.inputs[0])
        if xs is None:
            return
        try:
            axes = _ints(node, b, 1, "axes")
        except Refusal as exc:
            refuse(node, b, str(exc))
            return
        if not axes:
            refuse(node, b, "reduces every axis (no axes given)")
            return
        axes = sorted({norm_axis(a, xs.rank) for a in axes})
        if xs.axis in axes:
            refuse(node, b, "reduces over the channel axis")
            return
        keep = int(node.attrs.get("keepdims", 1))
        axis = xs.axis if keep else xs.axis - sum(a < xs.axis for a in axes)
        ys = b.new_space(node.outputs[0], axis, xs.size, xs.rank if keep else xs.rank - len(axes))
        if ys is None:
            refuse(node, b, "output shape disagrees")
            return
        b.flow(node, xs.ids, ys.ids)
        b.declare(node, node.inputs[0])
        b.data[id(node)] = {}

    def zero(self, node: gs.Node, z: Any) -> None:
        if self.preserves_zero and z.data(node) is not None:
            z.set(node.outputs[0], z.zero(node.inputs[0]))


POOLING: dict[str, Rule] = {
    **{op: Pool() for op in ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
                             "GlobalLpPool")},
    "Resize": Resize(), "Upsample": Resize(), "Pad": Pad(),
    **{op: Reduce(True) for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1",
                                   "ReduceL2", "ReduceSumSquare", "ReduceProd")},
    **{op: Reduce(False) for op in ("ReduceLogSum", "ReduceLogSumExp")},
}
