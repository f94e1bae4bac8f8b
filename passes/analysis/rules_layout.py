"""Rules for ops that route channels: Concat, Split, Slice, and the layout ops before a Gemm.

Concat on the channel axis: input i's channel c is output channel offset_i + c (no
attribute changes when channels go). Split on the channel axis: output i's channel c
is input channel offset_i + c (sizes rewritten; an implicit equal split becomes explicit).
Slice on the channel axis with static starts/ends and step 1: output channel j is
input channel start + j; inputs outside the range are not read (starts/ends rewritten).
On any other axis these ops couple channel c with channel c.

Flatten / Reshape / Transpose / Squeeze / Unsqueeze are simulated exactly on an index
tensor (channel number at every element, static shapes needed; an unknown batch dim
is simulated as 1): the output's channel axis is the one axis along which the index
varies, and output feature j is a copy of input channel ``map[j]``. A Flatten of
[N, C, H, W] thus maps channel c to the block of features c*H*W .. (c+1)*H*W - 1; the
MTCNN-style Transpose(0, 3, 2, 1) + Flatten maps it to the features f with f % C = c.
A layout that mixes the channel axis with another (channel shuffle) is frozen. A
one-channel input has a constant index, so its axis is located by simulating the same
op on two channels (see :meth:`Layout._probe_axis`).
Reshape's constant target shape is rewritten when channels go. Pooling-like ops are in rules_pooling.py.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from .rulebase import Rule, couple_elementwise, data_inputs, drop_const_operands, norm_axis, refuse
from .rules_elementwise import Map, _all
from .spaces import Builder


class Refusal(Exception):
    pass


PROBE = 2  # channel count the layout simulation uses to locate a one-channel axis


def _ints(node: gs.Node, b: Builder, index: int, attr_name: str | None = None) -> list[int] | None:
    """An int list from a constant input (opset >= the input form) or an attribute; None: absent."""
    if index < len(node.inputs) and node.inputs[index].name:
        v = b.const(node.inputs[index])
        if v is None:
            raise Refusal(f"input {index} ('{node.inputs[index].name}') is computed at run time")
        return [int(x) for x in np.asarray(v).reshape(-1)]
    if attr_name and attr_name in node.attrs:
        return [int(x) for x in node.attrs[attr_name]]
    return None


class Concat(Rule):
    category = "route"

    def couple(self, node: gs.Node, b: Builder) -> None:
        ins = data_inputs(node)
        spaces = [b.space(t) for _, t in ins]
        tracked = [s for s in spaces if s is not None]
        if not tracked:
            return
        rank = tracked[0].rank
        axis = norm_axis(int(node.attrs.get("axis", 0)), rank)
        if axis != tracked[0].axis:
            couple_elementwise(node, b)  # concatenating along H/W keeps channel c with channel c
            return
        if any(s is None or s.axis != axis or s.rank != rank for s in spaces):
            refuse(node, b, "an input on the channel axis is not tracked (constant or unknown)")
            return
        ys = b.new_space(node.outputs[0], axis, sum(s.size for s in spaces), rank)
        if ys is None:
            refuse(node, b, "output shape disagrees with the inputs")
            return
        off = 0
        for (_, t), s in zip(ins, spaces):
            b.flow(node, s.ids, ys.ids[off:off + s.size])
            b.declare(node, t)
            off += s.size
        b.data[id(node)] = {"channel": True}

    def zero(self, node: gs.Node, z: Any) -> None:
        data = z.data(node)
        if data is None:
            return
        if isinstance(data, dict):
            z.set(node.outputs[0], np.concatenate([z.zero(t) for _, t in data_inputs(node)]))
        else:
            Map(_all).zero(node, z)

    def drop(self, node: gs.Node, c: Any) -> None:
        data = c.data(node)
        if data is not None and not isinstance(data, dict):
            drop_const_operands(node, data, c)


class Split(Rule):
    category = "route"

    def couple(self, node: gs.Node, b: Builder) -> None:
        xs = b.space(node.inputs[0])
        if xs is None:
            return
        axis = norm_axis(int(node.attrs.get("axis", 0)), xs.rank)
        outs = node.outputs
        if axis != xs.axis:
            for y in outs:
                ys = b.new_space(y, xs.axis, xs.size, xs.rank)
                if ys is None:
                    refuse(node, b, f"output '{y.name}' shape disagrees")
                    return
                b.flow(node, xs.ids, ys.ids)
            b.declare(node, node.inputs[0])
            b.data[id(node)] = {"channel": False}
            return
        try:
            sizes = _ints(node, b, 1, "split")
        except Refusal as exc:
            refuse(node, b, str(exc))
            return
        if sizes is None:
            n = len(outs)
            if xs.size % n == 0:
                sizes = [xs.size // n] * n
            elif b.opset >= 18:
                step = -(-xs.size // n)
                sizes = [step] * (n - 1) + [xs.size - step * (n - 1)]
            else:
                refuse(node, b, f"{xs.size} channels do not split evenly in {n}")
                return
        if sum(sizes) != xs.size or len(sizes) != len(outs):
            refuse(node, b, f"split sizes {sizes} do not match {xs.size} channels")
            return
        off, made = 0, []
        for y, s in zip(outs, sizes):
            ys = b.new_space(y, axis, s, xs.rank)
            if ys is None:
                refuse(node, b, f"output '{y.name}' shape disagrees with split size {s}")
                return
            made.append((ys, off))
            off += s
        for ys, o in made:
            b.flow(node, xs.ids[o:o + ys.size], ys.ids)
        b.declare(node, node.inputs[0])
        b.data[id(node)] = {"channel": True, "sizes": sizes}

    def zero(self, node: gs.Node, z: Any) -> None:
        data = z.data(node)
        if data is None:
            return
        zx = z.zero(node.inputs[0])
        off = 0
        for y, s in zip(node.outputs, data.get("sizes") or [len(zx)] * len(node.outputs)):
            z.set(y, zx[off:off + s] if data["channel"] else zx)
            off += s if data["channel"] else 0

    def drop(self, node: gs.Node, c: Any) -> None:
        data = c.data(node)
        if not data["channel"]:
            return
        removed = c.removed(node.inputs[0])
        off, sizes = 0, []
        for s in data["sizes"]:
            sizes.append(int((~removed[off:off + s]).sum()))
            off += s
        if c.opset < 13:
            node.attrs["split"] = sizes
        else:
            node.attrs.pop("num_outputs", None)
            c.set_input(node, 1, np.asarray(sizes, np.int64))


class Slice(Rule):
    category = "route"

    def couple(self, node: gs.Node, b: Builder) -> None:
        x = node.inputs[0]
        xs = b.space(x)
        if xs is None:
            return
        try:
            if b.opset < 10:
                starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
                axes, steps = node.attrs.get("axes"), None
            else:
                starts, ends, axes, steps = (_ints(node, b, i) for i in (1, 2, 3, 4))
        except Refusal as exc:
            refuse(node, b, str(exc))
            return
        axes = [norm_axis(a, xs.rank) for a in (axes if axes is not None else range(len(starts)))]
        steps = steps if steps is not None else [1] * len(starts)
        if xs.axis not in axes:
            ys = b.new_space(node.outputs[0], xs.axis, xs.size, xs.rank)
            if ys is None:
                refuse(node, b, "output shape disagrees")
                return
            b.flow(node, xs.ids, ys.ids)
            b.declare(node, x)
            b.data[id(node)] = {"channel": False}
            return
        i = axes.index(xs.axis)
        if steps[i] != 1:
            refuse(node, b, f"step {steps[i]} on the channel axis")
            return
        c = xs.size
        s, e = starts[i], ends[i]
        s = min(max(s + c if s < 0 else s, 0), c)
        e = min(max(e + c if e < 0 else e, 0), c)
        e = max(e, s)
        ys = b.new_space(node.outputs[0], xs.axis, e - s, xs.rank) if e > s else None
        if ys is None:
            refuse(node, b, "empty or shape-inconsistent slice of the channel axis")
            return
        b.flow(node, xs.ids[s:e], ys.ids)
        b.declare(node, x)
        b.data[id(node)] = {"channel": True, "pos": i, "s": s, "e": e, "starts": starts, "ends": ends}

    def zero(self, node: gs.Node, z: Any) -> None:
        data = z.data(node)
        if data is None:
            return
        zx = z.zero(node.inputs[0])
        z.set(node.outputs[0], zx[data["s"]:data["e"]] if data["channel"] else zx)

    def drop(self, node: gs.Node, c: Any) -> None:
        data = c.data(node)
        if not data["channel"]:
            return
        removed = c.removed(node.inputs[0])
        if removed is None:
            return
        ns = int((~removed[:data["s"]]).sum())
        ne = ns + int((~removed[data["s"]:data["e"]]).sum())
        starts, ends = list(data["starts"]), list(data["ends"])
        starts[data["pos"]], ends[data["pos"]] = ns, ne
        if c.opset < 10:
            node.attrs["starts"], node.attrs["ends"] = starts, ends
        else:
            c.set_input(node, 1, np.asarray(starts, np.int64))
            c.set_input(node, 2, np.asarray(ends, np.int64))


def _find_axis(idx: np.ndarray) -> int | None:
    for j in range(idx.ndim):
        line = idx[tuple(slice(None) if i == j else 0 for i in range(idx.ndim))]
        shape = [1] * idx.ndim
        shape[j] = -1
        if np.unique(line).size > 1 and np.array_equal(idx, np.broadcast_to(line.reshape(shape), idx.shape)):
            return j
    return None


class Layout(Rule):
    """Flatten / Reshape / Transpose / Squeeze / Unsqueeze, simulated on an index tensor."""

    category = "layout"

    def _apply(self, node: gs.Node, b: Builder, idx: np.ndarray, fake_batch: bool,
               target: list[int] | None = None) -> np.ndarray:
        op, dims = node.op, idx.shape
        if op == "Transpose":
            perm = node.attrs.get("perm", list(range(idx.ndim))[::-1])
            return np.transpose(idx, perm)
        if op == "Flatten":
            a = norm_axis(int(node.attrs.get("axis", 1)), idx.ndim)
            return idx.reshape(int(np.prod(dims[:a], dtype=np.int64)), int(np.prod(dims[a:], dtype=np.int64)))
        if op == "Reshape":
            target = _ints(node, b, 1) if target is None else target
            if target is None:
                raise Refusal("no target shape")
            if node.attrs.get("allowzero", 0) and 0 in target:
                raise Refusal("allowzero with a 0 in the target shape")
            target = [dims[i] if t == 0 else t for i, t in enumerate(target)]
            if fake_batch and target[0] not in (-1, 1) and target[0] != dims[0]:
                raise Refusal("batch dim is symbolic and the target shape fixes it")
            return idx.reshape(target)
        axes = _ints(node, b, 1, "axes")
        if op == "Squeeze":
            if axes is None:
                if fake_batch:
                    raise Refusal("Squeeze without axes on a symbolic batch dim")
                return np.squeeze(idx)
            return np.squeeze(idx, axis=tuple(norm_axis(a, idx.ndim) for a in axes))
        if op == "Unsqueeze":
            out_rank = idx.ndim + len(axes)
            return np.expand_dims(idx, tuple(norm_axis(a, out_rank) for a in axes))
        raise Refusal(f"no layout simulation for {op}")

    def _index(self, b: Builder, x: gs.Tensor, size: int, axis: int) -> tuple[np.ndarray, bool]:
        shape = b.shape(x)
        if shape is None or any(d is None for d in shape[1:]) or (shape[0] is None and axis == 0):
            raise Refusal(b.shape_unknown(x))
        dims = [1 if shape[0] is None else shape[0], *shape[1:]]
        dims[axis] = size
        line = np.arange(size).reshape([-1 if i == axis else 1 for i in range(len(dims))])
        return np.broadcast_to(line, dims), shape[0] is None

    def _locate(self, node: gs.Node, b: Builder, x: gs.Tensor, size: int, axis: int) -> tuple[np.ndarray, int, bool]:
        """(channel per output element, output channel axis, fake batch) of the simulated layout."""
        idx, fake = self._index(b, x, size, axis)
        out = self._apply(node, b, idx, fake)
        if size > 1:
            j = _find_axis(out)
            if j is None:
                raise Refusal("mixes the channel axis with another axis")
            return out, j, fake
        return out, self._probe_axis(node, b, x, axis, out.shape), fake

    def _probe_axis(self, node: gs.Node, b: Builder, x: gs.Tensor, axis: int, shape: tuple) -> int:
        """The output axis a one-channel input's channel axis goes to.

        One channel makes the index tensor constant, so it cannot show where the axis goes.
        Simulate the same op on ``PROBE`` channels instead: the channel axis is the one
        axis that varies there, and the probe's output must be the real output with that
        axis ``PROBE`` times larger (otherwise the op does not treat the channel count
        generically, e.g. a Squeeze without axes drops a size-1 channel axis). A Reshape
        is probed with its target as is (a -1 absorbs the channels) and with each fixed
        dim scaled in turn (the dim the cut rewrites when channels go); a feature axis
        that fits wins over the batch axis.
        Every output element copies the single channel whatever axis is picked, so the
        choice only decides which consumer rules can read the tensor.
        """
        idx, fake = self._index(b, x, PROBE, axis)
        targets: list[list[int] | None] = [None]
        if node.op == "Reshape":
            target = _ints(node, b, 1)
            targets += [[t * PROBE if i == k else t for i, t in enumerate(target)] for k in range(len(target))
                        if target[k] > 0]
        found = []
        for target in targets:
            try:
                out = self._apply(node, b, idx, fake, target)
            except (Refusal, ValueError):
                continue
            j = _find_axis(out)
            if j is not None and out.shape == tuple(d * PROBE if i == j else d for i, d in enumerate(shape)):
                found.append(j)
        if found:
            # A target like [-1, 1] fits a channel axis in the batch dim too; channels never go there.
            return next((j for j in found if j != 0 or axis == 0), found[0])
        raise Refusal("one channel left, and the layout does not show where the channel axis goes "
                      "(it is not scaled like the channel count)")

    def couple(self, node: gs.Node, b: Builder) -> None:
        x = node.inputs[0]
        xs = b.space(x)
        if xs is None:
            return
        try:
            out, j, fake = self._locate(node, b, x, xs.size, xs.axis)
        except (Refusal, ValueError) as exc:
            refuse(node, b, str(exc), [x])
            return
        mapping = out[tuple(slice(None) if i == j else 0 for i in range(out.ndim))]
        ys = b.new_space(node.outputs[0], j, mapping.size, out.ndim)
        if ys is None:
            refuse(node, b, "output shape disagrees with the simulated layout", [x])
            return
        b.flow(node, xs.ids[mapping], ys.ids)
        b.declare(node, x)
        b.data[id(node)] = {"map": mapping, "axis": j, "fake": fake}

    def zero(self, node: gs.Node, z: Any) -> None:
        data = z.data(node)
        if data is not None:
            z.set(node.outputs[0], z.zero(node.inputs[0])[data["map"]])

    def drop(self, node: gs.Node, c: Any) -> None:
        if node.op != "Reshape":
            return
        data = c.data(node)
        removed_out = c.removed(node.outputs[0])
        if removed_out is None:
            return
        target = [int(v) for v in np.asarray(node.inputs[1].values).reshape(-1)]
        j = data["axis"]
        if target[j] != -1:
            target[j] = int((~removed_out).sum())
        c.set_input(node, 1, np.asarray(target, np.int64))


ROUTES: dict[str, Rule] = {"Concat": Concat(), "Split": Split(), "Slice": Slice()}
LAYOUTS: dict[str, Rule] = {op: Layout() for op in ("Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze")}
