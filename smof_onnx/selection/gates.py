"""Which gates exist and how binary gate values become zeros (torch-free).

A *gate* is one entry of a flat vector ``g`` (keep = 1, drop = 0):

- **kernel gates** (design 4), per Conv and spatial axis with a kernel size k >= 3: levels
  ``j = 1 .. (k-1)//2`` from the outside in; level j covers slices ``j-1`` and ``k-j`` of that
  axis, for every filter and input channel of the layer (so the cut stays dense). Axes go
  separately (3x3 -> 3x1, 1x3, 1x1; 5x5 -> 3x5 -> 3x3 -> 1x1 ...). A ring survives only while
  every ring inside it survives: the *effective* keep of level j is ``prod_{i >= j} g_i``, so an
  inner ring is never dropped before an outer one.
- **channel gates**, one per slot of :func:`smof_onnx.passes.analysis.channels.analyze_channels` that is
  not frozen, not already removable and ``zero_if_producers_zeroed`` (zeroing the producer
  entries makes the whole slot removable, residual groups included), when every producer is
  an op whose output channel can be zeroed through its constants (Conv, ConvTranspose, Gemm,
  MatMul with a constant right operand, BatchNormalization, InstanceNormalization). The gate
  multiplies the producers' output channels (a tensor hook); the binary result is written as
  zero filters + bias (+ BN scale/shift), exactly what the hook computes at 0.
- gated slots that occupy the same tensors form a *family* (one conv's filters, one residual
  stream); with ``channel_multiple`` N a family keeps ``(other channels + kept) % N == 0``
  channels, or all of them; a family of at most N gated slots gets no gates. ``multiple=0``
  is the per-family rule :func:`family_multiple` (16 for tensors of >= 32 channels, else 8:
  what ONNX Runtime's CPU convs run fastest here, see the function). A family never
  loses every slot (depth pruning is left to zero-branch detection on real zeros).

How gates act on a module while training is :mod:`smof_onnx.learn.masking` (torch); this module
imports no torch, so the data-free ``l2`` method uses the same structure without it.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from smof_onnx.passes.graph import node_attributes

__all__ = ["KernelGate", "ChannelGate", "Family", "GateSpace", "build_gate_space", "ZEROABLE_OPS",
           "family_multiple"]

ZEROABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "InstanceNormalization")


@dataclasses.dataclass(frozen=True)
class KernelGate:
    index: int
    node: str
    weight: str
    axis: int          # spatial axis (0 = first spatial axis of the kernel)
    level: int         # 1 = outermost
    levels: int
    kernel: int        # kernel size on this axis

    @property
    def slices(self) -> tuple[int, int]:
        return self.level - 1, self.kernel - self.level


@dataclasses.dataclass(frozen=True)
class ChannelGate:
    index: int
    slot: int
    family: int
    producers: tuple[tuple[str, str, int], ...]


@dataclasses.dataclass(frozen=True)
class Family:
    id: int
    gates: tuple[int, ...]   # gate indices, in slot order
    base: int                # channels of the first tensor that are not gated by this family
    tensors: tuple[str, ...]
    multiple: int = 1        # kept channel counts are multiples of this (or the full count)
    skip: tuple[int, ...] = ()  # counts left out although they fit the multiple (a runtime runs them slower)

    def allowed(self, multiple: int | None = None) -> list[int]:
        """Kept counts allowed for this family (ascending), never 0; ``multiple`` overrides."""
        multiple = self.multiple if multiple is None else multiple
        n = len(self.gates)
        ok = [k for k in range(1, n) if (self.base + k) % multiple == 0 and k not in self.skip]
        return ok + [n]


@dataclasses.dataclass
class GateSpace:
    kernel: list[KernelGate]
    channel: list[ChannelGate]
    families: list[Family]
    axes: dict[tuple[str, int], list[int]]          # (weight, axis) -> kernel gate indices, outer -> inner
    weight_shapes: dict[str, tuple[int, ...]]
    hooks: dict[str, tuple[int, int, np.ndarray]]  # tensor -> (axis, rank, gate index per channel or -1)
    multiple: int

    @property
    def size(self) -> int:
        return len(self.kernel) + len(self.channel)

    # ---------------------------------------------------------------- binary decisions

    def binarize(self, g: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """Binary gates from keep scores: kernel gates by threshold; per family the count of slots
        over the threshold rounded to the nearest allowed count, then the top scores (stable)."""
        g = np.asarray(g, np.float64)
        h = (g > threshold).astype(np.float64)
        for fam in self.families:
            idx = np.asarray(fam.gates)
            allowed = np.asarray(fam.allowed())
            k = int(h[idx].sum())
            k = int(allowed[np.argmin(np.abs(allowed - k) - 1e-9 * allowed)])  # nearest; ties go up
            order = idx[np.argsort(-g[idx], kind="stable")]
            h[idx] = 0.0
            h[order[:k]] = 1.0
        return h

    def effective(self, h: np.ndarray) -> np.ndarray:
        """Binary gates with the nesting applied (a ring is kept only if every inner ring is)."""
        e = np.asarray(h, np.float64).copy()
        for idx in self.axes.values():
            keep = 1.0
            for i in reversed(idx):
                keep *= e[i]
                e[i] = keep
        return e

    def kernel_mask(self, weight: str, h: np.ndarray) -> np.ndarray | None:
        """float32 mask over the spatial dims of ``weight`` (None when it has no kernel gates)."""
        shape = self.weight_shapes[weight]
        spatial = shape[2:]
        gated = [(a, self.axes[(weight, a)]) for a in range(len(spatial)) if (weight, a) in self.axes]
        if not gated:
            return None
        e = self.effective(h)
        mask = np.ones(spatial, np.float32)
        for a, idx in gated:
            vec = np.ones(spatial[a], np.float32)
            for i in idx:
                lo, hi = self.kernel[i].slices
                vec[lo] = vec[hi] = e[i]
            mask *= vec.reshape([-1 if d == a else 1 for d in range(len(spatial))])
        return mask

    def apply(self, model: onnx.ModelProto, h: np.ndarray) -> onnx.ModelProto:
        """A copy of ``model`` with the dropped kernel rings and channel producers set to 0."""
        out = onnx.ModelProto()
        out.CopyFrom(model)
        inits = {i.name: i for i in out.graph.initializer}
        arrays: dict[str, np.ndarray] = {}

        def arr(name: str) -> np.ndarray:
            if name not in arrays:
                arrays[name] = numpy_helper.to_array(inits[name]).copy()
            return arrays[name]

        h = np.asarray(h)
        for weight in sorted({w for w, _ in self.axes}):
            mask = self.kernel_mask(weight, h)
            if mask is not None and mask.min() < 1:
                w = arr(weight)
                arrays[weight] = (w * mask.astype(w.dtype)).astype(w.dtype)
        nodes = {n.name: n for n in out.graph.node}
        for gate in self.channel:
            if h[gate.index] >= 0.5:
                continue
            for node_name, op, c in gate.producers:
                _zero_output_channel(nodes[node_name], op, c, arr)
        for name, value in arrays.items():
            inits[name].CopyFrom(numpy_helper.from_array(value, name))
        return out

    def choices(self, model: onnx.ModelProto, h: np.ndarray) -> list[dict[str, Any]]:
        """Per gated Conv: kernel before/after; per producer: output channels before/after."""
        e = self.effective(h)
        rows: dict[str, dict[str, Any]] = {}
        weights_of = {n.name: n.input[1] for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 1}
        for node, weight in weights_of.items():
            if weight not in self.weight_shapes:
                continue
            k = list(self.weight_shapes[weight][2:])
            after = list(k)
            for a in range(len(k)):
                for i in self.axes.get((weight, a), []):
                    after[a] -= 2 * int(e[i] < 0.5)
            rows[node] = {"name": node, "op": "Conv", "kernel_before": k, "kernel_after": after}
        dropped: dict[str, int] = {}
        total: dict[str, int] = {}
        for gate in self.channel:
            for node, op, _ in gate.producers:
                total[node] = total.get(node, 0) + 1
                dropped[node] = dropped.get(node, 0) + int(h[gate.index] < 0.5)
        for node in total:
            row = rows.setdefault(node, {"name": node, "op": next(g.producers[0][1] for g in self.channel
                                                                  for p in g.producers if p[0] == node)})
            row["gated_out"] = total[node]
            row["dropped_out"] = dropped[node]
        return [rows[n] for n in sorted(rows)]


def _zero_output_channel(node: onnx.NodeProto, op: str, c: int, arr) -> None:
    attrs = node_attributes(node)
    ins = list(node.input)
    if op == "Conv":
        arr(ins[1])[c] = 0
        if len(ins) > 2 and ins[2]:
            arr(ins[2])[c] = 0
    elif op == "ConvTranspose":
        w = arr(ins[1])
        group = int(attrs.get("group", 1))
        per_out, per_in = w.shape[1], w.shape[0] // group
        gi, local = divmod(c, per_out)
        w[gi * per_in:(gi + 1) * per_in, local] = 0
        if len(ins) > 2 and ins[2]:
            arr(ins[2])[c] = 0
    elif op == "Gemm":
        w = arr(ins[1])
        if attrs.get("transB", 0):
            w[c, :] = 0
        else:
            w[:, c] = 0
        if len(ins) > 2 and ins[2]:
            arr(ins[2])[..., c] = 0
    elif op == "MatMul":
        arr(ins[1])[..., c] = 0
    elif op in ("BatchNormalization", "InstanceNormalization"):
        arr(ins[1])[c] = 0
        arr(ins[2])[c] = 0
    else:  # build_gate_space only gates zeroable producers
        raise ValueError(f"cannot zero output channels of {op} node '{node.name}'")


def _producer_ok(node: onnx.NodeProto, op: str, c: int, inits: dict[str, np.ndarray], axis: int, rank: int) -> bool:
    """The producer's output channel ``c`` can be zeroed through initializers."""
    ins = list(node.input)
    attrs = node_attributes(node)
    if op in ("Conv", "ConvTranspose"):
        need = [ins[1]] + ([ins[2]] if len(ins) > 2 and ins[2] else [])
        return axis == 1 and all(n in inits for n in need)
    if op == "Gemm":
        if ins[1] not in inits or axis != 1:
            return False
        if len(ins) > 2 and ins[2]:
            if ins[2] not in inits:
                return False
            cshape = inits[ins[2]].shape
            n = inits[ins[1]].shape[0 if attrs.get("transB", 0) else 1]
            return len(cshape) >= 1 and cshape[-1] == n
        return True
    if op == "MatMul":
        return ins[1] in inits and inits[ins[1]].ndim >= 2 and axis == rank - 1
    if op in ("BatchNormalization", "InstanceNormalization"):
        return axis == 1 and ins[1] in inits and ins[2] in inits
    return False


