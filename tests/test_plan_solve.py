"""plan_solve: the solver finds analytically known optima, continuous and with discrete d.

F(d, w, r) = -a/d - b/w - c/r (increasing in each), cost = d w^2 r^2. For a fixed d the optimum on
w r = s, s = sqrt(T / d), is w* = sqrt(b s / c), r* = sqrt(c s / b) (Lagrange), value
-a/d - 2 sqrt(b c / s), unless w* or r* leaves (0, 1].
"""
from __future__ import annotations

import math

import pytest

from smof_onnx.selection.plan_solve import solve_plan


def surface(a, b, c):
    return lambda d, w, r: -a / d - b / w - c / r


def paper_cost(d, w, r):
    return d * w * w * r * r


def test_continuous_optimum_on_the_boundary():
    b, c, t = 0.2, 0.1, 0.2
    s = math.sqrt(t)
    sol = solve_plan(surface(0.0, b, c), paper_cost, t, [1.0], w_min=0.1, r_min=0.1)
    assert sol.w == pytest.approx(math.sqrt(b * s / c), abs=1e-5)
    assert sol.r == pytest.approx(math.sqrt(c * s / b), abs=1e-5)
    assert sol.cost == pytest.approx(t, rel=1e-6)


def test_width_clipped_at_one_gives_the_corner():
    sol = solve_plan(surface(0.0, 0.2, 0.1), paper_cost, 0.3, [1.0], w_min=0.1, r_min=0.1)
    assert sol.w == pytest.approx(1.0, abs=1e-6) and sol.r == pytest.approx(math.sqrt(0.3), abs=1e-6)


def test_discrete_depth_picks_the_analytic_best():
    a, b, t, depths = 0.05, 0.2, 0.3, [0.25, 0.5, 0.75, 1.0]
    values = {d: -a / d - 2 * b / (t / d) ** 0.25 for d in depths}  # b = c: w* = r* = (T/d)^(1/4)
    best = max(values, key=values.get)
    assert best == 0.5  # the problem is built so that neither end wins
    sol = solve_plan(surface(a, b, b), paper_cost, t, depths, w_min=0.2, r_min=0.2)
    assert sol.d == best
    assert sol.w == pytest.approx((t / best) ** 0.25, abs=1e-5)
    assert sol.r == pytest.approx((t / best) ** 0.25, abs=1e-5)
    assert sol.value == pytest.approx(values[best], abs=1e-8)
    assert len(sol.per_depth) == 4


def test_affordable_full_model_and_switched_off_dimensions():
    sol = solve_plan(surface(0.1, 0.1, 0.1), paper_cost, 1.0, [0.5, 1.0])
    assert (sol.d, sol.w, sol.r) == (1.0, 1.0, 1.0)
    sol = solve_plan(surface(0.0, 0.2, 0.1), paper_cost, 0.25, [1.0], w_min=1.0, r_min=0.1)  # width off
    assert sol.w == 1.0 and sol.r == pytest.approx(0.5, abs=1e-6)


def test_infeasible_target_names_the_cheapest_cost():
    with pytest.raises(ValueError, match=r"infeasible.*costs 0\.0004\b"):
        solve_plan(surface(0.1, 0.1, 0.1), paper_cost, 1e-4, [0.25, 1.0], w_min=0.2, r_min=0.2)
    with pytest.raises(ValueError, match="depths is empty"):
        solve_plan(surface(0.1, 0.1, 0.1), paper_cost, 0.5, [])
