"""Rules for weighted linear ops: each output channel is a filter reading input channels.

Conv        W[Cout, Cin/G, k...]: out f of group g = f // (Cout/G) reads inputs
            g*Cin/G .. (g+1)*Cin/G - 1 through W[f]. G = 1: outputs start a new space,
            inputs are read through dep[f, c] = any(W[f, c] != 0). G > 1 (depthwise with
            any multiplier included): the inputs and outputs of one group are one slot,
            because every group must keep the same size; dropping it removes the group
            (W rows, bias entries, ``group`` decreases by one).
ConvTranspose W[Cin, Cout/G, k...]: the same with the roles of W's axes swapped.
Gemm        A[M, K] (transA = 0) x B[K, N] (or B^T with transB) + C: features on axis 1.
MatMul      A[..., K] x B[K, N] with B a constant matrix: features on the last axis.

An output channel is zero when its bias (beta*C for Gemm) is 0 and every weight
reading a non-zero input channel is 0. Dropping removes filters (W rows / columns,
bias entries) and input slices.

Folding (``fold``, before ``drop``): a removed input channel c that is the constant v
(:mod:`smof_onnx.passes.analysis.constants`) adds, to output f,
- Conv with zero pads, group 1: v * sum(W[f, c]) at every output position (each output
  position reads every tap of c inside the image, all equal to v), added to B[f];
- Gemm: alpha * v * B'[c, f] to every row, added to C (C := C + that / beta; a missing C or
  beta = 0 becomes C := that, beta := 1);
- MatMul: v * B[c, f] on every row, added by a new ``Add`` after the MatMul.
Removing c then removes exactly that term, so every output keeps its value. Grouped convs
read their inputs inside the slot that is removed with them, and the analysis lets no live
padded Conv or ConvTranspose read a removed non-zero constant, so they fold nothing.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from .rulebase import Rule, refuse
from .spaces import Builder, Space


def pads_zero(node: gs.Node) -> bool:
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    """No zero padding at all: every output position reads every tap inside the input."""
    return auto in ("NOTSET", "VALID") and not any(int(p) for p in node.attrs.get("pads", ()))


def _input_space(node: gs.Node, b: Builder, axis: int | None, size: int) -> Space | None:
    """The tracked input space if it matches (axis, size); a mismatch freezes it."""
    x = node.inputs[0]
    xs = b.space(x)
    if xs is None:
        return None
    want_axis = xs.rank - 1 if axis is None else axis
    if xs.axis != want_axis or xs.size != size:
        refuse(node, b, f"input channels on axis {xs.axis} ({xs.size}) do not match the weight "
                        f"(axis {want_axis}, {size})", [x])
        return None
    return xs


def _bias(node: gs.Node, b: Builder, index: int) -> tuple[bool, np.ndarray | None]:
    present = index < len(node.inputs) and bool(node.inputs[index].name)
    if not present:
        return True, None
    v = b.const(node.inputs[index])
    return v is not None, v


class Conv(Rule):
    category = "producer"
    transpose = False

    def couple(self, node: gs.Node, b: Builder) -> None:
        w = b.const(node.inputs[1]) if len(node.inputs) > 1 else None
        ok, bias = _bias(node, b, 2)
        if w is None or not ok or w.ndim < 3:
            refuse(node, b, "weight or bias is not a constant")
            return
        g = int(node.attrs.get("group", 1))
        if self.transpose:
            cin, cout = w.shape[0], w.shape[1] * g
            k = cin // g
            nz = (w != 0).reshape(cin, w.shape[1], -1).any(axis=2)          # [Cin, Cout/G]
            dep = nz.reshape(g, k, cout // g).transpose(0, 2, 1).reshape(cout, k)
        else:
            cout, k = w.shape[0], w.shape[1]
            cin = k * g
            dep = (w != 0).reshape(cout, k, -1).any(axis=2)
        if cin % g or cout % g:
            refuse(node, b, f"channels not divisible by group={g}")
            return
        xs = _input_space(node, b, 1, cin)
        ys = b.new_space(node.outputs[0], 1, cout, w.ndim)
        if ys is None:
            refuse(node, b, "output shape disagrees with the weight")
            return
        bias_zero = np.ones(cout, bool) if bias is None else (bias.reshape(-1) == 0)
        b.sink(node, xs, ys, dep, g, bias_zero)
        b.data[id(node)] = {"tracked_input": xs is not None, "groups": g}
        if g > 1:
            m = cout // g
            for gi in range(g):
                block = ys.ids[gi * m:(gi + 1) * m]
                if xs is not None:
                    block = np.concatenate([block, xs.ids[gi * k:(gi + 1) * k]])
                b.union(block, block[0])
            if xs is None:
                b.freeze(node, "grouped conv whose input channels are not tracked", ys.ids)

    def fold(self, node: gs.Node, c: Any) -> None:
        data = c.data(node)
        v = c.folded(node.inputs[0]) if data["tracked_input"] else None
        if v is None or self.transpose or data["groups"] != 1 or not pads_zero(node):
            return
        w = np.asarray(node.inputs[1].values, np.float64)
        contrib = w.reshape(w.shape[0], w.shape[1], -1).sum(axis=2) @ v
        has_bias = len(node.inputs) > 2 and bool(node.inputs[2].name)
        bias = np.asarray(node.inputs[2].values, np.float64) if has_bias else np.zeros(w.shape[0])
        c.set_input(node, 2, (bias + contrib).astype(np.asarray(node.inputs[1].values).dtype))

    def drop(self, node: gs.Node, c: Any) -> None:
        data = c.data(node)
        x, y = node.inputs[0], node.outputs[0]
        rin = c.removed(x) if data["tracked_input"] else None
        rout = c.removed(y)
        w = np.asarray(node.inputs[1].values)
        g = data["groups"]
        out_axis, in_axis = (1, 0) if self.transpose else (0, 1)
        if g == 1:
            if rout is not None:
                w = np.compress(~rout, w, axis=out_axis)
            if rin is not None:
                w = np.compress(~rin, w, axis=in_axis)
        else:
            if rout is None:
                raise c.fail("group conv lost input channels without its outputs", node)
            blocks = rout.reshape(g, -1)
            if not (blocks.all(axis=1) == blocks.any(axis=1)).all():
                raise c.fail("a group lost only some of its channels", node)
            gone = blocks.all(axis=1)
            # rows of W are grouped along the axis holding whole groups: out for Conv, in for ConvTranspose
            w = w.reshape(g, -1, *w.shape[1:])[~gone].reshape(-1, *w.shape[1:])
            node.attrs["group"] = int(g - gone.sum())
        c.set_input(node, 1, w)
        if rout is not None and len(node.inputs) > 2 and node.inputs[2].name:
            c.set_input(node, 2, np.asarray(node.inputs[2].values)[~rout])


class ConvTranspose(Conv):
    transpose = True


class Gemm(Rule):
    category = "producer"

    def couple(self, node: gs.Node, b: Builder) -> None:
        bw = b.const(node.inputs[1])
        ok, cv = _bias(node, b, 2)
        if bw is None or bw.ndim != 2 or not ok:
            refuse(node, b, "B or C is not a constant matrix")
            return
        if node.attrs.get("transA", 0):
            refuse(node, b, "transA=1 puts the features of A on axis 0")
            return
        bm = bw.T if node.attrs.get("transB", 0) else bw                      # [K, N]
        k, n = bm.shape
        alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
        if cv is None or beta == 0:
            bias_zero = np.ones(n, bool)
        else:
            c2 = cv.reshape((1,) * (2 - cv.ndim) + cv.shape) if cv.ndim < 2 else cv
            bias_zero = np.broadcast_to((c2 == 0).all(axis=0), (n,)).copy()
        xs = _input_space(node, b, 1, k)
        ys = b.new_space(node.outputs[0], 1, n, 2)
        if ys is None:
            refuse(node, b, "output shape disagrees with B")
            return
        dep = (bm.T != 0) & (alpha != 0)
        b.sink(node, xs, ys, dep, 1, bias_zero)
        b.data[id(node)] = {"tracked_input": xs is not None}

    def fold(self, node: gs.Node, c: Any) -> None:
        v = c.folded(node.inputs[0]) if c.data(node)["tracked_input"] else None
        if v is None:
            return
        bw = np.asarray(node.inputs[1].values)
        bm = (bw.T if node.attrs.get("transB", 0) else bw).astype(np.float64)
        alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
        contrib = alpha * (v @ bm)
        has_c = len(node.inputs) > 2 and bool(node.inputs[2].name)
        if has_c and beta != 0:
            new = np.asarray(node.inputs[2].values, np.float64) + contrib / beta
        else:
            new = contrib
            node.attrs["beta"] = 1.0
        c.set_input(node, 2, new.astype(bw.dtype))

    def drop(self, node: gs.Node, c: Any) -> None:
        rin = c.removed(node.inputs[0]) if c.data(node)["tracked_input"] else None
        rout = c.removed(node.outputs[0])
        bw = np.asarray(node.inputs[1].values)
        in_axis, out_axis = (1, 0) if node.attrs.get("transB", 0) else (0, 1)
        if rin is not None:
            bw = np.compress(~rin, bw, axis=in_axis)
        if rout is not None:
            bw = np.compress(~rout, bw, axis=out_axis)
        c.set_input(node, 1, bw)
        if rout is not None and len(node.inputs) > 2 and node.inputs[2].name:
            cv = np.asarray(node.inputs[2].values)
            if cv.ndim >= 1 and cv.shape[-1] == rout.size and rout.size > 1:
                c.set_input(node, 2, np.compress(~rout, cv, axis=cv.ndim - 1))


class MatMul(Rule):
    category = "producer"

    def couple(self, node: gs.Node, b: Builder) -> None:
        bw = b.const(node.inputs[1])
        if bw is None or bw.ndim != 2:
            refuse(node, b, "second operand is not a constant matrix")
            return
        k, n = bw.shape
        x = node.inputs[0]
        rank = b.space(x).rank if b.space(x) is not None else b.rank(x)
        if rank is None or rank < 2:
            refuse(node, b, "first operand rank unknown or < 2")
            return
        xs = _input_space(node, b, None, k)
        ys = b.new_space(node.outputs[0], rank - 1, n, rank)
        if ys is None:
            refuse(node, b, "output shape disagrees with the weight")
            return
        b.sink(node, xs, ys, bw.T != 0, 1, np.ones(n, bool))
        b.data[id(node)] = {"tracked_input": xs is not None}

    def fold(self, node: gs.Node, c: Any) -> None:
        v = c.folded(node.inputs[0]) if c.data(node)["tracked_input"] else None
        if v is None:
            return
        bw = np.asarray(node.inputs[1].values)
        contrib = (v @ bw.astype(np.float64)).astype(bw.dtype)
        rout = c.removed(node.outputs[0])
        if rout is not None:
            contrib = contrib[~rout]
        c.add_after(node, contrib)

    def drop(self, node: gs.Node, c: Any) -> None:
        rin = c.removed(node.inputs[0]) if c.data(node)["tracked_input"] else None
        rout = c.removed(node.outputs[0])
        bw = np.asarray(node.inputs[1].values)
        if rin is not None:
            bw = bw[~rin]
        if rout is not None:
            bw = bw[:, ~rout]
        c.set_input(node, 1, bw)


PRODUCERS: dict[str, Rule] = {"Conv": Conv(), "ConvTranspose": ConvTranspose(), "Gemm": Gemm(),
                              "MatMul": MatMul()}