def build_gate_space(model: onnx.ModelProto, analysis: Any | None, *, kernel: bool = True, channel: bool = True,
                     multiple: int = 1) -> GateSpace:
    """The gates of ``model`` (canonical form: weights are initializers, nodes uniquely named).

    ``analysis`` is the :class:`ChannelAnalysis` of the same graph (None: no channel gates).
    """
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    kgates: list[KernelGate] = []
    axes: dict[tuple[str, int], list[int]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    if kernel:
        for node in model.graph.node:
            if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
                continue
            w = inits[node.input[1]]
            if w.ndim < 3 or (node.input[1], 0) in axes:
                continue
            shapes[node.input[1]] = tuple(w.shape)
            for a, k in enumerate(w.shape[2:]):
                levels = (int(k) - 1) // 2
                for j in range(1, levels + 1):
                    kgates.append(KernelGate(len(kgates), node.name, node.input[1], a, j, levels, int(k)))
                    axes.setdefault((node.input[1], a), []).append(kgates[-1].index)

    cgates: list[ChannelGate] = []
    families: list[Family] = []
    hooks: dict[str, tuple[int, int, np.ndarray]] = {}
    if channel and analysis is not None:
        nodes = {n.name: n for n in model.graph.node}
        by_tensors: dict[tuple[str, ...], list[Any]] = {}
        for slot in analysis.slots:
            if slot.frozen_by or slot.removable or not slot.zero_if_producers_zeroed or not slot.producers:
                continue
            ok = True
            for node_name, op, c in slot.producers:
                node = nodes.get(node_name)
                if node is None or op not in ZEROABLE_OPS or node.output[0] not in analysis.spaces:
                    ok = False
                    break
                sp = analysis.spaces[node.output[0]]
                if not _producer_ok(node, op, c, inits, sp.axis, sp.rank):
                    ok = False
                    break
            if ok:
                key = tuple(sorted({t for t, _ in slot.atoms}))
                by_tensors.setdefault(key, []).append(slot)
        start = len(kgates)
        for key in sorted(by_tensors, key=lambda k: min(s.id for s in by_tensors[k])):
            slots = sorted(by_tensors[key], key=lambda s: s.id)
            first = analysis.spaces[key[0]].size if key[0] in analysis.spaces else len(slots)
            fam = Family(len(families), tuple(range(len(slots))), first - len(slots), key,
                         family_multiple(multiple, first))
            if len(fam.allowed()) < 2:  # only "keep all" fits the multiple
                continue
            ids = []
            for s in slots:
                ids.append(start + len(cgates))
                cgates.append(ChannelGate(ids[-1], s.id, fam.id, tuple(s.producers)))
            families.append(dataclasses.replace(fam, gates=tuple(ids)))
        for gate in cgates:
            for node_name, _, c in gate.producers:
                t = nodes[node_name].output[0]
                sp = analysis.spaces[t]
                if t not in hooks:
                    hooks[t] = (sp.axis, sp.rank, np.full(sp.size, -1, np.int64))
                hooks[t][2][c] = gate.index
    return GateSpace(kgates, cgates, families, axes, shapes, hooks, multiple)


def family_multiple(multiple: int, channels: int) -> int:
    """The channel multiple of a family whose tensors have ``channels`` channels.

    ``multiple >= 1`` is used as given. ``0`` (auto): 16 when ``channels >= 32``, else 8.
    Why (measured: the latency table of the default ResNet-20, ONNX Runtime CPU, 2 threads,
    batch 32, this machine): a 3x3 conv 32->32 at 14x14 ran 0.17 / 0.31 / 1.12 / 1.08 ms with
    8 / 16 / 24 / 32 channels in and out; 64->64 at 7x7 ran 0.12 / 0.28 / 0.28 / 0.55 / 0.55 /
    0.99 / 0.99 ms with 16 / 24 / 32 / 40 / 48 / 56 / 64. Time moves in steps of 16 channels, so a
    count off a multiple of 16 costs as much as the next multiple up. A 16-channel layer can
    only go to 8 or stay. Halving a block's inner channels at 28x28 speeds its second conv
    (8 in: 1.24 -> 0.66 ms) but not its first (16 in, 8 out: 1.22 ms), so in the model 8 there
    buys FLOPs and accuracy more than speed. On the model at 0.5 FLOPs (4096 images):
    multiple 8 everywhere 1.27x faster than the original, this rule 1.69x (91.70% / 91.64%,
    BN folded); with train-mode BN this rule 92.10% at 1.48x, ``--channel-multiple 16``
    91.72% at 1.76x (stage 1 keeps its channels, stage 2's residual stream halves).
    """
    if multiple >= 1:
        return multiple
    return 16 if channels >= 32 else 8


def slot_gate_index(space: GateSpace, analysis: Any, tensor: str) -> np.ndarray:
    """Gate index per channel of ``tensor`` (-1 where ungated or untracked)."""
    if analysis is None or tensor not in analysis.spaces:
        return np.full(1, -1, np.int64)
    of_slot = {g.slot: g.index for g in space.channel}
    return np.asarray([of_slot.get(int(s), -1) for s in analysis.slots_of(tensor)], np.int64)
