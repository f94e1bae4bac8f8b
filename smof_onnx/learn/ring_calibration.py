"""Kernel-ring importances put on the channel gates' scale by measuring what dropping them costs.

The search's importance of a gate (:mod:`.search`) is an EMA of its normalised squared batch
gradient: a second-order estimate of the loss increase when the gate goes. It ranks the
channels of a family well, but it does not put a kernel ring (one gate acting on a whole
layer's border weights) and a channel step on one scale, so the selection could keep every ring
although rings were the cheaper cut per FLOP (measurements: ``docs/experiments.md``).

:func:`calibrate_rings`: on a fixed set of unmixed training samples, with the module in the
mode the search trains it in, measure the distillation loss with the current selection ``h``
and with one unit toggled: per kernel axis its outermost kept ring level (or, when the axis
lost every level, its innermost dropped one), per channel family its next step down. Channel
steps give ``k = median(measured / importance)``; each axis's gates get the factor
``max(measured, 0) / (k * importance of the toggled level)``, so a ring's score is its measured
loss increase in the channel gates' units. Buffers (BN running statistics) are restored.
Costs ``(axes + families + 1)`` forward passes over ``samples`` inputs; with a ``budget`` of
forward samples, fewer samples per pass (never fewer than one batch), so on a large model with a
short schedule the calibration stays a fraction of the search (:data:`SEARCH_SHARE` in
:mod:`.search`) instead of outlasting it (a 1.4 GFLOPs text recogniser: 68 passes over 204
lines, about 20 minutes, against 26 training steps).
"""
from __future__ import annotations

import numpy as np
import torch

from ..selection.gates import GateSpace
from .losses import distill_loss, output_kinds

__all__ = ["calibrate_rings", "step_down", "CALIBRATION_SAMPLES"]

CALIBRATION_SAMPLES = 256


def step_down(fam, h: np.ndarray, score: np.ndarray) -> np.ndarray | None:
    """The gates of channel family ``fam`` that its next allowed count below the one ``h`` keeps
    drops, lowest ``score`` first; None when no smaller count is allowed."""
    fidx = np.asarray(fam.gates)
    kept = fidx[h[fidx] >= 0.5]
    allowed = [a for a in fam.allowed() if a < len(kept)]
    if not allowed:
        return None
    return kept[np.argsort(score[kept], kind="stable")[:len(kept) - allowed[-1]]]


def calibrate_rings(space: GateSpace, module, masks, data, teacher_module, imp: np.ndarray, h: np.ndarray,
                    batch: int, samples: int = CALIBRATION_SAMPLES, whole_batches: bool = False,
                    budget: int | None = None) -> np.ndarray:
    """Per-gate factors for ``imp`` (1 for channel gates; see the module docstring). ``masks``
    (a :class:`.masking.Masks` on ``module``) is left holding ``h``. ``whole_batches``: the
    module runs only batches of exactly ``batch`` samples. ``teacher_module``: the original model
    (its outputs are the distillation targets); None: no calibration (factors 1). ``budget``:
    at most this many forward samples in all (at least one batch per pass)."""
    factor = np.ones(space.size)
    batch = max(1, int(batch))
    n = min(samples, len(data))
    if budget is not None:
        passes = 1 + len(space.axes) + len(space.families)
        n = min(n, max(batch, int(budget) // passes))
    if whole_batches:
        n = max(batch, n // batch * batch)
    if teacher_module is None or not space.axes or not space.families or n > len(data):
        return factor  # nothing to put on a common scale, or too few samples for one batch
    idx = np.arange(n)
    param = next(iter(module.parameters()), None)
    device = None if param is None else param.device
    parts = []
    with torch.no_grad():
        for i in range(0, n, batch):
            part = idx[i:i + batch]
            feeds = [torch.from_numpy(np.ascontiguousarray(data.inputs[name][part])).to(device)
                     for name in module.input_names]
            parts.append((feeds, [t.detach().float() for t in teacher_module(*feeds)]))
    kinds = output_kinds(tuple(parts[0][1]))
    buffers = {k: b.clone() for k, b in module.named_buffers()}

    def loss_of(g: np.ndarray) -> float:
        masks.set(g)
        total = 0.0
        with torch.no_grad():
            for feeds, target in parts:
                total += float(distill_loss(module(*feeds), target, kinds)) * len(feeds[0])
        return total / n

    try:
        base = loss_of(h)
        ratios = []
        for fam in space.families:
            worst = step_down(fam, h, imp)
            if worst is None:
                continue
            g = h.copy()
            g[worst] = 0.0
            est = float(imp[worst].sum())
            if est > 0:
                ratios.append((loss_of(g) - base) / est)
        ratios = [r for r in ratios if r > 0]
        if not ratios:
            return factor
        k = float(np.median(ratios))
        for gates in space.axes.values():
            kept = [i for i in gates if h[i] >= 0.5]
            g = h.copy()
            if kept:
                unit = kept[0]
                g[unit] = 0.0
                delta = loss_of(g) - base
            else:
                unit = gates[-1]
                g[unit] = 1.0
                delta = base - loss_of(g)
            factor[list(gates)] = max(delta, 0.0) / (k * max(float(imp[unit]), 1e-12))
    finally:
        with torch.no_grad():
            for name, b in module.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
        masks.set(h)
    return factor
