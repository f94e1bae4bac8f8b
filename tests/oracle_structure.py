"""The oracle's coupling structure: atoms, slots and which ops the oracle can follow.

Part of the independent oracle (tests/oracle.py holds the facts, verdicts and kernels); it
shares no code with ``smof_onnx.passes.analysis`` or the cut passes: it reads the ONNX proto with
onnx + numpy and couples channels with its own small op table.

Structure (once per model, weights do not matter): every float tensor of rank >= 2 that a
node produces (or a graph input) has one *atom* per index of axis 1. Atoms that must be
removed together are unioned (union-find): elementwise ops (channel-wise operands),
BN / pooling / Resize / Pad / reductions off axis 1, Concat offsets, Split / Slice ranges,
depthwise convs (in and out channel one slot), grouped convs with more than one channel per
group (*unknown*, not coupled: a cut may drop channels inside a group and regroup), and layout chains
(Flatten / Reshape / Transpose / Squeeze / Unsqueeze), whose channel map is computed
numerically by pushing an array of atom ids through the ops with numpy. Conv, ConvTranspose,
Gemm and 2-D-weight MatMul read input channels through constant weight slices and produce
output channels: no coupling across them. Any other op marks what it touches *unknown*
(the oracle cannot say whether a rule could remove it); graph inputs and outputs *keep*.
Shapes come from one ONNX Runtime run of the model.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tests.helpers import session

UNARY = frozenset({
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Identity", "Dropout",
    "Neg", "Abs", "Sqrt", "Exp", "Log", "Erf", "Softplus", "Softsign", "Elu", "Selu", "Celu", "Gelu", "Mish",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "ThresholdedRelu", "Shrink",
})
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu"})
CHANNELWISE = frozenset({"BatchNormalization", "InstanceNormalization", "MaxPool", "AveragePool", "LpPool",
                         "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "Resize", "Upsample", "Pad"})
REDUCE = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceL1", "ReduceProd"})
LAYOUT = frozenset({"Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze"})
WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
FLOAT_TYPES = (np.float32, np.float64, np.float16)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def all_values(model: onnx.ModelProto, feeds_list: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Every node output of ``model`` under ONNX Runtime, once per feed dict."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for node in m.graph.node:
        for out in node.output:
            if out and out not in have:
                m.graph.output.append(onnx.ValueInfoProto(name=out))
                have.add(out)
    sess = session(m)
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, dict(f)))) for f in feeds_list]



class _Edges:
    """Atom allocation and coupling edges; an edge may carry a tag (node, operand) so that the
    coupling through an Add / Sub operand can be switched off when that branch is dropped."""

    def __init__(self):
        self.n = 0
        self.a: list[int] = []
        self.b: list[int] = []
        self.tag: list[tuple[str, str] | None] = []

    def add(self, n: int) -> int:
        base, self.n = self.n, self.n + n
        return base

    def union(self, a: int, b: int, tag: tuple[str, str] | None = None) -> None:
        self.a.append(int(a))
        self.b.append(int(b))
        self.tag.append(tag)

    def roots(self, disabled: set[tuple[str, str]] = frozenset()) -> np.ndarray:
        """Slot label per atom (the smallest atom id of its component)."""
        keep = np.array([t is None or t not in disabled for t in self.tag], bool)
        a, b = np.array(self.a, np.int64)[keep], np.array(self.b, np.int64)[keep]
        adj = coo_matrix((np.ones(a.size, bool), (a, b)), shape=(self.n, self.n))
        _, comp = connected_components(adj, directed=False)
        first = np.full(comp.max() + 1 if self.n else 0, self.n, np.int64)
        np.minimum.at(first, comp, np.arange(self.n))
        return first[comp]


def slot_atoms(root: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(root, kind="stable")
    roots, starts = np.unique(root[order], return_index=True)
    return dict(zip(roots.tolist(), np.split(order, starts[1:])))


@dataclasses.dataclass
class Space:
    tensor: str
    base: int
    size: int


class Structure:
    """Atoms, slots and the oracle's coupling for one model (independent of its weight values)."""

    def __init__(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]):
        self.model = model
        self.inits = initializers(model)
        values = all_values(model, [feeds])[0]
        values.update(feeds)
        self.shapes = {k: tuple(v.shape) for k, v in values.items()}
        self.dtypes = {k: v.dtype for k, v in values.items()}
        self.uf = _Edges()
        self.droppable: list[tuple[str, str, str]] = []  # (Add/Sub node, operand, output)
        self.spaces: dict[str, Space] = {}
        self.keep_atoms: set[int] = set()
        self.unknown_atoms: dict[int, str] = {}
        self.layout_ids: dict[str, np.ndarray] = {}
        self.nodes_of_tensor: dict[str, set[str]] = {}
        self.producers: dict[int, list[tuple[str, int]]] = {}  # atom -> [(weighted node, out channel)]
        self.node_by_name = {n.name: n for n in model.graph.node}
        for inp in model.graph.input:
            if inp.name not in self.inits:
                sp = self._space(inp.name)
                if sp:
                    self.keep_atoms.update(range(sp.base, sp.base + sp.size))
        for node in model.graph.node:
            for t in list(node.input) + list(node.output):
                if t:
                    self.nodes_of_tensor.setdefault(t, set()).add(node.name)
            self._visit(node)
        for out in model.graph.output:
            sp = self.spaces.get(out.name)
            if sp:
                self.keep_atoms.update(range(sp.base, sp.base + sp.size))
            elif out.name in self.layout_ids:
                self.keep_atoms.update(int(i) for i in np.unique(self.layout_ids[out.name]) if i >= 0)
        self.n = self.uf.n
        self.root = self.uf.roots()
        self.tensor_of = np.empty(self.n, object)
        self.chan_of = np.zeros(self.n, np.int64)
        for sp in self.spaces.values():
            self.tensor_of[sp.base:sp.base + sp.size] = sp.tensor
            self.chan_of[sp.base:sp.base + sp.size] = np.arange(sp.size)

    # --------------------------------------------------------------- building
    def _space(self, name: str) -> Space | None:
        if name in self.spaces:
            return self.spaces[name]
        shp, dt = self.shapes.get(name), self.dtypes.get(name)
        if shp is None or len(shp) < 2 or dt is None or dt.type not in FLOAT_TYPES or name in self.inits:
            return None
        sp = Space(name, self.uf.add(shp[1]), shp[1])
        self.spaces[name] = sp
        return sp

    def _atoms(self, name: str) -> np.ndarray:
        sp = self.spaces.get(name)
        if sp is not None:
            return np.arange(sp.base, sp.base + sp.size)
        if name in self.layout_ids:
            ids = np.unique(self.layout_ids[name])
            return ids[ids >= 0]
        return np.zeros(0, np.int64)

    def _couple(self, a: str, b: str, offset_a: int = 0, offset_b: int = 0, count: int | None = None,
                tag: tuple[str, str] | None = None) -> None:
        sa, sb = self.spaces[a], self.spaces[b]
        count = min(sa.size, sb.size) if count is None else count
        for i in range(count):
            self.uf.union(sa.base + offset_a + i, sb.base + offset_b + i, tag)

    def _unknown(self, node: onnx.NodeProto, why: str) -> None:
        for t in list(node.input) + list(node.output):
            if t and t not in self.inits:
                if t in node.output:
                    self._space(t)
                for a in self._atoms(t):
                    self.unknown_atoms.setdefault(int(a), f"{node.name} ({node.op_type}): {why}")

    def _shape_of(self, name: str) -> tuple | None:
        return tuple(self.inits[name].shape) if name in self.inits else self.shapes.get(name)

    def _const(self, name: str) -> np.ndarray | None:
        return self.inits.get(name) if name else None

    def _visit(self, node: onnx.NodeProto) -> None:
        op, a = node.op_type, _attrs(node)
        ins = [i for i in node.input]
        outs = [o for o in node.output if o]
        tracked_in = [i for i in ins if i and (i in self.spaces)]
        layout_in = [i for i in ins if i and i in self.layout_ids]
        if layout_in and op not in LAYOUT:
            self._unknown(node, "reads a tensor whose channel layout the oracle does not follow")
            return
        if not tracked_in and not layout_in:
            for o in outs:
                if self._space(o) is not None:
                    # produced from constants only / non-tracked inputs: nothing to couple, but unmodelled
                    if op not in WEIGHTED:
                        self._unknown(node, "output from untracked inputs")
            return
        if op in UNARY or (op == "Cast" and self.dtypes.get(outs[0]) is not None
                           and self.dtypes[outs[0]].type in FLOAT_TYPES):
            if self._space(outs[0]) and ins[0] in self.spaces and self.shapes[outs[0]] == self.shapes[ins[0]]:
                self._couple(ins[0], outs[0])
                for extra in ins[1:]:
                    if extra and extra not in self.inits:
                        return self._unknown(node, "non-constant parameter")
                return
            return self._unknown(node, "shape changes")
        if op in BINARY or op == "Where":
            return self._binary(node)
        if op in CHANNELWISE:
            if op == "MaxPool" and len(outs) > 1:
                return self._unknown(node, "MaxPool indices")
            o = self._space(outs[0])
            if o and ins[0] in self.spaces and self.shapes[outs[0]][1] == self.shapes[ins[0]][1]:
                for extra in ins[1:]:
                    if extra and extra not in self.inits:
                        return self._unknown(node, "non-constant parameter")
                if op == "Pad":
                    pads = self._const(ins[1]) if len(ins) > 1 else np.array(a.get("pads", []))
                    if pads is None or (len(pads) > 1 and (pads[1] != 0 or pads[len(pads) // 2 + 1] != 0)) \
                            or (len(ins) > 3 and ins[3]):
                        return self._unknown(node, "pads the channel axis")
                self._couple(ins[0], outs[0])
                return
            return self._unknown(node, "changes the channel count")
        if op in REDUCE:
            axes = a.get("axes")
            if axes is None and len(ins) > 1 and ins[1]:
                axes = self._const(ins[1])
            rank = len(self.shapes[ins[0]])
            o = self._space(outs[0])
            if axes is None or o is None or any(int(x) % rank in (0, 1) for x in np.ravel(axes)):
                return self._unknown(node, "reduces over the channel axis (or unknown axes)")
            if self.shapes[outs[0]][1] != self.shapes[ins[0]][1]:
                return self._unknown(node, "channel axis moved")
            return self._couple(ins[0], outs[0])
        if op == "Concat":
            return self._concat(node, a)
        if op in ("Split", "Slice"):
            return self._split_slice(node, a)
        if op in LAYOUT:
            return self._layout(node, a)
        if op in WEIGHTED:
            return self._weighted(node, a)
        return self._unknown(node, "no oracle rule")

    def _binary(self, node: onnx.NodeProto) -> None:
        out = node.output[0]
        o = self._space(out)
        if o is None:
            return self._unknown(node, "untracked output")
        rank = len(self.shapes[out])
        for i in node.input:
            if not i or i in self.inits:
                continue
            if i not in self.spaces:
                return self._unknown(node, f"non-constant operand {i} the oracle does not track")
            shp = self.shapes[i]
            ax = 1 - (rank - len(shp))
            if ax < 0 or shp[ax] == 1 and o.size != 1:
                continue  # broadcast over channels: one value feeds every channel
            if ax != 1:
                return self._unknown(node, "operand of lower rank aligned to the channel axis")
            # x + 0 -> x only when the kept operand already has the sum's shape
            same = len(node.input) == 2 and all(self._shape_of(j) == self.shapes[out] for j in node.input)
            if same and (node.op_type == "Add" or (node.op_type == "Sub" and i == node.input[1])):
                # an all-zero operand here is a branch the cut may drop (x + 0 -> x)
                self.droppable.append((node.name, i, out))
                self._couple(i, out, tag=(node.name, i))
            else:
                self._couple(i, out)

    def _concat(self, node: onnx.NodeProto, a: dict) -> None:
        out = node.output[0]
        o = self._space(out)
        rank = len(self.shapes[out])
        axis = a.get("axis", 1) % rank
        if o is None or any(i and i not in self.spaces and i not in self.inits for i in node.input):
            return self._unknown(node, "untracked operand")
        off = 0
        for i in node.input:
            if axis == 1:
                if i in self.spaces:
                    self._couple(i, out, offset_b=off)
                off += self.shapes[i][1]
            elif i in self.spaces:
                self._couple(i, out)
            else:
                return self._unknown(node, "constant operand in a non-channel concat")

    def _split_slice(self, node: onnx.NodeProto, a: dict) -> None:
        src = node.input[0]
        rank = len(self.shapes[src])
        if node.op_type == "Split":
            axis = a.get("axis", 0) % rank
            off = 0
            for o in node.output:
                if not o or self._space(o) is None:
                    return self._unknown(node, "untracked output")
                if axis == 1:
                    self._couple(src, o, offset_a=off, count=self.shapes[o][1])
                    off += self.shapes[o][1]
                else:
                    self._couple(src, o)
            return
        out = node.output[0]
        if self._space(out) is None:
            return self._unknown(node, "untracked output")
        consts = [self._const(i) if j < len(node.input) else None for j, i in enumerate(node.input)]
        if any(c is None for c, i in zip(consts[1:], node.input[1:]) if i):
            return self._unknown(node, "non-constant slice parameters")
        starts, ends = consts[1], consts[2]
        axes = consts[3] if len(node.input) > 3 and node.input[3] else np.arange(len(starts))
        steps = consts[4] if len(node.input) > 4 and node.input[4] else np.ones(len(starts), np.int64)
        c = self.shapes[src][1]
        for s, e, ax, st in zip(starts, ends, axes, steps):
            if int(ax) % rank == 1:
                idx = np.arange(c)[slice(int(s), int(e), int(st))]  # Python clamps like ONNX does
                if len(idx) != self.shapes[out][1]:
                    return self._unknown(node, "slice size mismatch")
                for k, ci in enumerate(idx):
                    self.uf.union(self.spaces[src].base + int(ci), self.spaces[out].base + k)
                return
        self._couple(src, out)

    def _layout(self, node: onnx.NodeProto, a: dict) -> None:
        src, out = node.input[0], node.output[0]
        if src in self.spaces:
            sp = self.spaces[src]
            shp = self.shapes[src]
            ids = (sp.base + np.arange(sp.size)).reshape((1, sp.size) + (1,) * (len(shp) - 2))
            ids = np.broadcast_to(ids, shp)
        elif src in self.layout_ids:
            ids = self.layout_ids[src]
        else:
            return self._unknown(node, "untracked input")
        out_shape = self.shapes[out]
        if node.op_type == "Transpose":
            res = np.transpose(ids, a.get("perm", list(range(ids.ndim))[::-1]))
        else:
            res = np.reshape(ids, out_shape)  # Flatten / Reshape / Squeeze / Unsqueeze keep element order
        if res.shape != out_shape:
            return self._unknown(node, "layout result does not match the runtime shape")
        if res.ndim >= 2:
            moved = np.moveaxis(res, 1, 0).reshape(res.shape[1], -1)
            if (moved == moved[:, :1]).all():
                o = self._space(out)
                if o is not None:
                    for f in range(o.size):
                        self.uf.union(int(moved[f, 0]), o.base + f)
                    return
        self.layout_ids[out] = np.ascontiguousarray(res)

    def _weighted(self, node: onnx.NodeProto, a: dict) -> None:
        op, ins = node.op_type, node.input
        if op == "MatMul":
            w = self._const(ins[1])
            if w is None or w.ndim != 2 or len(self.shapes[ins[0]]) != 2 or ins[0] not in self.spaces:
                return self._unknown(node, "MatMul other than [N, K] x constant [K, M]")
            o = self._space(node.output[0])
            for c in range(o.size):
                self.producers.setdefault(o.base + c, []).append((node.name, c))
            return
        w = self._const(ins[1]) if op != "Gemm" else self._const(ins[1])
        if w is None or any(i and i not in self.inits for i in ins[1:]) or ins[0] not in self.spaces:
            return self._unknown(node, "weights are not constants")
        o = self._space(node.output[0])
        if op == "Gemm":
            if a.get("transA", 0):
                return self._unknown(node, "transA")
        elif op in ("Conv", "ConvTranspose"):
            g = a.get("group", 1)
            if g > 1:
                cin, cout = self.spaces[ins[0]], o
                ki, ko = cin.size // g, cout.size // g
                if ki > 1 or ko > 1:
                    # several channels per group: a cut may drop channels inside a group and
                    # regroup (down to one group), which one slot per group cannot express
                    for x in list(range(cin.base, cin.base + cin.size)) + list(range(cout.base, cout.base + cout.size)):
                        self.unknown_atoms.setdefault(x, f"{node.name} (Conv): grouped, {ki} in / {ko} out per group")
                for j in range(g if ki == 1 and ko == 1 else 0):
                    atoms = list(range(cin.base + j * ki, cin.base + (j + 1) * ki)) + \
                        list(range(cout.base + j * ko, cout.base + (j + 1) * ko))
                    for x in atoms[1:]:
                        self.uf.union(atoms[0], x)
        for c in range(o.size):
            self.producers.setdefault(o.base + c, []).append((node.name, c))

    # --------------------------------------------------------------- queries
    def atoms_of(self, tensor: str) -> np.ndarray:
        sp = self.spaces[tensor]
        return np.arange(sp.base, sp.base + sp.size)

    def slot_atoms(self) -> dict[int, np.ndarray]:
        return slot_atoms(self.root)

    def roots_after_drops(self, zero: np.ndarray) -> np.ndarray:
        """Slots once every Add / Sub operand that is entirely zero is dropped (the cut replaces
        ``x + 0`` by ``x``, which uncouples the zero branch from the sum)."""
        disabled, dropped_out = set(), set()
        for node, operand, out in self.droppable:
            if zero[self.atoms_of(operand)].all() and out not in dropped_out:
                disabled.add((node, operand))
                dropped_out.add(out)  # both operands zero: the sum still reads one of them
        return self.uf.roots(disabled) if disabled else self.root

    def slot_nodes(self, atoms: np.ndarray) -> set[str]:
        names: set[str] = set()
        for t in {self.tensor_of[x] for x in atoms}:
            names |= self.nodes_of_tensor.get(t, set())
        return names

    def coupled_slots(self) -> list[list[tuple[str, int]]]:
        """Producer lists of slots where zeroing one filter alone cannot remove the channel:
        residual / SE / depthwise / Concat-Split slots (more than one producer, or one producer
        and a grouped conv or a Concat/Split/Slice among the slot's nodes)."""
        out = []
        for root, atoms in self.slot_atoms().items():
            prods = [p for x in atoms for p in self.producers.get(int(x), [])]
            if not prods or any(int(x) in self.keep_atoms for x in atoms):
                continue
            ops = {self.node_by_name[n].op_type for n in self.slot_nodes(atoms) if n in self.node_by_name}
            if len(prods) > 1 or ops & {"Concat", "Split", "Slice"}:
                out.append(prods)
        return out
