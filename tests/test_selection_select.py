"""Selection: binarize, trim to the target, restore what still fits, and under the automatic
channel rule fill the rest with finer channel steps; the cut model meets the target."""
from __future__ import annotations

import numpy as np
import pytest

from smof_onnx.errors import UnsupportedModelError
from smof_onnx.selection.select import FINE_MULTIPLE, cut_ratio, fit_budget, prepare, select
from tests.test_selection_gates import tiny_cnn


def _wide_family(p):
    return max(p.space.families, key=lambda f: len(f.gates))  # conv3's 32 filters


def _scores_and_fill_target(p):
    """Scores that make conv3's filters the cheapest to lose, and the FLOPs target of the model
    that keeps 16 + FINE_MULTIPLE of them (everything else kept)."""
    wide = _wide_family(p)
    s = np.ones(p.space.size)
    s[list(wide.gates)] = np.linspace(0.2, 0.1, len(wide.gates))  # conv3's first filters score highest
    h = np.ones(p.space.size)
    h[list(wide.gates)[16 + FINE_MULTIPLE:]] = 0.0
    return s, float(p.budget.ratio(p.space.effective(h))), wide


def test_fill_takes_back_eight_channels_where_sixteen_no_longer_fit():
    p = prepare(tiny_cnn(width=16), None, kernel=False, multiple=0)
    s, target, wide = _scores_and_fill_target(p)
    assert wide.multiple == 16 and wide.allowed() == [16, 32]
    h, ratios = select(p, s, target)
    kept = np.flatnonzero(h[list(wide.gates)] >= 0.5)
    assert list(kept) == list(range(16 + FINE_MULTIPLE))  # the best-scored filters, 24 of 32
    assert ratios["cut"] <= target + 1e-9
    assert cut_ratio(p, h) == pytest.approx(ratios["cut"])


def test_a_channel_multiple_the_user_gave_is_never_filled_finer():
    p = prepare(tiny_cnn(width=16), None, kernel=False, multiple=16)
    s, target, wide = _scores_and_fill_target(p)
    h, ratios = select(p, s, target)
    assert int(h[list(wide.gates)].sum()) == 16
    assert ratios["cut"] < target


def test_fill_stays_within_every_extra_budget():
    p = prepare(tiny_cnn(width=16), None, kernel=False, multiple=0)
    s, target, wide = _scores_and_fill_target(p)
    h16 = np.ones(p.space.size)
    h16[list(wide.gates)[16:]] = 0.0
    tight = float(p.budget.ratio(p.space.effective(h16)))
    h, _ = select(p, s, target, extra=[(p.budget, tight)])  # a second budget that 16 kept just meets
    assert int(h[list(wide.gates)].sum()) == 16


@pytest.mark.parametrize("target", [0.8, 0.5, 0.3])
@pytest.mark.parametrize("multiple", [0, 1, 8])
def test_the_cut_model_meets_the_target(target, multiple):
    p = prepare(tiny_cnn(width=16), None, multiple=multiple)
    rng = np.random.default_rng(int(target * 10) + multiple)
    h, ratios = select(p, rng.random(p.space.size), target)
    assert cut_ratio(p, h) == pytest.approx(ratios["cut"])
    assert ratios["cut"] <= target + 1e-9
    for fam in p.space.families:
        kept = int(h[list(fam.gates)].sum())
        assert kept >= 1
        if multiple:
            assert kept in fam.allowed()
        else:
            assert kept in fam.allowed(min(fam.multiple, FINE_MULTIPLE))


def test_fit_budget_drops_the_lowest_scores_first_and_takes_back_what_fits():
    p = prepare(tiny_cnn(width=16), None, kernel=False, multiple=0)
    s, target, wide = _scores_and_fill_target(p)
    h = fit_budget(p, np.ones(p.space.size), s, target)
    assert float(p.budget.ratio(p.space.effective(h))) <= target + 1e-12
    kept = np.flatnonzero(h[list(wide.gates)] >= 0.5)
    assert list(kept) == list(range(16))  # whole 16-channel steps: the best-scored half of conv3
    assert h.sum() == p.space.size - 16  # nothing else was dropped


def test_fit_budget_says_why_when_no_gate_is_left_to_drop():
    p = prepare(tiny_cnn(width=16), None, kernel=False, multiple=0)
    with pytest.raises(UnsupportedModelError, match="FLOPs target 0.001 cannot be reached"):
        fit_budget(p, np.ones(p.space.size), np.ones(p.space.size), 0.001)


def test_a_model_without_flops_is_a_clear_error_not_a_division_by_zero():
    from tests.test_selection_budget import relu_only

    p = prepare(relu_only(), None, multiple=1)
    assert cut_ratio(p, np.ones(0)) == 1.0
    for target in (1.0, 0.5):
        with pytest.raises(UnsupportedModelError, match="nothing to compress: the model has no Conv"):
            select(p, np.ones(0), target)
