"""The 3-D planner's solver: maximise F(d, w, r) subject to cost(d, w, r) <= target.

- d is discrete: one of ``depths`` (the depth fractions the real block choices give); w and r are
  continuous in [w_min, 1] and [r_min, 1] (``w_min = 1`` or ``r_min = 1`` switch a dimension off;
  ``depths = [1.0]`` switches depth off).
- Assumptions: F and cost are non-decreasing in w and in r (the fit is constrained so; counted
  FLOPs and the paper's d * w^2 * r^2 are). Then, for a fixed d, the optimum lies on the boundary
  cost = target (or at w = r = 1 when that is affordable).
- Method, per d: walk the boundary as a function of w. For each w, r(w) is the largest r in
  [r_min, 1] with cost(d, w, r) <= target (``scipy.optimize.brentq`` on the monotone cost);
  w is feasible where cost(d, w, r_min) <= target. g(w) = F(d, w, r(w)) is maximised by a
  1-D bounded search: a grid of ``grid`` points over the feasible w, then
  ``scipy.optimize.minimize_scalar`` (bounded) between the best point's neighbours, so a
  non-concave g still finds its best region. The best d wins; ties go to the larger d.
- No d affordable: ``ValueError`` naming the cheapest achievable cost.

``solve_plan(F, cost, target, depths, w_min, r_min) -> PlanSolution`` (d, w, r, value, cost and
the best point per depth in ``per_depth``).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
from scipy.optimize import brentq, minimize_scalar

Surface = Callable[[float, float, float], float]


@dataclasses.dataclass(frozen=True)
class PlanPoint:
    d: float
    w: float
    r: float
    value: float
    cost: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PlanSolution(PlanPoint):
    per_depth: tuple[PlanPoint, ...] = ()

    def to_dict(self) -> dict:
        out = PlanPoint.to_dict(self)
        out["per_depth"] = [p.to_dict() for p in self.per_depth]
        return out


def _r_of(cost: Surface, d: float, w: float, target: float, r_min: float) -> float | None:
    if cost(d, w, 1.0) <= target:
        return 1.0
    if cost(d, w, r_min) > target:
        return None
    return float(brentq(lambda r: cost(d, w, r) - target, r_min, 1.0, xtol=1e-10))


def _w_max(cost: Surface, d: float, target: float, w_min: float, r_min: float) -> float:
    """The largest w with cost(d, w, r_min) <= target (cost(d, w_min, r_min) <= target holds)."""
    if cost(d, 1.0, r_min) <= target:
        return 1.0
    return float(brentq(lambda w: cost(d, w, r_min) - target, w_min, 1.0, xtol=1e-10))


def _best_at_depth(f: Surface, cost: Surface, d: float, target: float, w_min: float, r_min: float,
                   grid: int) -> PlanPoint:
    hi = _w_max(cost, d, target, w_min, r_min)

    def g(w: float) -> float:
        r = _r_of(cost, d, w, target, r_min)
        return -np.inf if r is None else float(f(d, w, r))

    if hi - w_min <= 1e-12:
        ws = np.array([w_min])
    else:
        ws = np.linspace(w_min, hi, grid)
    vals = np.array([g(w) for w in ws])
    k = int(np.argmax(vals))
    w_best, v_best = float(ws[k]), float(vals[k])
    if len(ws) > 1:
        lo_b, hi_b = float(ws[max(k - 1, 0)]), float(ws[min(k + 1, len(ws) - 1)])
        res = minimize_scalar(lambda w: -g(w), bounds=(lo_b, hi_b), method="bounded", options={"xatol": 1e-9})
        if res.success and -res.fun > v_best:
            w_best, v_best = float(res.x), float(-res.fun)
    r_best = _r_of(cost, d, w_best, target, r_min)
    return PlanPoint(float(d), w_best, float(r_best), v_best, float(cost(d, w_best, r_best)))


def solve_plan(f: Surface, cost: Surface, target: float, depths: Sequence[float], w_min: float = 0.1,
               r_min: float = 0.1, grid: int = 101) -> PlanSolution:
    """Maximise ``f`` over d in ``depths``, w in [w_min, 1], r in [r_min, 1] with cost <= target."""
    if not depths:
        raise ValueError("depths is empty: give at least one depth fraction (1.0 keeps every block)")
    if not (0 < w_min <= 1 and 0 < r_min <= 1):
        raise ValueError(f"w_min and r_min must be in (0, 1]; got {w_min}, {r_min}")
    if not target > 0:
        raise ValueError(f"the target cost must be positive; got {target}")
    cheapest = min(float(cost(d, w_min, r_min)) for d in depths)
    if cheapest > target:
        raise ValueError(f"target cost {target:.6g} is infeasible: the cheapest plan (the smallest depth, "
                         f"w = {w_min}, r = {r_min}) costs {cheapest:.6g}")
    points = tuple(_best_at_depth(f, cost, float(d), target, w_min, r_min, grid)
                   for d in sorted(set(float(x) for x in depths)) if cost(d, w_min, r_min) <= target)
    best = max(points, key=lambda p: (p.value, p.d))
    return PlanSolution(best.d, best.w, best.r, best.value, best.cost, points)
