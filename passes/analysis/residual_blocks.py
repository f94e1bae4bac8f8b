"""Residual blocks: the branches depth pruning can remove (design 5b), and how to remove them.

Public API::

    find_residual_blocks(model, input_shapes=None) -> ResidualAnalysis
    zero_branches(model, block_ids, input_shapes=None) -> onnx.ModelProto

Give a *canonical* model (:func:`smof_onnx.passes.pipeline.canonicalize`: BatchNormalization
folded into the convs, constants as initializers) so the last producer of a branch is a Conv
and node names match the cut's. Models with symbolic spatial dims need ``input_shapes``.

Rules:
- A *residual block* is an ``Add(a, b)`` (either order) or ``Sub(a, b)`` (branch ``b`` only,
  since only ``x - 0 = x``) of two non-constant tensors of the same fully known shape (no
  broadcast), where one operand, the *branch output* ``p``, is made by a non-empty set of
  nodes B that only feed this Add, and the other operand, the *shortcut*, is the branch's
  one input ``x`` (identity) or a projection of ``x``: nodes that only feed the Add, all of
  them ``Conv`` / ``BatchNormalization`` / ``AveragePool`` / ``Identity``, reading nothing but ``x``.
- B, the *nodes that go with the branch*, is the largest set of ancestors of ``p`` none of whose
  outputs is a graph output or is read outside B and the Add (the fixed point of "a producer
  joins B once every reader of every output it has is in B"). Every tensor B reads from outside
  (constants aside) must be ``x``: a branch reading anything else is not a residual branch.
- When both operands qualify, an identity shortcut wins, else the larger branch; equal-sized
  single-projection pairs (RepVGG-like ``conv_a(x) + conv_b(x)``) are skipped as ambiguous.
- The *last producers* are the zeroable nodes of B (Conv / ConvTranspose / Gemm / MatMul with a
  constant operand, BatchNormalization with constant scale and shift; a MatMul / Gemm / Conv read
  only by an ``Add`` of a constant, an unfused bias, goes with that Add) reachable backwards from
  ``p`` without crossing another zeroable node, reduced greedily to a minimal set whose zeroing
  keeps ``p`` identically zero. "Zero" is the channel analysis's own fact
  (:func:`smof_onnx.passes.analysis.facts.forward_zero`, the one ``drop_zero_branches`` uses)
  under the hypothesis that those nodes' outputs are zero, so ``pipeline.cut`` of a model
  from :func:`zero_branches` drops the Add and ``eliminate_dead_nodes`` removes all of B.
- ``flops`` / ``params`` of a block: the :func:`count_cost` rows of the weighted nodes of B,
  i.e. exactly what the cut model loses. The shortcut (identity or projection) stays.
- Layers outside residual branches are never depth-pruned: the stem, the head, transition
  convs and a projection shortcut are not in any B, so no choice of blocks removes them.
- ``skipped`` lists, for every other Add/Sub of two non-constant tensors, why it is not a block.

:func:`zero_branches` zeroes the weights and biases (Gemm: B and C; BatchNormalization: scale
and shift; MatMul: its constant operand; a bias Add: its constant) of the chosen blocks' last producers, in a copy;
an initializer shared with a node outside the set is replaced by a fresh zero constant
rather than edited in place.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph import to_graph, to_model, unique_name
from .channels import build
from .facts import forward_zero
from .flops import WEIGHTED_OPS, count_cost
from .rules import RULES
from .spaces import Builder, node_label

PROJECTION_OPS = frozenset({"Conv", "BatchNormalization", "AveragePool", "Identity"})
_ZEROABLE = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization"})


@dataclasses.dataclass(frozen=True)
class ResidualBlock:
    """One removable residual branch; ``id`` is the name of its Add/Sub node."""

    id: str
    op: str
    block_input: str
    branch_output: str
    shortcut: str                       # "identity" | "projection"
    shortcut_nodes: tuple[str, ...]
    last_producers: tuple[str, ...]
    nodes: tuple[str, ...]              # B, in topological order
    flops: int
    params: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ResidualAnalysis:
    blocks: list[ResidualBlock]
    skipped: list[dict[str, str]]       # [{where, reason}]
    flops: int                          # the whole model's counted FLOPs

    def block(self, block_id: str) -> ResidualBlock:
        for blk in self.blocks:
            if blk.id == block_id:
                return blk
        raise KeyError(f"no residual block '{block_id}'; blocks: {[b.id for b in self.blocks]}")

    def to_dict(self) -> dict:
        return {"blocks": [b.to_dict() for b in self.blocks], "skipped": list(self.skipped), "flops": self.flops}


def _is_const(t: gs.Tensor) -> bool:
    return isinstance(t, gs.Constant)


def _producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if t.inputs else None


def _exclusive_ancestors(p: gs.Tensor, add: gs.Node, outputs: set[str]) -> list[gs.Node]:
    """B for operand ``p`` of ``add`` (see the module docstring); empty when p is not exclusive."""
    first = _producer(p)
    if first is None or p.name in outputs or any(c is not add for c in p.outputs) \
            or sum(t is p for t in add.inputs) != 1:
        return []
    inside, order, work = {id(first)}, [first], [first]
    while work:
        node = work.pop()
        for t in node.inputs:
            m = None if _is_const(t) else _producer(t)
            if m is None or id(m) in inside:
                continue
            if all(o.name not in outputs and all(id(c) in inside for c in o.outputs) for o in m.outputs):
                inside.add(id(m))
                order.append(m)
                work.append(m)
    return order


def _external_reads(nodes: Sequence[gs.Node]) -> list[gs.Tensor]:
    made = {id(o) for n in nodes for o in n.outputs}
    seen: dict[str, gs.Tensor] = {}
    for n in nodes:
        for t in n.inputs:
            if t is not None and t.name and not _is_const(t) and id(t) not in made:
                seen.setdefault(t.name, t)
    return list(seen.values())


def _zeroable(node: gs.Node) -> bool:
    if node.op not in _ZEROABLE or (node.domain or "") not in ("", "ai.onnx"):
        return False
    if node.op == "MatMul":
        return any(_is_const(t) for t in node.inputs[:2])
    if node.op == "BatchNormalization":
        return all(_is_const(t) for t in node.inputs[1:3])
    return len(node.inputs) > 1 and _is_const(node.inputs[1])


def _bias_add(node: gs.Node) -> gs.Node | None:
    """The zeroable producer of an unfused bias ``Add(producer(y), c)`` (c constant), else None."""
    if node.op != "Add" or len(node.inputs) != 2 or sum(_is_const(t) for t in node.inputs) != 1:
        return None
    y = next(t for t in node.inputs if not _is_const(t))
    m = _producer(y)
    return m if m is not None and _zeroable(m) and all(c is node for c in y.outputs) else None


def _last_candidates(p: gs.Tensor, members: set[int]) -> list[list[gs.Node]]:
    """Units to zero, each a list of nodes zeroed together: a zeroable node, or one with its bias Add."""
    found, seen, work = [], set(), [_producer(p)]
    while work:
        node = work.pop()
        if node is None or id(node) in seen or id(node) not in members:
            continue
        seen.add(id(node))
        if _zeroable(node):
            found.append([node])
            continue
        inner = _bias_add(node)
        if inner is not None and id(inner) in members:
            found.append([inner, node])
            continue
        work.extend(_producer(t) for t in node.inputs if not _is_const(t))
    return found


class _ZeroCheck:
    """Is a tensor identically zero once some nodes' outputs are zero? (the analysis's fact)"""

    def __init__(self, graph: gs.Graph, input_shapes):
        self.b, self.nodes = build(graph, input_shapes)

    def zero_if(self, tensor: gs.Tensor, zeroed: Iterable[gs.Node]) -> bool:
        b: Builder = self.b
        target = b.space(tensor)
        if target is None:
            return False
        hyp = np.zeros(b.n_atoms, bool)
        for node in zeroed:
            for out in node.outputs:
                sp = b.space(out)
                if sp is None:
                    return False
                hyp[sp.base:sp.base + sp.size] = True
        z = forward_zero(self.nodes, b, RULES, hyp)
        return bool(z[target.base:target.base + target.size].all())


def _shortcut(q: gs.Tensor, x: gs.Tensor, add: gs.Node, outputs: set[str]) -> tuple[str, list[gs.Node]] | None:
    if q is x:
        return "identity", []
    s = _exclusive_ancestors(q, add, outputs)
    if s and all(n.op in PROJECTION_OPS for n in s) and [t.name for t in _external_reads(s)] == [x.name]:
        return "projection", s
    return None


def _orientation(add: gs.Node, i: int, outputs: set[str]) -> tuple | str:
    p, q = add.inputs[i], add.inputs[1 - i]
    nodes = _exclusive_ancestors(p, add, outputs)
    if not nodes:
        return f"operand '{p.name}' is read elsewhere or is a graph output"
    ext = _external_reads(nodes)
    if len(ext) != 1:
        return f"branch '{p.name}' reads {sorted(t.name for t in ext)}, not one block input"
    short = _shortcut(q, ext[0], add, outputs)
    if short is None:
        return f"operand '{q.name}' is neither the block input '{ext[0].name}' nor a projection of it"
    return p, ext[0], nodes, short


def find_residual_blocks(model: onnx.ModelProto | gs.Graph,
                         input_shapes: Mapping[str, Sequence[int]] | None = None) -> ResidualAnalysis:
    """Every residual block of ``model`` (not modified); see the module docstring."""
    graph = to_graph(model) if isinstance(model, onnx.ModelProto) else model.copy()
    graph.toposort()
    cost = count_cost(to_model(graph), input_shapes)
    weighted = [n for n in graph.nodes if n.op in WEIGHTED_OPS]
    layer_of = {id(n): lc for n, lc in zip(weighted, cost.layers)}
    position = {id(n): k for k, n in enumerate(graph.nodes)}
    outputs = {t.name for t in graph.outputs}
    check = _ZeroCheck(graph, input_shapes)
    blocks, skipped = [], []
    for add in graph.nodes:
        if add.op not in ("Add", "Sub") or len(add.inputs) != 2 or any(_is_const(t) for t in add.inputs) \
                or (add.domain or "") not in ("", "ai.onnx"):
            continue
        where = node_label(add)
        shapes = [check.b.raw_shape(t) for t in (*add.inputs, add.outputs[0])]
        if any(s is None or any(not isinstance(d, (int, np.integer)) or d < 0 for d in s) for s in shapes) \
                or len({tuple(s) for s in shapes}) != 1:
            skipped.append({"where": where, "reason": f"operand and output shapes {shapes} are not one known shape"})
            continue
        options = [_orientation(add, i, outputs) for i in ((1,) if add.op == "Sub" else (0, 1))]
        valid = [o for o in options if not isinstance(o, str)]
        if not valid:
            skipped.append({"where": where, "reason": "; ".join(options)})
            continue
        if len(valid) == 2:
            rank = [(o[3][0] == "identity", len(o[2])) for o in valid]
            if rank[0] == rank[1]:
                skipped.append({"where": where, "reason": "both operands look like branches (ambiguous)"})
                continue
            valid = [valid[int(rank[1] > rank[0])]]
        p, x, nodes, (kind, short_nodes) = valid[0]
        members = {id(n) for n in nodes}
        units = _last_candidates(p, members)
        if not units or not check.zero_if(p, [n for u in units for n in u]):
            skipped.append({"where": where, "reason": f"zeroing the branch's last weighted nodes "
                            f"{[n.name for u in units for n in u]} does not make '{p.name}' identically zero "
                            "(an op between them and the Add does not keep zero, or the branch multiplies "
                            "the block input by a gate)"})
            continue
        for unit in list(units):
            rest = [u for u in units if u is not unit]
            if rest and check.zero_if(p, [n for u in rest for n in u]):
                units = rest
        last = [n for u in units for n in u]
        nodes = sorted(nodes, key=lambda n: position[id(n)])
        rows = [layer_of[id(n)] for n in nodes if id(n) in layer_of]
        blocks.append(ResidualBlock(
            id=add.name, op=add.op, block_input=x.name, branch_output=p.name, shortcut=kind,
            shortcut_nodes=tuple(n.name for n in sorted(short_nodes, key=lambda n: position[id(n)])),
            last_producers=tuple(n.name for n in sorted(last, key=lambda n: position[id(n)])),
            nodes=tuple(n.name for n in nodes), flops=sum(r.flops for r in rows), params=sum(r.params for r in rows)))
    return ResidualAnalysis(blocks, skipped, cost.flops)


def _zero_input(graph: gs.Graph, node: gs.Node, index: int, users: dict[int, int]) -> None:
    t = node.inputs[index]
    if not _is_const(t):
        raise ValueError(f"zero_branches: input {index} of {node_label(node)} is not a constant")
    zeros = np.zeros_like(np.asarray(t.values))
    if users.get(id(t), 0) > 1:
        node.inputs[index] = gs.Constant(unique_name(graph, f"{t.name}_zeroed"), zeros)
        users[id(t)] -= 1
    else:
        t.values = zeros


def zero_branches(model: onnx.ModelProto | gs.Graph, block_ids: Iterable[str],
                  input_shapes: Mapping[str, Sequence[int]] | None = None) -> onnx.ModelProto:
    """A copy of ``model`` with the last producers of the blocks ``block_ids`` zeroed.

    ``block_ids`` are Add/Sub node names from :func:`find_residual_blocks`; an unknown id is a
    ``KeyError`` naming the known ones.
    """
    ids = list(dict.fromkeys(block_ids))
    graph = to_graph(model) if isinstance(model, onnx.ModelProto) else model.copy()
    found = find_residual_blocks(graph, input_shapes) if ids else None
    last = {name for i in ids for name in found.block(i).last_producers} if ids else set()
    users: dict[int, int] = {}
    for node in graph.nodes:
        for t in node.inputs:
            if _is_const(t):
                users[id(t)] = users.get(id(t), 0) + 1
    for node in graph.nodes:
        if node.name not in last:
            continue
        if node.op in ("Conv", "ConvTranspose"):
            indices = range(1, len(node.inputs))
        elif node.op == "Gemm":
            indices = range(1, len(node.inputs))
        elif node.op == "BatchNormalization":
            indices = (1, 2)
        elif node.op == "Add":  # an unfused bias after a zeroed MatMul / Gemm / Conv
            indices = [i for i in (0, 1) if _is_const(node.inputs[i])]
        else:  # MatMul: its constant operand
            indices = [i for i in (0, 1) if _is_const(node.inputs[i])]
        for i in indices:
            if node.inputs[i] is not None and node.inputs[i].name:
                _zero_input(graph, node, i, users)
    return to_model(graph)
