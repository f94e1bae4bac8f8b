"""Channel analysis (design 3.2): spaces, slots, groups, zero / unused facts, frozen reasons.

Public API (other modules code against it)::

    analyze_channels(graph: gs.Graph, input_shapes: dict | None = None) -> ChannelAnalysis

    ChannelAnalysis
        slots: list[Slot]                  every slot, by id (built on first access)
        groups: list[ChannelGroup]         connected sets of coupled tensor spaces (reports; lazy too)
        frozen: list[Frozen]               every freeze, Frozen(where="node (Op)", reason)
        spaces: dict[str, Space]           tensor name -> Space(tensor, axis, rank, size, base)
        label: int[atoms]                  slot id per atom; slot_removable: bool[n_slots]
        tensor_zero(name) -> bool[C]       channel identically zero
        tensor_unused(name) -> bool[C]     no graph output depends on the channel
        tensor_constant(name) -> float[C]  input-independent value of the channel (NaN: none)
        constant: float[atoms]             the same per atom
        slots_of(name) -> int[C]           slot id per channel
        removable_slots() -> list[Slot]
    Slot
        id, atoms [(tensor, channel)], producers [(node, op, out_channel)],
        consumers [(node, op, in_channel | (start, stop))], zero, unused, removable,
        frozen_by [Frozen], zero_if_producers_zeroed,
        constants {tensor: value}          the slot's input-independent channels (zero included)
        kept_because: str | None           why the slot is neither removable nor gateable
    ChannelGroup
        id, tensors, slots, frozen_by,
        constant_slots {slot: {tensor: value}}, kept_because [distinct reasons of its slots]

An *atom* is one channel of one tensor. Rules (:mod:`smof_onnx.passes.analysis.rules`) union the
atoms that must go together; a *slot* is one connected component (so Concat offsets,
Split/Slice ranges, depthwise groups and Flatten feature blocks are handled alike).
A slot is *removable* when no atom is frozen and every atom is zero, unused, or a
constant that every live reader in another slot can fold into its bias (the *constant*
fact and the folding rules: :mod:`smof_onnx.passes.analysis.constants`); then every op
touching it has a drop rule (ops without one freeze what they touch).

Frozen: graph inputs and outputs, ops absent from ``RULES`` (If/Loop/Scan, quantized
ops, custom domains included), tensors whose channel axis or needed shapes are
unknown (shapes: :mod:`smof_onnx.passes.analysis.shapes`, whose reason the freeze quotes), and
any input a rule does not declare how it reads. Frozen is about editing,
not liveness: a refused node needs its inputs only while one of its outputs is needed
(see :mod:`smof_onnx.passes.analysis.facts`), so the slots behind it can be unused and go, but
a slot it touches stays, unused or not, because the node would have to change. Once
nothing reads that node, ``eliminate_dead_nodes`` removes it and the next cut round
sees the group unfrozen.

``zero_if_producers_zeroed`` answers the learning stage: if every producer entry of the
slot (Conv/ConvTranspose/Gemm/MatMul filter weights + bias, BN/IN scale + shift) were
zero, would the slot be removable? A zeroed channel that becomes a constant (PP-LCNetV3's
``Mul`` by s then ``Add`` of b after the activation turn 0 into b) counts when the
constant can be folded. It is computed for all slots at once (slots are disjoint;
cross-slot liveness and cross-slot operands are judged by the real facts, which is
conservative).

``kept_because`` names, for a slot that is neither removable nor gateable, the first
reason found: a freeze, no producer to zero, a constant that a reader cannot fold
("channel 3 constant 0.0886 after Add 'p2o.Add.12': consumer Conv 'c' is padded ..."),
or the tensor whose channel still depends on the input with the producers zeroed.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence

import numpy as np
import onnx_graphsurgeon as gs
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..graph import opset_version
from .constants import const_blocked, forward_const
from .facts import backward_needed, forward_zero
from .rulebase import refuse
from .rules import RULES
from .shapes import tensor_shapes
from .spaces import Builder, Frozen, Space, node_label

__all__ = ["analyze_channels", "build", "ChannelAnalysis", "Slot", "ChannelGroup", "Frozen", "Space", "node_label"]

QUANTIZED = ("QLinear", "Quantize", "Dequantize", "Integer")


@dataclasses.dataclass
class Slot:
    id: int
    atoms: list[tuple[str, int]]
    producers: list[tuple[str, str, int]]
    consumers: list[tuple[str, str, object]]
    zero: bool
    unused: bool
    removable: bool
    frozen_by: list[Frozen]
    zero_if_producers_zeroed: bool
    constants: dict[str, float] = dataclasses.field(default_factory=dict)
    kept_because: str | None = None


@dataclasses.dataclass
class ChannelGroup:
    id: int
    tensors: list[str]
    slots: list[int]
    frozen_by: list[Frozen]
    constant_slots: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)
    kept_because: list[str] = dataclasses.field(default_factory=list)

    @property
    def frozen(self) -> bool:
        return bool(self.frozen_by)


@dataclasses.dataclass
class ChannelAnalysis:
    """The analysis; per-slot facts are arrays, the :class:`Slot` / :class:`ChannelGroup`
    objects are built on first access (the cut passes need only the arrays)."""

    frozen: list[Frozen]
    spaces: dict[str, Space]
    zero: np.ndarray            # per atom
    unused: np.ndarray          # per atom
    label: np.ndarray           # slot id per atom
    slot_removable: np.ndarray  # per slot
    builder: Builder = dataclasses.field(repr=False)
    _per_slot: dict[str, np.ndarray] = dataclasses.field(repr=False, default_factory=dict)
    constant: np.ndarray | None = dataclasses.field(repr=False, default=None)   # per atom, NaN: not constant
    _facts: dict = dataclasses.field(repr=False, default_factory=dict)

    @property
    def n_slots(self) -> int:
        return int(self.slot_removable.size)

    @functools.cached_property
    def slots(self) -> list[Slot]:
        return _slots(self)

    @functools.cached_property
    def groups(self) -> list[ChannelGroup]:
        return _groups(self.builder, self.label, self.n_slots, self.slots)

    def _space(self, name: str) -> Space:
        if name not in self.spaces:
            raise KeyError(f"tensor '{name}' has no tracked channel space")
        return self.spaces[name]

    def _take(self, arr: np.ndarray, name: str) -> np.ndarray:
        sp = self._space(name)
        return arr[sp.base:sp.base + sp.size].copy()

    def tensor_zero(self, name: str) -> np.ndarray:
        return self._take(self.zero, name)

    def tensor_unused(self, name: str) -> np.ndarray:
        return self._take(self.unused, name)

    def tensor_constant(self, name: str) -> np.ndarray:
        """float [C]: each channel's input-independent value (NaN: depends on the input)."""
        return self._take(self.constant, name)

    def slots_of(self, name: str) -> np.ndarray:
        return self._take(self.label, name)

    def removable_slots(self) -> list[Slot]:
        return [self.slots[int(i)] for i in np.flatnonzero(self.slot_removable)]


