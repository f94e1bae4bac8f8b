"""Remove every removable channel slot (design 3.2, the dead-channel cut).

Rules: :func:`smof_onnx.passes.analysis.channels.analyze_channels` finds the slots whose
every atom is zero or unused and that nothing froze; this pass removes them all at
once with the drop half of each op's rule: producer filters + bias (Conv,
ConvTranspose, Gemm, MatMul), BN / IN parameters, PRelu slopes and per-channel
constant operands of Add / Sub / Mul / Div, consumer input slices (Conv weight axis 1;
grouped and depthwise convs lose whole groups and ``group`` shrinks; Gemm / MatMul
feature rows / columns, Flatten blocks included), Split sizes, Slice starts / ends,
Reshape target shapes and Resize sizes. Concat needs no change.

Maths: for removed atoms R (all zero or unused), every surviving live channel keeps
its value: a live filter reads a removed channel only if that channel is 0 (so its
weight slice contributes 0) and a coupled op's output shares its inputs' slot.

A tensor never loses all of its channels: when every slot of a tensor is removable,
the slot of its channel 0 stays (an all-zero residual branch is the job of
``drop_zero_branches``). Graph inputs and outputs never change (they are frozen).

Constant channels (:mod:`smof_onnx.passes.analysis.constants`): a removable slot may hold
channels that are a non-zero constant v instead of 0. Before the drops, every weighted
reader of such a channel folds its contribution into its bias (the ``fold`` half of the
rule: 1x1 / unpadded Conv into B, Gemm into C, MatMul through a new ``Add`` after it);
then removing the channel removes exactly that term. The analysis keeps a slot whose
constant a live reader cannot fold (a padded Conv, a ConvTranspose, a broadcast read),
and this pass lists it under ``constants_kept`` with the value, the op that made it and the reader.

stats: ``removed`` [{tensor, before, after}], ``slots_removed``, ``frozen`` [{where, reason}],
``folded`` [{node, added}] (Add nodes inserted after a MatMul), ``constants_kept`` [{where, reason}]
(not freezes: ``where`` is the reader that cannot fold the constant).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from .analysis.channels import ChannelAnalysis, analyze_channels
from .analysis.rules import RULES
from .base import Pass, PassError, PassResult
from .graph import opset_version, unique_name


class _CutCtx:
    """What a rule's ``drop`` sees (see :mod:`smof_onnx.passes.analysis.rulebase`)."""

    def __init__(self, graph: gs.Graph, analysis: ChannelAnalysis, removed: np.ndarray, pass_: Pass):
        self.graph, self.a, self.atoms_removed, self.pass_ = graph, analysis, removed, pass_
        self.opset = opset_version(graph)
        self.pending: list[tuple[gs.Node, np.ndarray]] = []
        self.folds: list[dict[str, str]] = []

    def removed(self, tensor: gs.Tensor) -> np.ndarray | None:
        sp = self.a.spaces.get(tensor.name) if not isinstance(tensor, gs.Constant) else None
        if sp is None:
            return None
        mask = self.atoms_removed[sp.base:sp.base + sp.size]
        return mask.copy() if mask.any() else None

    def data(self, node: gs.Node) -> Any:
        return self.a.builder.data.get(id(node))

    def folded(self, tensor: gs.Tensor) -> np.ndarray | None:
        """float64 [C]: the value of each removed non-zero constant channel, 0 elsewhere (None: none)."""
        sp = self.a.spaces.get(tensor.name) if not isinstance(tensor, gs.Constant) else None
        if sp is None or self.a.constant is None:
            return None
        v = self.a.constant[sp.base:sp.base + sp.size]
        mask = self.atoms_removed[sp.base:sp.base + sp.size] & np.isfinite(v) & (v != 0)
        return np.where(mask, v, 0.0) if mask.any() else None

    def add_after(self, node: gs.Node, values: np.ndarray) -> None:
        """After every drop: ``node``'s output y becomes ``Add(y', values)`` (y keeps its name)."""
        self.pending.append((node, values))

    def finish(self) -> None:
        for node, values in self.pending:
            y = node.outputs[0]
            mid = gs.Variable(unique_name(self.graph, f"{y.name}_before_fold"), dtype=y.dtype)
            node.outputs[0] = mid
            const = gs.Constant(unique_name(self.graph, f"{node.name or node.op}_folded"),
                                np.ascontiguousarray(values))
            add = gs.Node("Add", unique_name(self.graph, f"{node.name or node.op}_fold"), inputs=[mid, const],
                          outputs=[y])
            self.graph.nodes.insert(self.graph.nodes.index(node) + 1, add)
            self.folds.append({"node": node.name, "added": add.name})
        self.pending = []

    def set_input(self, node: gs.Node, index: int, values: np.ndarray) -> None:
        """Replace constant input ``index``; a constant read elsewhere too is cloned first."""
        old = node.inputs[index] if index < len(node.inputs) else None
        dtype = np.asarray(old.values).dtype if isinstance(old, gs.Constant) else np.asarray(values).dtype
        values = np.ascontiguousarray(np.asarray(values, dtype=dtype))
        if isinstance(old, gs.Constant) and len(old.outputs) == 1:
            old.values = values
            return
        base = old.name if old is not None and old.name else f"{node.name or node.op}_in{index}"
        new = gs.Constant(unique_name(self.graph, base), values)
        while len(node.inputs) <= index:
            node.inputs.append(gs.Variable.empty())
        node.inputs[index] = new

    def fail(self, message: str, node: gs.Node) -> PassError:
        return self.pass_.fail(message, node)


