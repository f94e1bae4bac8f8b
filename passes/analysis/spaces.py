"""Channel spaces, atoms, and the builder that the coupling rules write into.

A *space* is the channel axis of one tensor: ``Space(tensor, axis, rank, size)``.
Each of its channels is an *atom*, an integer id ``base + channel``. Rules (see
:mod:`smof_onnx.passes.analysis.rules`) describe every node to a :class:`Builder`:

- ``new_space``: an output tensor gets a channel space;
- ``union``: atoms that must be removed together (one slot);
- ``flow``: an output atom is computed from an input atom *of the same channel*
  (implies ``union``); the backward *unused* fact follows these edges;
- ``read``: an output atom reads an input atom without coupling them (a size-1
  channel broadcast), so the input is needed while the output is;
- ``sink``: a weighted linear op (Conv, Gemm, MatMul) reads input channels through
  a dependency matrix ``dep[out, in]`` (non-zero weights), and produces new channels;
- ``freeze``: atoms that must never be removed, with a :class:`Frozen` reason;
  ``needed=True`` also says the freezing node reads them in a way no rule models, so
  they are needed whenever one of that node's outputs is (a graph output's are always).

Every tracked input a rule does not declare (by ``flow``, ``read``, ``sink`` or
``declare``) is frozen and needed by the safety net in
:func:`smof_onnx.passes.analysis.channels.analyze_channels`: an op whose reading of channels
is not modelled can never lose one.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import numpy as np
import onnx_graphsurgeon as gs


@dataclasses.dataclass(frozen=True)
class Frozen:
    """Why some channels can never be removed; ``where`` names the node and op."""

    where: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"where": self.where, "reason": self.reason}


@dataclasses.dataclass(frozen=True)
class Space:
    tensor: str
    axis: int
    rank: int
    size: int
    base: int

    @property
    def ids(self) -> np.ndarray:
        return np.arange(self.base, self.base + self.size, dtype=np.int64)


@dataclasses.dataclass
class Sink:
    """A weighted linear node: output channel f reads input channel c iff dep[f, c % k] (per group)."""

    node: str
    op: str
    input: str | None       # tensor holding the read space (None: untracked input)
    output: str
    dep: np.ndarray         # bool [Cout, Cin / groups]
    groups: int
    bias_zero: np.ndarray   # bool [Cout]

    def needed_inputs(self, live_out: np.ndarray) -> np.ndarray:
        """bool [Cin]: input channels some live output reads with a non-zero weight."""
        cout, k = self.dep.shape
        m = cout // self.groups
        return (live_out.reshape(self.groups, m, 1) & self.dep.reshape(self.groups, m, k)).any(axis=1).reshape(-1)

    def zero_outputs(self, zero_in: np.ndarray | None) -> np.ndarray:
        """bool [Cout]: outputs identically zero given which inputs are (bias zero, no live read)."""
        cout, k = self.dep.shape
        if zero_in is None:
            reads = self.dep.any(axis=1)
        else:
            nz = ~zero_in.reshape(self.groups, 1, k)
            reads = (self.dep.reshape(self.groups, cout // self.groups, k) & nz).any(axis=2).reshape(-1)
        return self.bias_zero & ~reads


def node_label(node: gs.Node) -> str:
    return f"{node.name or '<unnamed>'} ({node.op})"


class Builder:
    """Collects spaces, couplings, sinks and freezes while rules visit the graph in order."""

    def __init__(self, shapes: dict[str, tuple], opset: int, graph_outputs: set[str] = frozenset(),
                 unknown: dict[str, str] | None = None):
        self.shapes = shapes
        self.unknown = unknown or {}   # tensor name -> why its shape is not fully known
        self.graph_outputs = set(graph_outputs)
        self.opset = opset
        self.spaces: dict[str, Space] = {}
        self.n_atoms = 0
        self._union: list[tuple[np.ndarray, np.ndarray]] = []
        self.flows: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}  # id(node) -> (src, dst)
        self.sinks: dict[int, Sink] = {}
        self.frozen_events: list[tuple[Frozen, np.ndarray]] = []
        self.needed_always: list[np.ndarray] = []                 # graph outputs
        self.needed_if_live: dict[int, list[np.ndarray]] = {}     # id(node) -> atoms it reads unmodelled
        self.reads: dict[int, list[str]] = {}                     # id(node) -> tensor names it reads
        self.producers: list[tuple[str, str, np.ndarray, np.ndarray]] = []  # node, op, atoms, indices
        self.consumers: list[tuple[str, str, np.ndarray, np.ndarray]] = []
        self.data: dict[int, Any] = {}
        self.declared: set[tuple[int, str]] = set()
        self.zeroable: list[np.ndarray] = []  # atoms a producer entry can zero (hypothesis)

    # -- shapes and constants -------------------------------------------------
    def raw_shape(self, tensor: gs.Tensor) -> tuple | None:
        """Dims as ints, symbol names (str) or None, from inference or the graph."""
        if isinstance(tensor, gs.Constant):
            return tuple(np.asarray(tensor.values).shape)
        shp = self.shapes.get(tensor.name)
        if shp is None and tensor.shape is not None:
            shp = tuple(tensor.shape)
        return shp

    def shape_unknown(self, tensor: gs.Tensor) -> str:
        """Why ``tensor``'s shape is not fully known (for a freeze reason)."""
        return self.unknown.get(tensor.name, "needs static input dims; give --input-shape")

    def shape(self, tensor: gs.Tensor) -> tuple | None:
        """Dims as ints or None (unknown / symbolic)."""
        shp = self.raw_shape(tensor)
        if shp is None:
            return None
        return tuple(int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None for d in shp)

    def rank(self, tensor: gs.Tensor) -> int | None:
        shp = self.shape(tensor)
        return None if shp is None else len(shp)

    def dim(self, tensor: gs.Tensor, axis: int) -> int | None:
        shp = self.shape(tensor)
        if shp is None or not -len(shp) <= axis < len(shp):
            return None
        d = shp[axis]
        return d if isinstance(d, int) and d >= 0 else None

    @staticmethod
    def const(tensor: gs.Tensor | None) -> np.ndarray | None:
        if isinstance(tensor, gs.Constant):
            return np.asarray(tensor.values)
        return None

    def space(self, tensor: gs.Tensor | None) -> Space | None:
        if tensor is None or isinstance(tensor, gs.Constant):
            return None
        return self.spaces.get(tensor.name)

    # -- recording ------------------------------------------------------------
    def new_space(self, tensor: gs.Tensor, axis: int, size: int, rank: int) -> Space | None:
        """Give ``tensor`` a channel space, unless its known shape disagrees (then it stays untracked)."""
        known = self.dim(tensor, axis)
        if known is not None and known != size or size <= 0:
            return None
        r = self.rank(tensor)
        if r is not None and r != rank:
            return None
        sp = Space(tensor.name, axis, rank, size, self.n_atoms)
        self.n_atoms += size
        self.spaces[tensor.name] = sp
        return sp

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        if a.size:
            self._union.append(np.broadcast_arrays(a, b))

    def flow(self, node: gs.Node, src: np.ndarray, dst: np.ndarray, couple: bool = True) -> None:
        src, dst = np.broadcast_arrays(np.asarray(src, np.int64), np.asarray(dst, np.int64))
        if couple:
            self.union(src, dst)
        self.flows.setdefault(id(node), []).append((src.copy(), dst.copy()))

    def declare(self, node: gs.Node, tensor: gs.Tensor) -> None:
        """The rule accounts for how ``node`` reads ``tensor``'s channels."""
        self.declared.add((id(node), tensor.name))

    def sink(self, node: gs.Node, xs: Space | None, y_space: Space, dep: np.ndarray, groups: int,
             bias_zero: np.ndarray) -> None:
        """Record a weighted node reading space ``xs`` (None: untracked input) into ``y_space``."""
        self.sinks[id(node)] = Sink(node.name, node.op, xs.tensor if xs else None, y_space.tensor,
                                    dep.astype(bool), groups, bias_zero.astype(bool))
        self.producer(node, y_space.ids, np.arange(y_space.size))
        if xs is not None:
            self.declared.add((id(node), xs.tensor))
            self.consumers.append((node.name, node.op, xs.ids, np.arange(xs.size)))

    def producer(self, node: gs.Node, atoms: np.ndarray, indices: np.ndarray) -> None:
        self.producers.append((node.name, node.op, np.asarray(atoms), np.asarray(indices)))
        self.zeroable.append(np.asarray(atoms))

    def freeze(self, node: gs.Node | str, reason: str, atoms: Iterable[np.ndarray] | np.ndarray = (),
               needed: bool = False) -> None:
        where = node_label(node) if isinstance(node, gs.Node) else node
        arrs = [atoms] if isinstance(atoms, np.ndarray) else list(atoms)
        ids = np.concatenate([np.asarray(a, np.int64) for a in arrs]) if arrs else np.zeros(0, np.int64)
        self.frozen_events.append((Frozen(where, reason), ids))
        if needed:
            # A node's unmodelled reads matter only while one of its outputs does (see facts).
            if isinstance(node, gs.Node):
                self.needed_if_live.setdefault(id(node), []).append(ids)
            else:
                self.needed_always.append(ids)

    def freeze_tensors(self, node: gs.Node | str, reason: str, tensors: Iterable[gs.Tensor],
                       needed: bool = True) -> None:
        spaces = [self.space(t) for t in tensors]
        self.freeze(node, reason, [s.ids for s in spaces if s is not None], needed=needed)

    def union_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._union:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return (np.concatenate([a.reshape(-1) for a, _ in self._union]),
                np.concatenate([b.reshape(-1) for _, b in self._union]))