def _outer_reads(node: gs.Node, tensors: Mapping[str, gs.Tensor]) -> list[gs.Tensor]:
    """Outer-scope tensors an If/Loop/Scan body reads without listing them as node inputs."""
    found: dict[str, gs.Tensor] = {}

    def visit(sub: gs.Graph, bound: set[str]) -> None:
        bound = bound | {t.name for t in sub.inputs} | {o.name for n in sub.nodes for o in n.outputs}
        for n in sub.nodes:
            for t in n.inputs:
                if t.name and t.name not in bound and t.name in tensors:
                    found[t.name] = tensors[t.name]
            for v in n.attrs.values():
                if isinstance(v, gs.Graph):
                    visit(v, bound)

    for v in node.attrs.values():
        if isinstance(v, gs.Graph):
            visit(v, set())
    return list(found.values())


def _reads(node: gs.Node, tensors: Mapping[str, gs.Tensor]) -> list[gs.Tensor]:
    reads = list(node.inputs)
    if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
        reads += _outer_reads(node, tensors)
    return reads


def _topo(graph: gs.Graph) -> list[gs.Node]:
    tensors = graph.tensors()
    produced = {id(t): n for n in graph.nodes for t in n.outputs}
    order, state = [], {}
    for root in graph.nodes:
        stack = [(root, False)]
        while stack:
            node, done = stack.pop()
            if done:
                state[id(node)] = 2
                order.append(node)
                continue
            if state.get(id(node)):
                continue
            state[id(node)] = 1
            stack.append((node, True))
            for t in _reads(node, tensors):
                p = produced.get(id(t))
                if p is not None and not state.get(id(p)):
                    stack.append((p, False))
    return order


