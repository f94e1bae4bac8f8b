"""Selection units of QR pruning: which channel slots are chosen together, and by which layers.

A *unit* is one unfrozen channel group of :func:`smof_onnx.passes.analysis.channels.analyze_channels`
(its slots are the channels that go together). Its *members* are the weighted layers that read
it (the analysis's slot consumers): dropping a slot means zeroing that slot's input columns
in every member, after which no graph output depends on the slot, so the cut removes it
together with its producers' filters (conv/gemm filters, bias, BN entries).

A group is not a unit (it is skipped, with the reason recorded) when it is frozen (graph
input/output, an op without a channel rule ...), when a member cannot be collected (grouped
or depthwise conv, a weight that is not an initializer, MatMul ...), or when a slot has no
weighted consumer at all. With ``residual="off"`` a group whose slots have several producers
(channels summed by a residual Add) is skipped too.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from smof_onnx.passes.analysis.channels import ChannelAnalysis

from ..features import LayerSite, SiteRefused, layer_site

__all__ = ["Member", "Unit", "find_units"]


@dataclasses.dataclass
class Member:
    site: LayerSite
    cols: list[np.ndarray]          # per unit slot: the patch columns of ``site`` that read it


@dataclasses.dataclass
class Unit:
    group: int
    slots: list[int]                # analysis slot ids, in unit order
    members: list[Member]
    residual: bool                  # slots summed from several producers (a residual stream)
    producers: list[str]
    min_keep: int = 1

    @property
    def size(self) -> int:
        return len(self.slots)

    @property
    def name(self) -> str:
        return "+".join(m.site.node for m in self.members)


def _cols(site: LayerSite, index) -> np.ndarray:
    if site.op == "Conv":
        c = int(index)
        return np.arange(c * site.taps, (c + 1) * site.taps)
    start, stop = (index, index + 1) if isinstance(index, int) else index
    return np.arange(int(start), int(stop))


def find_units(model: onnx.ModelProto, analysis: ChannelAnalysis, residual: bool
               ) -> tuple[list[Unit], list[dict]]:
    """(units, skipped groups as ``{"group", "tensors", "reason"}``)."""
    nodes = {n.name: n for n in model.graph.node}
    sites: dict[str, LayerSite | str] = {}
    units, skipped = [], []

    def site_of(name: str) -> LayerSite | str:
        if name not in sites:
            try:
                sites[name] = layer_site(model, nodes[name])
            except SiteRefused as exc:
                sites[name] = str(exc)
        return sites[name]

    for group in analysis.groups:
        slots = [analysis.slots[s] for s in group.slots]
        why = None
        if group.frozen:
            fr = group.frozen_by[0]
            why = f"frozen: {getattr(fr, 'where', fr)}: {getattr(fr, 'reason', '')}"
        elif not slots or any(not s.consumers for s in slots):
            why = "a channel has no weighted consumer"
        is_residual = any(len({p[0] for p in s.producers}) > 1 for s in slots)
        if why is None and is_residual and not residual:
            why = "residual stream (several producers summed); residual handling is off"
        members: dict[str, Member] = {}
        if why is None:
            for i, slot in enumerate(slots):
                for node, _op, index in slot.consumers:
                    site = site_of(node)
                    if isinstance(site, str):
                        why = site
                        break
                    m = members.setdefault(node, Member(site, [np.zeros(0, np.int64)] * len(slots)))
                    m.cols[i] = np.concatenate([m.cols[i], _cols(site, index)])
                if why:
                    break
        if why is None and any(m.site.input not in analysis.spaces for m in members.values()):
            why = "a consumer's input has no channel space"
        if why is not None:
            skipped.append({"group": group.id, "tensors": group.tensors[:3], "reason": why})
            continue
        producers = sorted({p[0] for s in slots for p in s.producers})
        units.append(Unit(group.id, [s.id for s in slots], list(members.values()), is_residual, producers))
    return units, skipped
