"""An independent oracle for the exact cut: what the best possible cut of a zeroed model keeps.

It shares no code with ``passes.analysis`` or the cut passes: it reads the ONNX proto with
onnx + numpy, measures facts empirically (ONNX Runtime for values, the torch executor for
gradients) and couples channels with its own small op table.

Structure (once per model, weights do not matter): every float tensor of rank >= 2 that a
node produces (or a graph input) has one *atom* per index of axis 1. Atoms that must be
removed together are unioned (union-find): elementwise ops (channel-wise operands),
BN / pooling / Resize / Pad / reductions off axis 1, Concat offsets, Split / Slice ranges,
grouped and depthwise convs (a whole group is one slot), and layout chains
(Flatten / Reshape / Transpose / Squeeze / Unsqueeze), whose channel map is computed
numerically by pushing an array of atom ids through the ops with numpy. Conv, ConvTranspose,
Gemm and 2-D-weight MatMul read input channels through constant weight slices and produce
output channels: no coupling across them. Any other op marks what it touches *unknown*
(the oracle cannot say whether a rule could remove it); graph inputs and outputs *keep*.

Facts (per zeroed model): ``zero`` -- the atom is exactly 0 on every draw; ``unused`` -- the
gradient of ``sum(outputs * random cotangent)`` wrt the atom is exactly 0 on every draw.
Both are measured on a *generic* copy of the model where sign-dependent activations are
replaced by sign-agnostic ones with the same zero behaviour at 0 (Relu, Clip(lo<=0<=hi),
HardSwish -> Softsign, which is 0 only at 0, bounded, and has a gradient that never
underflows; HardSigmoid -> Sigmoid, never 0). Without it a Relu that happens to be off on
every random input would make a channel look dead that no weight-based rule can prove dead
(a slot the cut rightly keeps), and zero gradients in its off region would make channels
look unused; with it, "zero" means "zero because of zero weights", which is what "best
possible" means for an exact cut. (Identity instead of Softsign would blow up: Paddle's
hard-swish x * clip(x + 3, 0, 6) / 6 becomes quadratic per layer.) Gradients run in float64
so that saturating ops do not underflow to spurious zero gradients; any non-finite value or
gradient is an error, never a silent "used".

Verdict per slot: KEEP if an atom is live (nonzero and used) or touches a graph input/output;
else UNKNOWN if an atom is unknown; else REMOVABLE. Slots are taken after every Add (or Sub
subtrahend) operand that is entirely zero is dropped, as the cut does (``x + 0 -> x``): that
uncouples the zero branch from the sum, so its producer can shrink though the sum stays.
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

KEEP, UNKNOWN, REMOVABLE = "keep", "unknown", "removable"

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


def generic_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """Sign-agnostic activations with the same zero behaviour at 0 (see the module doc)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = initializers(m)
    for node in m.graph.node:
        if node.op_type in ("Relu", "HardSwish"):
            node.op_type = "Softsign"
            del node.attribute[:]
        elif node.op_type == "Clip":
            a = _attrs(node)
            lo, hi = a.get("min", -np.inf), a.get("max", np.inf)
            if len(node.input) > 1 and node.input[1]:
                lo = float(inits[node.input[1]]) if node.input[1] in inits else None
            if len(node.input) > 2 and node.input[2]:
                hi = float(inits[node.input[2]]) if node.input[2] in inits else None
            if lo is not None and hi is not None and lo <= 0 <= hi:
                node.op_type = "Softsign"
                del node.attribute[:]
                del node.input[1:]
        elif node.op_type == "HardSigmoid":
            node.op_type = "Sigmoid"
            del node.attribute[:]
    return m


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
                for j in range(g):
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


@dataclasses.dataclass
class Facts:
    zero: np.ndarray
    unused: np.ndarray
    no_grad: np.ndarray  # atoms whose tensor carries no gradient at all (treated as unknown)


def measure(structure: Structure, model: onnx.ModelProto, feeds_list: Sequence[Mapping[str, np.ndarray]]) -> Facts:
    """Zero (ONNX Runtime) and unused (torch gradients) per atom of ``model`` (same graph as
    ``structure``'s, other weights) on a generic copy of it."""
    gen = generic_copy(model)
    n = structure.n
    zero = np.ones(n, bool)
    for values, feeds in zip(all_values(gen, feeds_list), feeds_list):
        values = {**values, **feeds}
        for name, sp in structure.spaces.items():
            v = values[name]
            assert np.isfinite(v).all(), f"oracle: non-finite values in {name} of the generic model"
            nz = np.moveaxis(v, 1, 0).reshape(sp.size, -1)
            zero[sp.base:sp.base + sp.size] &= ~(nz != 0).any(axis=1)
    unused, no_grad = _gradients(structure, gen, feeds_list)
    return Facts(zero, unused, no_grad)