def _refusal(node: gs.Node) -> str | None:
    if (node.domain or "") not in ("", "ai.onnx"):
        return f"custom domain '{node.domain}' op {node.op}: no channel rule"
    if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
        return f"{node.op} has subgraphs; channels through control flow are not modelled"
    if any(q in node.op for q in QUANTIZED):
        return f"quantized op {node.op}: channels carry scales/zero points; not modelled"
    if node.op not in RULES:
        return f"no channel rule for op {node.op}"
    return None


def build(graph: gs.Graph, input_shapes: Mapping[str, Sequence[int]] | None = None) -> tuple[Builder, list[gs.Node]]:
    """Visit every node with its rule; returns the builder and the topological order."""
    outputs = {t.name for t in graph.outputs}
    nodes = _topo(graph)
    shapes, unknown = tensor_shapes(graph, nodes, input_shapes)
    b = Builder(shapes, opset_version(graph), outputs, unknown)
    for t in graph.inputs:
        shp = b.shape(t)
        if shp is not None and len(shp) >= 2 and shp[1] is not None:
            sp = b.new_space(t, 1, shp[1], len(shp))
            if sp is not None:
                b.freeze(f"graph input '{t.name}'", "graph inputs keep their shape", sp.ids)
    tensors = graph.tensors()
    for node in nodes:
        b.reads[id(node)] = [t.name for t in _reads(node, tensors)
                             if t is not None and t.name and not isinstance(t, gs.Constant)]
        why = _refusal(node)
        if why:
            # A body reading an outer tensor is a consumer the node's input list does not show.
            refuse(node, b, why, [t for t in _reads(node, tensors) if t is not None and t.name])
        else:
            RULES[node.op].couple(node, b)
        for t in node.inputs:
            sp = b.space(t)
            if sp is not None and (id(node), t.name) not in b.declared:
                b.freeze(node, f"reads channels of '{t.name}' in a way its rule does not model", sp.ids,
                         needed=True)
    for t in graph.outputs:
        sp = b.space(t)
        if sp is not None:
            b.freeze(f"graph output '{t.name}'", "graph outputs keep their shape", sp.ids, needed=True)
    return b, nodes


def analyze_channels(graph: gs.Graph, input_shapes: Mapping[str, Sequence[int]] | None = None) -> ChannelAnalysis:
    """Analyse ``graph`` (not modified); see the module docstring."""
    b, nodes = build(graph, input_shapes)
    n = b.n_atoms
    src, dst = b.union_pairs()
    adj = coo_matrix((np.ones(src.size, bool), (src, dst)), shape=(n, n))
    n_slots, label = connected_components(adj, directed=False) if n else (0, np.zeros(0, np.int64))

    zero = forward_zero(nodes, b, RULES)
    value = forward_const(nodes, b, RULES, zero)
    frozen_atom = np.zeros(n, bool)
    for _, ids in b.frozen_events:
        frozen_atom[ids] = True

    def per_slot_all(mask: np.ndarray) -> np.ndarray:
        bad = np.zeros(n_slots, bool)
        bad[label[~mask]] = True
        return ~bad

    def folds(v: np.ndarray, why: dict) -> np.ndarray:
        ok = np.isfinite(v)
        ok[list(why)] = False
        return ok

    slot_frozen = ~per_slot_all(~frozen_atom)
    # Removed constants are folded, not read: they need nothing, so iterate to the fixed point.
    dead = zero
    for _ in range(n_slots + 1):
        needed, live_nodes = backward_needed(nodes, b, dead)
        blocked = const_blocked(nodes, b, value, zero, needed, label, cross=(dead, needed))
        removable = per_slot_all(zero | ~needed | folds(value, blocked)) & ~slot_frozen
        now = zero | (removable[label] & np.isfinite(value))
        if (now == dead).all():
            break
        dead = now
    hyp = np.zeros(n, bool)
    for ids in b.zeroable:
        hyp[ids] = True
    zero_h = forward_zero(nodes, b, RULES, hyp)
    needed_h, _ = backward_needed(nodes, b, zero_h, cross=(label, dead, needed), live_nodes=live_nodes)
    value_h = forward_const(nodes, b, RULES, zero_h, hyp, real=(label, value))
    blocked_h = const_blocked(nodes, b, value_h, zero_h, needed_h, label, cross=(dead, needed))

    ok_h = zero_h | ~needed_h | folds(value_h, blocked_h)
    per_slot = {"zero": per_slot_all(zero), "unused": per_slot_all(~needed),
                "gateable": per_slot_all(ok_h) & ~slot_frozen}
    frozen = list(dict.fromkeys(fr for fr, _ in b.frozen_events))
    facts = {"needed": needed, "blocked": blocked, "ok_h": ok_h, "blocked_h": blocked_h, "value_h": value_h,
             "nodes": nodes}
    return ChannelAnalysis(frozen, dict(b.spaces), zero, ~needed, label, removable, b, per_slot, value, facts)


