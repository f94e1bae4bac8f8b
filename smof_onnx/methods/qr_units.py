"""Selection units of QR pruning: which channel slots are chosen together, and by which layers.

A *unit* is one unfrozen channel group of :func:`smof_onnx.passes.analysis.channels.analyze_channels`
(its slots are the channels that go together). Its *members* are the weighted layers that read
it (the analysis's slot consumers): dropping a slot means zeroing that slot's input columns
in every member, after which no graph output depends on the slot, so the cut removes it
together with its producers' filters (conv/gemm filters, bias, BN entries).

A depthwise (or grouped) conv that both reads and produces a slot -- its output channel ``c``
depends only on input channels of the same slot, so the analysis puts them in one slot -- is a
*pass-through*, not a member: dropping the slot drops its channel (filter, bias) with the
rest, and nothing of it is refitted. So a group through the depthwise conv of an inverted
residual block (expand 1x1 -> depthwise kxk -> project 1x1) is one unit whose member is the
project conv; the cut then removes the expand filter, the depthwise channel and the project
conv's input channel together.

A group is not a unit (it is skipped, with the reason recorded) when it is frozen (graph
input/output, an op without a channel rule ...), when a member cannot be collected (a grouped
conv that reads the slot without producing it, a weight that is not an initializer, MatMul
...), or when a slot has no weighted consumer other than pass-throughs. With
``residual="off"`` a group whose slots have several producers (channels summed by a residual
Add) is skipped too.

Also here: the weight edits shared by selection and reconstruction (:func:`member_cols`,
:func:`set_weight`, :func:`masked`).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from smof_onnx.passes.analysis.channels import ChannelAnalysis

from onnx import numpy_helper

from ..errors import SmofError
from ..features import LayerSite, SiteRefused, layer_site

__all__ = ["Member", "Unit", "find_units", "member_cols", "set_weight", "masked"]


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
    passthrough: list[str] = dataclasses.field(default_factory=list)  # depthwise convs inside the unit

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


def _grouped(node: onnx.NodeProto) -> bool:
    return node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)


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
        through: set[str] = set()
        if why is None:
            for i, slot in enumerate(slots):
                own = {p[0] for p in slot.producers if _grouped(nodes[p[0]])}
                readers = [c for c in slot.consumers if c[0] not in own]
                through |= {c[0] for c in slot.consumers if c[0] in own}
                if not readers:
                    why = "a channel has no weighted consumer other than a depthwise conv it passes through"
                    break
                for node, _op, index in readers:
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
        units.append(Unit(group.id, [s.id for s in slots], list(members.values()), is_residual, producers,
                          passthrough=sorted(through)))
    return units, skipped


def member_cols(unit: Unit, member_idx: int, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(kept, dropped) patch columns of member ``member_idx`` when ``unit`` keeps slots ``kept``."""
    m = unit.members[member_idx]
    keep_mask = np.zeros(unit.size, bool)
    keep_mask[kept] = True
    kc = [m.cols[i] for i in range(unit.size) if keep_mask[i]]
    dc = [m.cols[i] for i in range(unit.size) if not keep_mask[i]]
    cat = lambda xs: np.sort(np.concatenate(xs)) if xs else np.zeros(0, np.int64)  # noqa: E731
    return cat(kc), cat(dc)


def set_weight(model: onnx.ModelProto, site: LayerSite, w: np.ndarray) -> None:
    """Write ``w`` (``[Cout, D]``, the site's orientation) into the site's weight initializer."""
    for i, init in enumerate(model.graph.initializer):
        if init.name == site.weight_name:
            shape = tuple(init.dims)
            arr = (w.T if site.transposed_weight else w).reshape(shape).astype(np.float32)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
            return
    raise SmofError(f"qr: weight '{site.weight_name}' of {site.node} vanished")


def masked(model: onnx.ModelProto, units: list[Unit], kept: list[np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` with every dropped slot's columns zeroed in every member."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for u, k in zip(units, kept):
        for j, m in enumerate(u.members):
            _, drop = member_cols(u, j, k)
            if drop.size:
                w = m.site.weight.copy()
                w[:, drop] = 0
                set_weight(out, m.site, w)
    return out
