"""The gate search (design 4): train the gated model under a decreasing budget, score the gates.

Search (``epochs`` passes over the training split), with the weights training all along:
1. *Prior*: a few batches (no weight update) of a random projection ``sum_o <r_o, s_o>``
   (``r`` ~ N(0, 1), seeded): its squared gradient w.r.t. each gate is the output's
   sensitivity to that gate, which the distillation loss (0 at the start) cannot give.
2. *Importance* of gate i: an EMA of ``grad_i^2 / mean_j grad_j^2`` of the loss w.r.t. the gate
   value (the gates are leaf tensors of the forward pass, so this is free with ``backward``);
   a Fisher-style (second-order) estimate of the loss increase when the gate goes. (Its square
   root, the first-order estimate, favoured big units such as rings and measured 1.6 points
   worse on the default model.) The textbook Fisher sums *per-sample* squared gradients; that
   was tried for the channel gates (a per-sample gate matrix in the hooks; rings, which act on
   shared weights, as ``batch * grad^2``) on the bench models at 0.5 FLOPs, 2 + 6 epochs: it
   changed the selection (VGG then keeps both 28x28 convs whole and cuts the 14x14 / 7x7 ones)
   but not the accuracy beyond the seed noise: over five seeds VGG 90.66% against 90.55%,
   ResNet-20 91.32% against 91.32%. So the batch gradient, which costs nothing extra, stays.
3. *Cost* of gate i: with a latency table (``latency``, smof's default), the predicted time on
   the target runtime that dropping it saves (:meth:`.latency_budget.LatencyBudget.costs`); with
   a latency target too, that target ramps down with the FLOPs one. Without a table,
   ``d ratio / d g_i`` of the differentiable budget (:mod:`.budget`) at all gates kept: the
   FLOPs fraction dropping it saves (an inner ring includes the rings outside it), channel
   gates' scaled by ``channel_cost``. The FLOPs target stays the constraint either way.
   At the end of the ramp and of the search the rings' importances are put on the channel
   gates' scale by measuring the loss of dropping each (:mod:`.ring_calibration`; without it
   the selection kept every ring of ResNet-20).
   Dividing by ``cost ** 0.5`` instead was tried (2026-11-23) against the bias towards
   cutting expensive high-resolution layers (on the bench VGG at 0.5, ``importance / cost``
   halves both 28x28 convs to 8 channels). With 4096 images, 1 + 3 epochs, power 0.5 against
   1: ResNet-20 at 0.5 over seeds 0/1/2 91.33/91.21/91.21 vs 91.45/91.31/91.03 (equal means);
   VGG at 0.5 90.39/90.45 vs 89.89/90.56 (seeds 0/1); MobileNetV2 at 0.5 90.38 vs 90.42 (seed
   1), at 0.3 88.66 vs 87.28 (seed 0, one run). No clear gain, and a power below 1 depends on
   a unit's granularity: a ring (one gate of large cost) scores higher than the channels of
   the same layer at equal importance per FLOP, so smof stopped cutting kernels (its choices
   equalled channel-only on all three models at 0.5). So the score stays ``importance / cost``.
4. Every few steps the gates are re-selected greedily by ``importance / cost``
   (:func:`.select.select` without the cut check) for a target that decreases linearly from
   1 to the final target over the first ``ramp`` (40%) of the steps, so the weights adapt while
   channels and rings go, and a dropped gate can come back when its importance grows. (On the
   bench ResNet-20 at 0.5 FLOPs from 4096 images, ramp 0.4 against 0.7: 91.06% / 90.92% with
   2 + 2 epochs, 91.37% / 91.13% with 1 + 3; the rest of the search trains at the final budget.)
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..data import CalibrationData
from ..selection.select import Problem, fit_budget
from . import distributed
from .batches import steps_per_epoch as epoch_steps, train_batches
from .losses import backward_batch, output_kinds
from .masking import Masks
from .ring_calibration import calibrate_rings
from .settings import Progress, TrainSettings

__all__ = ["search", "gate_costs", "SEARCH_SHARE"]

# The ring calibrations together cost at most this share of the search's own work (counted in
# forward samples, a training step about three forward passes of its batch). 0.5 leaves the
# bench models' default runs at the full CALIBRATION_SAMPLES per pass (ResNet-20 at 300 steps of
# 64: about 290 allowed); a 1.4 GFLOPs recogniser with 26 short steps gets one batch per pass.
SEARCH_SHARE = 0.5


def gate_costs(problem: Problem, channel_cost: float = 1.0) -> np.ndarray:
    """``d ratio / d g`` at every gate kept (the differentiable budget's gradient), channel gates'
    scaled by ``channel_cost``: the share of a FLOPs saving that ONNX Runtime turns into speed
    for a channel cut relative to a kernel cut (below 1, rings go first at equal importance)."""
    g = torch.ones(problem.space.size, dtype=torch.float64, requires_grad=True)
    ratio = problem.budget.ratio(g)
    if not isinstance(ratio, torch.Tensor) or not ratio.requires_grad:
        return np.zeros(problem.space.size)
    (grad,) = torch.autograd.grad(ratio, g)
    out = grad.numpy().copy()
    out[len(problem.space.kernel):] *= channel_cost
    return out


def search(problem: Problem, module, data: CalibrationData, teacher: list[torch.Tensor], target: float,
           settings: TrainSettings, teacher_module=None, *, latency=None, latency_target: float | None = None,
           guard=None) -> np.ndarray:
    """Train the gated module under a decreasing budget; returns the per-gate scores.

    With ``latency`` (a :class:`.latency_budget.LatencyBudget`) the gate costs are its predicted
    time savings, not FLOPs; with ``latency_target`` too, the predicted latency ramps down."""
    space = problem.space
    masks = Masks(space, module)
    steps_per_epoch = epoch_steps(len(data), settings)
    steps = settings.search_epochs * steps_per_epoch
    use_latency = latency is not None and latency_target is not None
    cost = latency.costs(space) if latency is not None else gate_costs(problem, settings.channel_cost)
    cost = np.maximum(cost, 1e-9)
    factor = np.ones(space.size)  # ring importances on the channels' scale (:mod:`.ring_calibration`)
    calibrate_at = int(settings.ramp * steps) if settings.calibrate_rings else -1
    # each of the two calibrations may cost SEARCH_SHARE / 2 of the search's work (a training
    # step is about three forward passes of its batch)
    calibration_budget = int(SEARCH_SHARE / 2 * 3 * steps * settings.batch_size)
    module.train()  # only train-mode normalisers (:mod:`.batchnorm`) care
    opt = torch.optim.Adam(list(module.parameters()), lr=settings.lr)
    kinds = output_kinds(tuple(t[:1] for t in teacher))
    batches = train_batches(module, data, settings)  # ``teacher``: its outputs on the first samples
    runner, runtime = distributed.wrap(module), settings.runtime
    scaler = runtime.scaler() if runtime is not None else None

    imp = np.zeros(space.size)
    gen = torch.Generator().manual_seed(settings.seed)
    n_prior = min(settings.prior_batches, steps_per_epoch)
    masks.set(np.ones(space.size), requires_grad=True)
    for _ in range(n_prior):
        _, feeds, _ = next(batches)
        outs = module(*feeds)
        proj = sum((_random_like(o, gen) * o.float()).sum() / (t.float().pow(2).mean().sqrt() + 1e-8)
                   for o, t in zip(outs, teacher))
        proj.backward()
        imp += _normalised(masks.grad) / n_prior
        module.zero_grad(set_to_none=True)
    h = np.ones(space.size)
    bar = Progress(steps, "smof search", settings.progress)
    ratio = 1.0
    for step in range(steps):
        if step == calibrate_at:
            factor = calibrate_rings(space, module, masks, data, teacher_module, imp, h, settings.batch_size,
                                     whole_batches=settings.whole_batches, budget=calibration_budget)
        if step % settings.reselect_every == 0:
            frac = min(1.0, (step + 1) / max(1, settings.ramp * steps))
            tau = 1 - (1 - target) * frac
            extra = [(latency, 1 - (1 - latency_target) * frac)] if use_latency else []
            score = imp * factor / cost
            h = fit_budget(problem, np.ones(space.size), score, tau, extra)
            ratio = float(problem.budget.ratio(space.effective(h)))
        masks.set(h, requires_grad=True)
        opt.zero_grad(set_to_none=True)
        idx, feeds, labels = next(batches)
        loss = backward_batch(module, feeds, labels, teacher_module, gen, kinds, settings,
                              guard.split if guard else 1, runner, runtime, scaler, teacher, idx)
        grad = masks.grad
        if scaler is not None:  # float16 autocast: an overflowed step is skipped, and its gate gradients
            scaler.step(opt)
            scaler.update()
            grad = grad if grad is not None and np.isfinite(grad).all() else None
        else:
            opt.step()
        if grad is not None:
            imp = settings.ema * imp + (1 - settings.ema) * _normalised(grad)
        bar.update(loss=loss, flops=ratio)
        if guard is not None:
            guard.check(1 if settings.whole_batches else len(feeds[0]), step)
    bar.close()
    if settings.calibrate_rings and steps:
        factor = calibrate_rings(space, module, masks, data, teacher_module, imp, h, settings.batch_size,
                                     whole_batches=settings.whole_batches, budget=calibration_budget)
    masks.remove()
    return imp * factor / cost


def _random_like(o: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """N(0, 1) noise shaped like ``o``, drawn on the CPU from ``gen``; under torchrun drawn for the
    global batch and this rank's rows taken (:mod:`.distributed`), so the ranks add up to a plain run."""
    world = distributed.current()
    r = torch.randn((o.shape[0] * world.size, *o.shape[1:]), generator=gen)
    return (r[world.rank::world.size] if world.active else r).to(o.device)


def _normalised(grad: np.ndarray | None) -> np.ndarray:
    if grad is None:
        return 0.0
    sq = grad ** 2
    mean = sq.mean()
    return sq / mean if mean > 0 else sq