def _slots(a: ChannelAnalysis) -> list[Slot]:
    """The :class:`Slot` objects of an analysis (see :class:`ChannelAnalysis`)."""
    b, label, n_slots, n = a.builder, a.label, a.n_slots, a.label.size
    events_of_slot: dict[int, list[Frozen]] = {}
    for fr, ids in b.frozen_events:
        for s in np.unique(label[ids]).tolist():
            lst = events_of_slot.setdefault(s, [])
            if fr not in lst:
                lst.append(fr)
    tensor_of = np.empty(n, object)
    chan_of = np.empty(n, np.int64)
    for sp in b.spaces.values():
        tensor_of[sp.base:sp.base + sp.size] = sp.tensor
        chan_of[sp.base:sp.base + sp.size] = np.arange(sp.size)
    order = np.argsort(label, kind="stable")
    bounds = np.searchsorted(label[order], np.arange(n_slots + 1)).tolist()
    tensors, chans = tensor_of[order].tolist(), chan_of[order].tolist()
    producers = _by_slot(b.producers, label, n_slots, ranges=False)
    consumers = _by_slot(b.consumers, label, n_slots, ranges=True)
    zero, unused = a._per_slot["zero"].tolist(), a._per_slot["unused"].tolist()
    removable, gateable = a.slot_removable.tolist(), a._per_slot["gateable"].tolist()
    value = a.constant if a.constant is not None else np.full(n, np.nan)
    consts = [dict() for _ in range(n_slots)]
    for i in np.flatnonzero(np.isfinite(value)).tolist():
        consts[int(label[i])][str(tensor_of[i])] = float(value[i])
    slots = [Slot(s, list(zip(tensors[bounds[s]:bounds[s + 1]], chans[bounds[s]:bounds[s + 1]])), producers[s],
                  consumers[s], zero[s], unused[s], removable[s], events_of_slot.get(s, []), gateable[s], consts[s])
             for s in range(n_slots)]
    for slot in slots:
        if not slot.removable and not slot.zero_if_producers_zeroed:
            slot.kept_because = _kept_because(a, slot, order[bounds[slot.id]:bounds[slot.id + 1]], tensor_of)
    return slots


def _kept_because(a: ChannelAnalysis, slot: Slot, atoms: np.ndarray, tensor_of: np.ndarray) -> str:
    """Why ``slot`` is neither removable nor gateable (see the module docstring)."""
    if slot.frozen_by:
        fr = slot.frozen_by[0]
        return f"frozen by {fr.where}: {fr.reason}"
    if not slot.producers:
        return (f"no producer can zero it: its channels come from '{tensor_of[atoms[0]]}' without a Conv, Gemm, "
                "MatMul or BatchNormalization in the group")
    facts = a._facts
    bad = [int(i) for i in atoms if not facts["ok_h"][i]]
    for i in bad:
        if i in facts["blocked_h"]:
            return facts["blocked_h"][i][1]
    made_by = {o.name: n for n in facts["nodes"] for o in n.outputs}
    if bad:
        t = str(tensor_of[bad[0]])
        node = made_by.get(t)
        where = f" after {node.op} '{node.name}'" if node is not None else ""
        producers = ", ".join(sorted({p[0] for p in slot.producers}))
        averaged = _averaged_constant(a, node, set(atoms.tolist())) if node is not None else None
        if averaged is not None:
            return (f"channel of '{t}'{where} averages the constant {averaged:.6g} that zeroing the slot's producers "
                    f"({producers}) leaves: a float32 mean of copies of a value is not exactly that value, so it is "
                    "not folded (an exact cut could not remove it)")
        return f"channel of '{t}'{where} still depends on the input when the slot's producers ({producers}) are zeroed"
    return "not removable"


