"""Least-squares reconstruction of the layers that read pruned channels (see :mod:`.qr`).

``parallel``: every member is refitted from the first feature pass (original inputs).
``sequential``: members are refitted in topological order of their units; a *wave* is a run
of units none of whose member inputs depends on a layer refitted earlier in the same wave.
Each wave re-collects its members' inputs from the current (partly pruned) model -- cut down
to the nodes those inputs need -- at the same images and positions as the first pass, and
fits them against the original outputs recorded there. Refitting against the original
outputs from the pruned inputs lets every layer absorb the error of the layers before it.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import onnx

from ..features import collect
from .qr_select import least_squares
from .qr_units import member_cols, set_weight

__all__ = ["reconstruct"]


def _ancestors(model: onnx.ModelProto) -> dict[str, set[str]]:
    """tensor name -> names of the nodes it depends on."""
    memo: dict[str, set[str]] = {}
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        acc = {node.name}
        for t in node.input:
            if t in producer:
                acc |= memo.get(t, set())
        for o in node.output:
            memo[o] = acc
    return memo


def _truncated(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    try:
        inputs = [i.name for i in model.graph.input if i.name not in {x.name for x in model.graph.initializer}]
        return onnx.utils.Extractor(model).extract_model(inputs, outputs)
    except Exception:  # noqa: BLE001 -- extraction is an optimisation; the full model gives the same tensors
        return model


def reconstruct(model: onnx.ModelProto, data: Mapping[str, np.ndarray], units, kept, stats, site_ids,
                config) -> tuple[onnx.ModelProto, dict]:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    errs: dict[str, float] = {}
    todo = [(u, k) for u, k in zip(units, kept) if k.size < u.size]
    if config.reconstruct == "parallel":
        for u, k in todo:
            _refit(u, k, lambda m: stats[m.site.node].xtx,
                   lambda m: stats[m.site.node].xtx @ m.site.weight.T, None, config.ridge,
                   lambda site, w: set_weight(out, site, w), errs)
        return out, errs
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    todo.sort(key=lambda uk: min(order[m.site.node] for m in uk[0].members))
    anc = _ancestors(model)
    i = 0
    while i < len(todo):
        wave, touched = [], set()
        while i < len(todo):
            u, k = todo[i]
            if any(anc.get(m.site.input, set()) & touched for m in u.members):
                break
            wave.append((u, k))
            touched |= {m.site.node for m in u.members}
            i += 1
        sites = list({m.site.node: m.site for u, _ in wave for m in u.members}.values())
        sub = _truncated(out, list(dict.fromkeys(s.input for s in sites)))
        targets = {s.node: stats[s.node].output_rows() for s in sites}
        now = collect(sub, data, sites, max_positions=config.max_positions, batch_size=config.batch_size,
                      seed=config.seed, targets=targets, site_ids=[site_ids[s.node] for s in sites],
                      threads=config.threads)
        for u, k in wave:
            _refit(u, k, lambda m: now[m.site.node].xtx, lambda m: now[m.site.node].xty,
                   lambda m: targets[m.site.node], config.ridge, lambda site, w: set_weight(out, site, w), errs)
    return out, errs


def _refit(unit, kept, xtx_of, xty_of, target_of, ridge, set_weight, errs) -> None:
    """Least squares per member; records the unit's mean relative output error on the samples."""
    rel = []
    for j, m in enumerate(unit.members):
        keep_cols, _ = member_cols(unit, j, kept)
        xtx, xty = xtx_of(m), xty_of(m)
        v = least_squares(xtx, xty, keep_cols, ridge)
        w = np.zeros_like(m.site.weight)
        w[:, keep_cols] = v.T
        set_weight(m.site, w)
        # ||X_J V - Y||^2 = V^T C_JJ V - 2 V^T (X^T Y)_J + ||Y||^2
        yy = (float(np.sum(target_of(m).astype(np.float64) ** 2)) if target_of is not None
              else float(np.sum(xtx * (m.site.weight.T @ m.site.weight))))
        fit = float(np.sum(v * (xtx[np.ix_(keep_cols, keep_cols)] @ v)) - 2 * np.sum(v * xty[keep_cols]))
        rel.append(max(0.0, (fit + yy) / yy) if yy > 0 else 0.0)
    errs[unit.name] = round(float(np.mean(rel)), 6) if rel else None
