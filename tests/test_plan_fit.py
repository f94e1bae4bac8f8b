"""plan_fit: the monotone polynomial accuracy model recovers a known surface and stays monotone."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from smof_onnx.selection.plan_fit import exponents, fit_quality

# A monotone surface on [0.2, 1]^3 written in the fit's basis (total degree 2).
TRUE = {(0, 0, 0): 0.30, (1, 0, 0): 0.20, (0, 1, 0): 0.35, (0, 0, 1): 0.25, (2, 0, 0): -0.08,
        (0, 2, 0): -0.12, (0, 0, 2): -0.10, (0, 1, 1): 0.05, (1, 1, 0): 0.02}


def _truth(d, w, r):
    return sum(c * d ** i * w ** j * r ** k for (i, j, k), c in TRUE.items())


def _samples(n, noise, seed, fn=_truth):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 1.0, size=(n, 3))
    y = fn(x[:, 0], x[:, 1], x[:, 2]) + rng.normal(0, noise, n)
    return np.column_stack([x, y])


def test_basis_is_total_degree_two_with_ten_terms():
    exps = exponents(2)
    assert len(exps) == 10 and exps[0] == (0, 0, 0) and set(TRUE) <= set(exps)


def test_recovers_a_known_surface_from_noisy_samples():
    fit = fit_quality(_samples(40, 0.002, 0), alpha=1e-6)
    got = dict(zip(fit.exponents, fit.coefficients))
    for e in fit.exponents:
        assert abs(got[e] - TRUE.get(e, 0.0)) < 0.06, (e, got[e])
    g = np.linspace(0.2, 1.0, 9)
    d, w, r = np.meshgrid(g, g, g, indexing="ij")
    assert np.abs(fit(d, w, r) - _truth(d, w, r)).max() < 0.01
    assert fit.rms < 0.004


def _slopes(fn, n=15, lo=0.2):
    g = np.linspace(lo, 1.0, n)
    pts = np.array(list(itertools.product(g, g, g)))
    v = fn(pts[:, 0], pts[:, 1], pts[:, 2]).reshape(n, n, n)
    return [np.diff(v, axis=a).min() for a in range(3)]


def test_monotone_on_a_fine_grid_even_when_the_samples_are_not():
    # Truth decreases in r at high r; noise makes it worse. An unconstrained fit follows it.
    def bumpy(d, w, r):
        return 0.5 + 0.2 * d + 0.1 * w + 0.6 * r - 0.6 * r ** 2
    data = _samples(30, 0.02, 1, bumpy)
    x = data[:, :3]
    a = np.stack([x[:, 0] ** i * x[:, 1] ** j * x[:, 2] ** k for i, j, k in exponents(2)], 1)
    free = np.linalg.lstsq(a, data[:, 3], rcond=None)[0]
    assert min(_slopes(lambda d, w, r: np.stack([d ** i * w ** j * r ** k for i, j, k in exponents(2)], -1) @ free,
                       lo=x.min())) < -1e-3
    fit = fit_quality(data)
    assert min(_slopes(fit, lo=min(b[0] for b in fit.box))) >= -1e-9


def test_too_few_samples_and_bad_samples_are_clear_errors():
    with pytest.raises(ValueError, match="10 coefficients and needs at least 10 samples; got 9"):
        fit_quality(_samples(9, 0.0, 2))
    with pytest.raises(ValueError, match=r"fractions in \(0, 1\]"):
        fit_quality([[0.0, 1, 1, 0.5]] * 12)
    with pytest.raises(ValueError, match="rows"):
        fit_quality([[1, 1, 0.5]] * 12)


def test_a_dimension_held_at_one_leaves_the_basis_and_the_rest_is_recovered():
    """With depth off (every sample at d = 1) the basis has the 6 terms of (w, r); fewer samples suffice."""
    two = {e: c for e, c in TRUE.items() if e[0] == 0}
    rng = np.random.default_rng(3)
    wr = rng.uniform(0.2, 1.0, size=(8, 2))
    y = [sum(c * w ** j * r ** k for (_, j, k), c in two.items()) for w, r in wr]
    fit = fit_quality(np.column_stack([np.ones(8), wr, y]), alpha=1e-8, axes=(1, 2))
    assert len(fit.exponents) == 6 and all(e[0] == 0 for e in fit.exponents)
    g = np.linspace(0.2, 1.0, 7)
    w, r = np.meshgrid(g, g)
    truth = sum(c * w ** j * r ** k for (_, j, k), c in two.items())
    assert np.abs(fit(1.0, w, r) - truth).max() < 0.01
    with pytest.raises(ValueError, match="needs at least 10 samples"):
        fit_quality(np.column_stack([np.ones(8), wr, y]))  # all three axes: 10 coefficients
