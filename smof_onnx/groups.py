"""Rows of ``smof-onnx inspect`` for the channel groups of an analysis, each with why it cannot be cut.

A channel group (:class:`smof_onnx.passes.analysis.channels.ChannelGroup`) is reported in one
of three states:

- ``frozen``: some atom is frozen; the reason joins the group's ``frozen_by`` entries
  (``Frozen(where, reason)``: the node or graph boundary and why) as ``"where: reason"``.
- ``gateable``: not frozen, and zeroing the producers' filters (weights, bias, BN scale and
  shift) of every slot would make the slot removable
  (``Slot.zero_if_producers_zeroed``): a method can cut it.
- neither (``blocked``): not frozen, yet zeroing the producers leaves a slot non-zero and used.
  The reason is the analysis's own (``Slot.kept_because`` of the first such slot): no
  producer to zero, a constant that a reader cannot fold (a padded conv at the borders), an
  average of a constant (not folded: float32 rounding), or the tensor whose channel still
  depends on the input with the producers zeroed -- what the analysis itself decided on, not
  a second reading of the graph.
"""
from __future__ import annotations

from typing import Any

from smof_onnx.passes.analysis.channels import ChannelAnalysis

__all__ = ["describe_groups"]

_MEMBERS_SHOWN = 50


def describe_groups(analysis: ChannelAnalysis) -> list[dict[str, Any]]:
    """JSON rows ``{id, size, tensors, members, frozen, gateable, reason}`` for every group.

    ``size``: the number of slots (channels that go together); ``reason``: None for a gateable
    group, else why not.
    """
    rows = []
    for g in analysis.groups:
        slots = [analysis.slots[s] for s in g.slots]
        gateable = not g.frozen and bool(slots) and all(s.zero_if_producers_zeroed or s.removable for s in slots)
        if g.frozen:
            reason = "; ".join(f"{fr.where}: {fr.reason}" for fr in g.frozen_by)
        elif gateable:
            reason = None
        else:
            reason = next((s.kept_because for s in slots if s.kept_because), None) or (
                "zeroing the producers' filters does not make these channels zero or unused")
        rows.append({"id": str(g.id), "size": len(g.slots), "frozen": g.frozen, "gateable": gateable,
                     "reason": reason, "tensors": g.tensors[:_MEMBERS_SHOWN],
                     "members": g.tensors[:_MEMBERS_SHOWN]})
    return rows
