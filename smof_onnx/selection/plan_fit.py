"""The 3-D planner's accuracy model: quality as a monotone polynomial of depth, width, resolution.

    F(d, w, r) = sum over (i, j, k) with i + j + k <= degree of  lambda_ijk * d^i * w^j * r^k

d, w, r are fractions of the original model in (0, 1]. Choices (the paper's public text fixes
none of them):
- Basis: monomials of *total* degree <= ``degree`` (default 2: 1, d, w, r, d^2, w^2, r^2, dw, dr,
  wr, i.e. 10 coefficients). This is the reduced basis: the paper's full tensor
  (i, j, k <= 2 each, 27 coefficients) constrained to low rank is replaced by dropping the
  high-order cross terms, so a planner with ~12-20 samples can fit it. It needs at least as many
  samples as coefficients (C(degree + 3, 3) with all three axes; ``axes`` drops the others); fewer raise a ``ValueError`` saying how many.
- Objective: least squares on the samples plus ridge ``alpha * n * ||lambda||^2`` on every
  coefficient but the constant (so a flat surface is preferred where samples disagree).
- Monotonicity (more depth, width or resolution never hurts): dF/dd, dF/dw, dF/dr >= 0 at every
  point of a ``grid_points``^3 grid over the box [lo, 1]^3 (lo per axis: the smallest sampled
  value unless ``box`` is given), as linear inequality constraints on lambda. For degree <= 2
  the derivatives are affine in (d, w, r), so holding at the box corners (always on the grid)
  makes them hold everywhere in the box; for higher degrees the grid is an approximation.
- Solver: ``scipy.optimize.minimize`` with SLSQP on the convex quadratic objective (analytic
  gradient), started from the unconstrained ridge solution.

``fit_quality(samples)`` returns a :class:`QualityFit`: exponents, coefficients, ``rms``
residual on the samples, the box, and ``__call__(d, w, r)`` (numpy broadcasting).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Sequence

import numpy as np
from scipy.optimize import minimize


def exponents(degree: int, axes: Sequence[int] = (0, 1, 2)) -> tuple[tuple[int, int, int], ...]:
    """(i, j, k) with i + j + k <= degree and 0 on every axis not in ``axes``, constant first,
    then by total degree."""
    out = [e for e in itertools.product(range(degree + 1), repeat=3)
           if sum(e) <= degree and all(e[a] == 0 for a in range(3) if a not in axes)]
    return tuple(sorted(out, key=lambda e: (sum(e), [-x for x in e])))


def _design(exps, d, w, r) -> np.ndarray:
    return np.stack([d ** i * w ** j * r ** k for i, j, k in exps], axis=-1)


def _derivative(exps, axis: int, pts: np.ndarray) -> np.ndarray:
    """Rows: d F / d(axis) at each point, as a linear map of the coefficients."""
    cols = []
    for e in exps:
        if e[axis] == 0:
            cols.append(np.zeros(len(pts)))
            continue
        lowered = list(e)
        lowered[axis] -= 1
        cols.append(e[axis] * np.prod([pts[:, a] ** lowered[a] for a in range(3)], axis=0))
    return np.stack(cols, axis=1)


@dataclasses.dataclass(frozen=True)
class QualityFit:
    exponents: tuple[tuple[int, int, int], ...]
    coefficients: np.ndarray
    rms: float
    box: tuple[tuple[float, float], ...]
    alpha: float

    def __call__(self, d, w, r):
        d, w, r = np.broadcast_arrays(np.asarray(d, float), np.asarray(w, float), np.asarray(r, float))
        return _design(self.exponents, d, w, r) @ self.coefficients

    def to_dict(self) -> dict:
        return {"basis": [f"d^{i} w^{j} r^{k}" for i, j, k in self.exponents],
                "coefficients": [float(c) for c in self.coefficients], "rms": self.rms,
                "box": [list(b) for b in self.box], "alpha": self.alpha}


def fit_quality(samples: Sequence[Sequence[float]], degree: int = 2, alpha: float = 1e-4, grid_points: int = 6,
                box: Sequence[tuple[float, float]] | None = None, axes: Sequence[int] = (0, 1, 2)) -> QualityFit:
    """Fit F to ``samples`` [(d, w, r, quality), ...]; see the module docstring. ``axes``: the
    dimensions that vary (0 d, 1 w, 2 r); the basis leaves the others out (a planner with one
    dimension off fits 6 coefficients at degree 2, with two off 3)."""
    data = np.asarray(samples, float)
    if data.ndim != 2 or data.shape[1] != 4:
        raise ValueError(f"samples must be rows (d, w, r, quality); got an array of shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError("samples hold a NaN or an infinity")
    if ((data[:, :3] <= 0) | (data[:, :3] > 1)).any():
        raise ValueError("d, w and r must be fractions in (0, 1]")
    exps = exponents(degree, tuple(axes))
    n, m = len(data), len(exps)
    if n < m:
        raise ValueError(f"a degree-{degree} fit has {m} coefficients and needs at least {m} samples; got {n}")
    lo = [float(data[:, a].min()) for a in range(3)] if box is None else [float(b[0]) for b in box]
    bounds = tuple((x, 1.0) for x in lo)
    a = _design(exps, data[:, 0], data[:, 1], data[:, 2])
    y = data[:, 3]
    reg = np.full(m, alpha * n)
    reg[0] = 0.0
    h = a.T @ a + np.diag(reg)
    g = a.T @ y
    axes = [np.linspace(b0, 1.0, grid_points) if b0 < 1 else np.array([1.0]) for b0, _ in bounds]
    pts = np.array(list(itertools.product(*axes)))
    cons = np.vstack([_derivative(exps, ax, pts) for ax in range(3)])
    start = np.linalg.lstsq(h, g, rcond=None)[0]
    res = minimize(lambda x: 0.5 * x @ h @ x - g @ x, start, jac=lambda x: h @ x - g, method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda x: cons @ x, "jac": lambda x: cons}],
                   options={"maxiter": 500, "ftol": 1e-12})
    if not res.success and (cons @ res.x).min() < -1e-6:
        raise RuntimeError(f"the monotone fit did not converge: {res.message}")
    coef = res.x
    rms = float(math.sqrt(np.mean((a @ coef - y) ** 2)))
    return QualityFit(exps, coef, rms, bounds, alpha)
