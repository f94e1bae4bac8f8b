"""From a model to its gates and budget, and from gate scores to a binary choice that meets
the FLOPs target of the *cut* model. Torch-free (the ``l2`` method uses it without torch).

``prepare(model, config)``: canonical form (:func:`smof_onnx.passes.pipeline.canonicalize`; the method
returns this graph, zeroed, and the cut is verified against it), unique node names, channel
analysis, ``count_cost``, gates (:mod:`.gates`) and budget (:mod:`.budget`).

``select(problem, scores, target)``: binarize the scores (:meth:`GateSpace.binarize`), then
- *trim*: while the budget's ratio exceeds the target, drop the unit with the lowest score;
- *restore*: add back the units with the highest scores that still fit;
- *fill* (only under the automatic channel rule, ``multiple=0``): restore again with channel
  steps of at most :data:`FINE_MULTIPLE`, so a family held to multiples of 16 may take back 8
  channels where 16 no longer fit. The rule's 16 is a speed preference, not a contract; a
  ``--channel-multiple`` the user gave is never broken. Latency budgets in ``extra`` still
  bound the fill;
- *check*: cut the zeroed model for real and count it; when the real ratio exceeds the target
  (a pass kept something the budget assumed gone), lower the internal target by the
  difference and trim again (a few rounds at most).
``extra``: further (budget, target) pairs that must hold too, e.g. the predicted latency
(:class:`smof_onnx.learn.latency_budget.LatencyBudget`, anything with ``ratio(effective gates)``); a unit is
trimmed while any budget is over its target and restored only when every budget still fits.
A *unit* is one ring level (outermost kept first when dropping, innermost dropped first when
restoring) or one step of a channel family to its next allowed count (its lowest-scored kept
slots / highest-scored dropped slots; the unit's score is their mean).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from smof_onnx.passes import graph as pgraph
from smof_onnx.passes import pipeline
from smof_onnx.passes.analysis.channels import analyze_channels
from smof_onnx.passes.analysis.flops import ModelCost, count_cost

from ..errors import UnsupportedModelError
from .budget import FlopsBudget, build_budget
from .gates import GateSpace, build_gate_space

__all__ = ["Problem", "prepare", "select", "fit_budget", "cut_ratio", "check_has_flops", "FINE_MULTIPLE"]

# The fill step of the automatic channel rule: families held to multiples of 16 may take 8 more
# channels when a whole 16 no longer fits (VGG at 0.5 stopped at 0.455 of the FLOPs otherwise).
FINE_MULTIPLE = 8


@dataclasses.dataclass
class Problem:
    model: onnx.ModelProto          # canonical form, the graph the method zeroes and returns
    shapes: dict[str, list[int]]    # concrete input shapes (batch 1 where symbolic)
    cost: ModelCost
    analysis: Any
    space: GateSpace
    budget: FlopsBudget


def prepare(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None, *, kernel: bool = True,
            channel: bool = True, multiple: int = 1) -> Problem:
    shapes = pgraph.graph_input_shapes(model, input_shapes, default_dim=1)
    canon = pipeline.canonicalize(pgraph.to_graph(model), shapes).graph
    taken = {n.name for n in canon.nodes if n.name}
    for i, node in enumerate(canon.nodes):
        if not node.name or sum(1 for n in canon.nodes if n.name == node.name) > 1:
            name, k = f"{node.op}_{i}", 0
            while name in taken:
                k += 1
                name = f"{node.op}_{i}_{k}"
            node.name = name
            taken.add(name)
    canonical = pgraph.to_model(canon)
    analysis = analyze_channels(pgraph.to_graph(canonical), shapes) if channel else None
    cost = count_cost(canonical, shapes)
    space = build_gate_space(canonical, analysis, kernel=kernel, channel=channel, multiple=multiple)
    budget = build_budget(canonical, cost, space, analysis)
    return Problem(canonical, shapes, cost, analysis, space, budget)


def check_has_flops(problem: Problem) -> None:
    """Raise :class:`UnsupportedModelError` when the model has no counted FLOPs: a FLOPs target
    means nothing there and no gate can lower it."""
    if problem.cost.flops <= 0:
        raise UnsupportedModelError(
            "nothing to compress: the model has no Conv, ConvTranspose, Gemm or MatMul FLOPs, so there "
            "is no FLOPs target to meet (see `smof-onnx inspect` for what the model holds)")


def cut_ratio(problem: Problem, h: np.ndarray) -> float:
    """FLOPs of the really cut zeroed model over the original's (1 when the original has none)."""
    if problem.cost.flops <= 0:
        return 1.0
    zeroed = problem.space.apply(problem.model, h)
    result = pipeline.cut(pgraph.to_graph(zeroed), problem.shapes)
    return count_cost(pgraph.to_model(result.graph), problem.shapes).flops / problem.cost.flops


@dataclasses.dataclass
class _Unit:
    score: float
    gates: tuple[int, ...]


