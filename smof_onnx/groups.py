"""Rows of ``smof-onnx inspect`` for the channel groups of an analysis, each with why it cannot be cut.

A channel group (:class:`smof_onnx.passes.analysis.channels.ChannelGroup`) is reported in one
of three states:

- ``frozen``: some atom is frozen; the reason joins the group's ``frozen_by`` entries
  (``Frozen(where, reason)``: the node or graph boundary and why) as ``"where: reason"``.
- ``gateable``: not frozen, and zeroing the producers' filters (weights, bias, BN scale and
  shift) of every slot would make the slot removable
  (``Slot.zero_if_producers_zeroed``): a method can cut it.
- neither (``blocked``): not frozen, yet zeroing the producers leaves a slot non-zero and used.
  The reason names the first node (in topological order) whose output channels stay non-zero
  although every input channel of the same slot is zero under that hypothesis -- e.g. a
  scalar ``Add`` of a learnable offset after an activation makes the channel a non-zero
  constant -- or says that the slot has no weighted producer to zero. The witness is found by
  re-running the analysis's forward zero propagation with the producers hypothetically zeroed
  (:func:`smof_onnx.passes.analysis.facts.forward_zero`), so it is what the analysis itself sees.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from smof_onnx.passes.analysis.channels import ChannelAnalysis, build
from smof_onnx.passes.analysis.facts import forward_zero
from smof_onnx.passes.analysis.rules import RULES

__all__ = ["describe_groups", "blocked_reasons"]

_MEMBERS_SHOWN = 50


def describe_groups(analysis: ChannelAnalysis, graph=None,
                    input_shapes: Mapping[str, Sequence[int]] | None = None) -> list[dict[str, Any]]:
    """JSON rows ``{id, size, tensors, members, frozen, gateable, reason}`` for every group.

    ``size``: the number of slots (channels that go together); ``reason``: None for a gateable
    group, else why not. ``graph`` (the analysed gs.Graph) lets blocked groups name the node that
    blocks them; without it they get a generic reason.
    """
    blocked = blocked_reasons(analysis, graph, input_shapes) if graph is not None else {}
    rows = []
    for g in analysis.groups:
        slots = [analysis.slots[s] for s in g.slots]
        gateable = not g.frozen and bool(slots) and all(s.zero_if_producers_zeroed or s.removable for s in slots)
        if g.frozen:
            reason = "; ".join(f"{fr.where}: {fr.reason}" for fr in g.frozen_by)
        elif gateable:
            reason = None
        else:
            reason = next((blocked[s.id] for s in slots if s.id in blocked), None) or (
                "zeroing the producers' filters does not make these channels zero or unused")
        rows.append({"id": str(g.id), "size": len(g.slots), "frozen": g.frozen, "gateable": gateable,
                     "reason": reason, "tensors": g.tensors[:_MEMBERS_SHOWN],
                     "members": g.tensors[:_MEMBERS_SHOWN]})
    return rows


def blocked_reasons(analysis: ChannelAnalysis, graph, input_shapes=None) -> dict[int, str]:
    """slot id -> why zeroing its producers does not free it, for unfrozen non-gateable slots."""
    slots = [s for s in analysis.slots if not s.frozen_by and not s.zero_if_producers_zeroed and not s.removable]
    if not slots:
        return {}
    b, nodes = build(graph, input_shapes)
    hyp = np.zeros(b.n_atoms, bool)
    for ids in b.zeroable:
        hyp[ids] = True
    zero_h = forward_zero(nodes, b, RULES, hyp)
    label = analysis.label
    if label.size != b.n_atoms:  # not the graph that was analysed
        return {}
    out: dict[int, str] = {}
    for slot in slots:
        if not slot.producers:
            out[slot.id] = "no producer with weights to zero (the channels come from an input or a constant)"
            continue
        producers = ", ".join(sorted({p[0] for p in slot.producers})[:3])
        out[slot.id] = (f"zeroing the producers ({producers}) leaves the channels non-zero"
                        + _witness(nodes, b, label, zero_h, slot.id))
    return out


def _witness(nodes, b, label: np.ndarray, zero_h: np.ndarray, slot: int) -> str:
    """" after 'node' (Op): ..." for the first node that turns zero channels of ``slot`` non-zero."""
    def atoms(tensor) -> np.ndarray | None:
        sp = b.space(tensor)
        if sp is None:
            return None
        ids = sp.ids
        return ids[label[ids] == slot]

    producers = {p[0] for p in b.producers}
    for node in nodes:
        if node.name in producers:
            continue
        ins = [a for a in (atoms(t) for t in node.inputs if t is not None) if a is not None and a.size]
        outs = [a for a in (atoms(t) for t in node.outputs) if a is not None and a.size]
        if not ins or not outs:
            continue
        if all(zero_h[a].all() for a in ins) and not all(zero_h[a].all() for a in outs):
            return (f" after '{node.name}' ({node.op}): it adds an input-independent (constant) value to "
                    "zeroed channels, and constant channels are not removed")
    return ""