@dataclasses.dataclass(frozen=True)
class CutDeadChannels(Pass):
    """See the module docstring."""

    input_shapes: Mapping[str, Sequence[int]] | None = None
    name = "cut_dead_channels"

    def call(self, graph: gs.Graph) -> PassResult:
        a = analyze_channels(graph, self.input_shapes)
        removed = self._removed_atoms(a)
        frozen = [f.to_dict() for f in a.frozen]
        refused = self._constants_kept(a)
        if not removed.any():
            return PassResult(graph, False, {"removed": [], "slots_removed": 0, "frozen": frozen, "folded": [],
                                             "constants_kept": refused})
        ctx = _CutCtx(graph, a, removed, self)
        touched = {sp.tensor for sp in a.spaces.values() if removed[sp.base:sp.base + sp.size].any()}
        for node in list(graph.nodes):
            if any(t.name in touched for t in list(node.inputs) + list(node.outputs)):
                rule = RULES.get(node.op)
                if rule is None:
                    raise self.fail("channels removed around an op without a rule", node)
                rule.fold(node, ctx)
                rule.drop(node, ctx)
        ctx.finish()
        tensors = graph.tensors()
        report = []
        for name in sorted(touched, key=lambda n: a.spaces[n].base):
            sp = a.spaces[name]
            after = int(sp.size - removed[sp.base:sp.base + sp.size].sum())
            report.append({"tensor": name, "before": sp.size, "after": after})
            t = tensors.get(name)
            if t is not None and t.shape is not None and len(t.shape) == sp.rank:
                shape = list(t.shape)
                shape[sp.axis] = after
                t.shape = shape
        n_slots = int(np.unique(a.label[removed]).size)
        return PassResult(graph, True, {"removed": report, "slots_removed": n_slots, "frozen": frozen,
                                        "folded": ctx.folds, "constants_kept": refused})

    @staticmethod
    def _constants_kept(a: ChannelAnalysis) -> list[dict[str, str]]:
        """Slots kept only because a reader cannot fold one of their constants, with the reason."""
        blocked = a._facts.get("blocked", {})
        if not blocked:
            return []
        label = a.label
        out, seen = [], set()
        for atom, (where, reason) in blocked.items():
            s = int(label[atom])
            if s in seen or a.slot_removable[s]:
                continue
            seen.add(s)
            out.append({"where": where, "reason": reason})
        return out

    @staticmethod
    def _removed_atoms(a: ChannelAnalysis) -> np.ndarray:
        """Atoms of removable slots, minus one slot per tensor that would otherwise be emptied."""
        removable = a.slot_removable.copy()
        for sp in a.spaces.values():
            labs = a.label[sp.base:sp.base + sp.size]
            if sp.size and removable[labs].all():
                removable[labs[0]] = False
        return removable[a.label] if a.label.size else np.zeros(0, bool)


def cut_dead_channels(graph: gs.Graph, input_shapes: Mapping[str, Sequence[int]] | None = None) -> PassResult:
    return CutDeadChannels(input_shapes)(graph)