def _drop_units(space: GateSpace, h: np.ndarray, s: np.ndarray) -> list[_Unit]:
    units = []
    for idx in space.axes.values():
        kept = [i for i in idx if h[i] >= 0.5]  # h is nested: the kept levels are the inner ones
        if kept:
            units.append(_Unit(float(s[kept[0]]), (kept[0],)))
    for fam in space.families:
        idx = np.asarray(fam.gates)
        kept = idx[h[idx] >= 0.5]
        allowed = [a for a in fam.allowed() if a < len(kept)]
        if allowed:
            n = len(kept) - allowed[-1]
            worst = kept[np.argsort(s[kept], kind="stable")[:n]]
            units.append(_Unit(float(np.mean(s[worst])), tuple(int(i) for i in worst)))
    return units


def _restore_units(space: GateSpace, h: np.ndarray, s: np.ndarray, fine: bool = False) -> list[_Unit]:
    units = []
    for idx in space.axes.values():
        dropped = [i for i in idx if h[i] < 0.5]
        if dropped:
            units.append(_Unit(float(s[dropped[-1]]), (dropped[-1],)))
    for fam in space.families:
        idx = np.asarray(fam.gates)
        kept = int((h[idx] >= 0.5).sum())
        dropped = idx[h[idx] < 0.5]
        multiple = min(fam.multiple, FINE_MULTIPLE) if fine else fam.multiple
        allowed = [a for a in fam.allowed(multiple) if a > kept]
        if allowed and len(dropped):
            n = allowed[0] - kept
            best = dropped[np.argsort(-s[dropped], kind="stable")[:n]]
            units.append(_Unit(float(np.mean(s[best])), tuple(int(i) for i in best)))
    return units


def _over(problem: Problem, h: np.ndarray, target: float, extra: Sequence = ()) -> str | None:
    """The first budget over its target (its description), or None when all fit."""
    e = problem.space.effective(h)
    r = problem.budget.ratio(e)
    if r > target + 1e-12:
        return f"the FLOPs target {target:.3f} cannot be reached: with every gate dropped the model keeps {r:.3f} of its FLOPs"
    for budget, goal in extra:
        r = budget.ratio(e)
        if r > goal + 1e-12:
            return (f"the latency target {goal:.3f} cannot be reached: with every gate dropped the model is predicted "
                    f"to take {r:.3f} of its time")
    return None


def _trim(problem: Problem, h: np.ndarray, s: np.ndarray, target: float, extra: Sequence = ()) -> np.ndarray:
    h = h.copy()
    while (why := _over(problem, h, target, extra)) is not None:
        units = _drop_units(problem.space, h, s)
        if not units:
            raise UnsupportedModelError(f"{why} (the rest is frozen or ungated)")
        worst = min(units, key=lambda u: (u.score, u.gates))
        h[list(worst.gates)] = 0.0
    return h


def _restore(problem: Problem, h: np.ndarray, s: np.ndarray, target: float, extra: Sequence = (),
             fine: bool = False) -> np.ndarray:
    h = h.copy()
    while True:
        for unit in sorted(_restore_units(problem.space, h, s, fine), key=lambda u: (-u.score, u.gates)):
            trial = h.copy()
            trial[list(unit.gates)] = 1.0
            if _over(problem, trial, target, extra) is None:
                h = trial
                break
        else:
            return h


def fit_budget(problem: Problem, h: np.ndarray, scores: np.ndarray, target: float,
               extra: Sequence = ()) -> np.ndarray:
    """``h`` made to fit: the lowest-scoring units dropped until the FLOPs (and every ``extra``
    budget) meet their targets, then the highest-scoring dropped units restored while they still do.
    Raises :class:`UnsupportedModelError` when dropping every gate is not enough."""
    return _restore(problem, _trim(problem, h, scores, target, extra), scores, target, extra)


def select(problem: Problem, scores: np.ndarray, target: float, *, threshold: float = 0.5,
           rounds: int = 5, check: bool = True, extra: Sequence = ()) -> tuple[np.ndarray, dict[str, float]]:
    """Binary gates meeting ``target`` for the cut model (and every ``extra`` budget's target);
    returns (h, {"estimated", "cut"}). Raises :class:`UnsupportedModelError` for a model without
    FLOPs (:func:`check_has_flops`) and when dropping every gate is not enough."""
    check_has_flops(problem)
    s = np.asarray(scores, np.float64)
    h = problem.space.effective(problem.space.binarize(s, threshold))
    goal = target
    est = real = float("nan")
    for _ in range(rounds):
        h = fit_budget(problem, h, s, goal, extra)
        if problem.space.multiple == 0:  # the per-family rule is a speed default, not the user's contract
            h = _restore(problem, h, s, goal, extra, fine=True)
        est = float(problem.budget.ratio(problem.space.effective(h)))
        if not check:
            return h, {"estimated": est, "cut": est}
        real = cut_ratio(problem, h)
        if real <= target + 1e-9:
            break
        goal -= (real - est) + 1e-6
    return h, {"estimated": est, "cut": real}