_AVERAGING = ("GlobalAveragePool", "AveragePool", "ReduceMean", "Resize", "Upsample")


def _averaged_constant(a: ChannelAnalysis, node: gs.Node, slot_atoms: set[int]) -> float | None:
    """The constant an averaging ``node`` reads from the slot under the zeroed hypothesis, if any."""
    if node.op not in _AVERAGING or not node.inputs or node.inputs[0].name not in a.spaces:
        return None
    sp = a.spaces[node.inputs[0].name]
    ids = [i for i in range(sp.base, sp.base + sp.size) if i in slot_atoms]
    values = a._facts["value_h"][ids] if ids else np.array([])
    finite = values[np.isfinite(values)]
    return float(finite[0]) if finite.size and finite.size == len(ids) else None


def _by_slot(entries, label: np.ndarray, n_slots: int, ranges: bool) -> list[list]:
    """Per slot: (node, op, index) entries; consumer indices compressed into (start, stop) runs."""
    out: list[list] = [[] for _ in range(n_slots)]
    entries = [e for e in entries if e[2].size]
    if not entries:
        return out
    lab = np.concatenate([label[e[2]] for e in entries])
    ent = np.concatenate([np.full(e[2].size, i) for i, e in enumerate(entries)])
    idx = np.concatenate([np.asarray(e[3], np.int64) for e in entries])
    order = np.lexsort((idx, ent, lab))
    lab, ent, idx = lab[order], ent[order], idx[order]
    brk = np.ones(lab.size, bool)
    if ranges:
        brk[1:] = (lab[1:] != lab[:-1]) | (ent[1:] != ent[:-1]) | (idx[1:] != idx[:-1] + 1)
    starts = np.flatnonzero(brk)
    stops = np.append(starts[1:], lab.size)
    for a, b in zip(starts.tolist(), stops.tolist()):
        node, op = entries[ent[a]][:2]
        out[int(lab[a])].append((node, op, int(idx[a]) if b - a == 1 else (int(idx[a]), int(idx[b - 1]) + 1)))
    return out


def _groups(b: Builder, label: np.ndarray, n_slots: int, slots: list[Slot]) -> list[ChannelGroup]:
    """Tensors connected through shared slots (a bipartite graph tensor -- slot)."""
    names = list(b.spaces)
    nt = len(names)
    rows, cols = [], []
    for i, name in enumerate(names):
        sp = b.spaces[name]
        labs = np.unique(label[sp.base:sp.base + sp.size])
        rows.append(np.full(labs.size, i))
        cols.append(nt + labs)
    if not names:
        return []
    r, c = np.concatenate(rows), np.concatenate(cols)
    adj = coo_matrix((np.ones(r.size, bool), (r, c)), shape=(nt + n_slots, nt + n_slots))
    _, comp = connected_components(adj, directed=False)
    groups: dict[int, ChannelGroup] = {}
    for i, name in enumerate(names):
        g = groups.setdefault(int(comp[i]), ChannelGroup(len(groups), [], [], []))
        g.tensors.append(name)
    for s in slots:
        g = groups[int(comp[nt + s.id])]
        g.slots.append(s.id)
        if s.constants:
            g.constant_slots[s.id] = dict(s.constants)
        if s.kept_because and s.kept_because not in g.kept_because:
            g.kept_because.append(s.kept_because)
        for fr in s.frozen_by:
            if fr not in g.frozen_by:
                g.frozen_by.append(fr)
    return list(groups.values())