def _gradients(structure: Structure, model: onnx.ModelProto, feeds_list) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from smof_onnx.learn.executor import OnnxModule

    mod = OnnxModule(model).double()
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(t):
            captured[name] = t
            return t
        return hook

    inputs = set(mod.input_names)
    for name in structure.spaces:
        if name not in inputs:
            mod.set_hook(name, hook_for(name))
    n = structure.n
    unused = np.ones(n, bool)
    no_grad = np.zeros(n, bool)
    gen = torch.Generator().manual_seed(1234)
    for feeds in feeds_list:
        captured.clear()
        args = {k: torch.from_numpy(np.asarray(v, np.float64)).requires_grad_(True) for k, v in feeds.items()}
        for k in inputs:
            captured[k] = args[k]
        outs = mod(**args)
        loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
                   for o in outs if o.is_floating_point())
        names = [k for k, t in captured.items() if t.requires_grad]
        for k in set(captured) - set(names):
            sp = structure.spaces[k]
            no_grad[sp.base:sp.base + sp.size] = True
        grads = torch.autograd.grad(loss, [captured[k] for k in names], allow_unused=True)
        for k, g in zip(names, grads):
            sp = structure.spaces[k]
            if g is None:
                continue
            g = g.detach().numpy()
            assert np.isfinite(g).all(), f"oracle: non-finite gradient at {k} of the generic model"
            nz = (np.moveaxis(g, 1, 0).reshape(sp.size, -1) != 0).any(axis=1)
            unused[sp.base:sp.base + sp.size] &= ~nz
    return unused, no_grad


@dataclasses.dataclass
class Verdicts:
    """Per atom: the verdict of its slot (slots taken after zero branches are dropped)."""

    structure: Structure
    facts: Facts
    root: np.ndarray     # slot label per atom
    verdict: np.ndarray  # per atom: KEEP / UNKNOWN / REMOVABLE
    live: np.ndarray     # per atom: nonzero and used

    def removable_atoms(self, frozen_nodes: set[str] = frozenset()) -> np.ndarray:
        """REMOVABLE atoms whose slot touches none of ``frozen_nodes`` (nodes the cut froze)."""
        s = self.structure
        out = self.verdict == REMOVABLE
        if frozen_nodes:
            for _, atoms in slot_atoms(self.root).items():
                if out[atoms[0]] and s.slot_nodes(atoms) & frozen_nodes:
                    out[atoms] = False
        return out

    def count_ranges(self, removable: np.ndarray) -> dict[str, tuple[int, int]]:
        """Per tensor, (fewest, most) channels the best cut may leave.

        Fewest: the KEEP slots. Most: everything not removable, plus one slot for every tensor
        sharing a slot with this one whose every slot is removable (the cut never empties a
        tensor; it keeps one slot of it)."""
        s, root = self.structure, self.root
        full = [set(root[s.atoms_of(t)].tolist()) for t in s.spaces if removable[s.atoms_of(t)].all()]
        out = {}
        for t in s.spaces:
            atoms = s.atoms_of(t)
            lo = int((self.verdict[atoms] == KEEP).sum())
            hi = int((~removable[atoms]).sum())
            roots = set(root[atoms[removable[atoms]]].tolist())
            if roots:
                hi = min(hi + sum(1 for f in full if f & roots), len(atoms))
            out[t] = (lo, hi)
        return out


def verdicts(structure: Structure, facts: Facts) -> Verdicts:
    s = structure
    live = ~(facts.zero | facts.unused)
    unknown = np.zeros(s.n, bool)
    unknown[list(s.unknown_atoms)] = True
    unknown |= facts.no_grad
    keep = live.copy()
    keep[list(s.keep_atoms)] = True
    root = s.roots_after_drops(facts.zero)
    verdict = np.full(s.n, REMOVABLE, object)
    for _, atoms in slot_atoms(root).items():
        if keep[atoms].any():
            verdict[atoms] = KEEP
        elif unknown[atoms].any():
            verdict[atoms] = UNKNOWN
    return Verdicts(s, facts, root, verdict, live)

# ------------------------------------------------------------------ kernels

def border(w: np.ndarray, spatial_from: int = 2) -> list[tuple[int, int]] | None:
    """(r_lo, r_hi) per spatial axis: leading / trailing slices zero across all other axes;
    None when ``w`` is entirely zero (or empty)."""
    if w.size == 0 or not w.any():
        return None
    out = []
    for ax in range(spatial_from, w.ndim):
        prof = np.abs(np.moveaxis(w, ax, 0)).reshape(w.shape[ax], -1).max(axis=1) != 0
        nz = np.flatnonzero(prof)
        out.append((int(nz[0]), int(w.shape[ax] - 1 - nz[-1])))
    return out


def expected_kernel(node: onnx.NodeProto, w: np.ndarray, keep_in: np.ndarray | None,
                    keep_out: np.ndarray | None) -> list[int] | None:
    """Kernel of ``node`` after the best cut when the channels in ``keep_*`` remain (None: all).

    Conv: k - r_lo - r_hi. ConvTranspose: the pads bound the cut (a negative output-side pad
    cannot be expressed), so at most pad // dilation taps go on each side."""
    a = _attrs(node)
    group = a.get("group", 1)
    if node.op_type == "Conv":
        if keep_out is not None:
            w = w[keep_out]
        if keep_in is not None and group == 1:
            w = w[:, keep_in]
    else:
        if keep_in is not None:
            w = w[keep_in]
        if keep_out is not None and group == 1:
            w = w[:, keep_out]
    b = border(w)
    if b is None:
        return None
    k = list(w.shape[2:])
    if node.op_type == "ConvTranspose":
        n = len(k)
        pads = a.get("pads", [0] * 2 * n)
        dil = a.get("dilations", [1] * n)
        b = [(min(lo, pads[i] // dil[i]), min(hi, pads[n + i] // dil[i])) for i, (lo, hi) in enumerate(b)]
    return [ki - lo - hi for ki, (lo, hi) in zip(k, b)]
