"""The predicted-latency budget: with a timer whose cost is the conv MACs (bilinear in the
channel counts, so the table interpolates it exactly) the prediction for binary gates equals the
cut model's conv MACs; costs are per-gate savings; the selection meets a latency target, also
when the table is not monotone (odd channel counts slower than the full layer).
No assertion depends on wall-clock timings."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smof_onnx.passes.analysis.flops import count_cost
from smof_onnx.learn import latency
from smof_onnx.learn.latency_budget import build_latency_budget
from smof_onnx.selection.select import prepare, select
from tests.test_selection_gates import cut_model, tiny_cnn

BATCH = 4


def conv_macs(model, feed) -> float:
    shapes = {k: list(v.shape) for k, v in feed.items()}
    return sum(lay.flops for lay in count_cost(model, shapes).layers if lay.op == "Conv") / 2e3


def odd_is_slow(model, feed) -> float:
    """Per conv: MACs, 3x slower when its output count is not a multiple of 4 (the SIMD effect)."""
    shapes = {k: list(v.shape) for k, v in feed.items()}
    return sum(lay.flops * (3.0 if lay.out_channels % 4 else 1.0)
               for lay in count_cost(model, shapes).layers if lay.op == "Conv") / 2e3


def _budget(monkeypatch, tmp_path, timer=conv_macs, multiple=1):
    monkeypatch.setattr(latency, "time_model", lambda m, feed, *a: timer(m, feed))
    p = prepare(tiny_cnn(), None, multiple=multiple)
    lat = build_latency_budget(p.model, p.shapes, p.budget.terms, p.space, batch=BATCH, cache_dir=str(tmp_path))
    return p, lat


def test_full_model_is_ratio_one_and_nothing_outside_the_convs(monkeypatch, tmp_path):
    p, lat = _budget(monkeypatch, tmp_path)
    ones = np.ones(p.space.size)
    assert lat.ratio(ones) == pytest.approx(1.0)
    assert lat.other == pytest.approx(0.0, abs=1e-9)  # the fake whole-model time is the convs' sum
    assert {lay.name for lay in lat.layers} == {"conv1", "conv2", "conv3"}


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(bits=st.lists(st.booleans(), min_size=64, max_size=64))
def test_binary_prediction_equals_the_cut_models_cost(monkeypatch, tmp_path, bits):
    p, lat = _budget(monkeypatch, tmp_path)
    h = p.space.effective(p.space.binarize(np.asarray(bits[:p.space.size], float)))
    cut = cut_model(p.space.apply(p.model, h), p.shapes)
    feed = {"x": np.zeros((BATCH, 3, 8, 8), np.float32)}
    assert lat.ms(h) == pytest.approx(conv_macs(cut, feed), rel=1e-9)


def test_costs_are_savings_and_inner_rings_cost_more(monkeypatch, tmp_path):
    p, lat = _budget(monkeypatch, tmp_path)
    c = lat.costs(p.space)
    assert np.all(c > 0)
    ring = {(k.node, k.axis, k.level): k.index for k in p.space.kernel}
    assert c[ring[("conv3", 0, 2)]] > c[ring[("conv3", 0, 1)]]
    # a channel gate's cost: its share of halving the family, as a ratio of the whole time
    fam = p.space.families[0]
    h = np.ones(p.space.size)
    n = len(fam.gates)
    h[list(fam.gates[n // 2:])] = 0
    saved = 1 - lat.ratio(p.space.effective(h))
    assert c[fam.gates[0]] == pytest.approx(saved / (n - n // 2))


@pytest.mark.parametrize("timer", [conv_macs, odd_is_slow])
def test_selection_meets_the_latency_target_of_the_cut_model(monkeypatch, tmp_path, timer):
    """Multiple 2: the table's grid holds every count from a quarter of a layer up, so the
    prediction is the timer's own cost of the cut model, odd counts' slow-down included."""
    p, lat = _budget(monkeypatch, tmp_path, timer, multiple=2)
    feed = {"x": np.zeros((BATCH, 3, 8, 8), np.float32)}
    for seed in range(3):
        scores = np.random.default_rng(seed).random(p.space.size)
        h, ratios = select(p, scores, 1.0, extra=[(lat, 0.5)])
        cut = cut_model(p.space.apply(p.model, h), p.shapes)
        assert lat.ratio(p.space.effective(h)) <= 0.5
        assert timer(cut, feed) <= 0.5 * timer(p.model, feed) * (1 + 1e-9)
        assert ratios["cut"] < 1.0


def test_an_unreachable_latency_target_is_a_clear_error(monkeypatch, tmp_path):
    from smof_onnx.errors import UnsupportedModelError

    p, lat = _budget(monkeypatch, tmp_path)
    with pytest.raises(UnsupportedModelError, match="latency target 0.001 cannot be reached"):
        select(p, np.zeros(p.space.size), 1.0, check=False, extra=[(lat, 0.001)])


def test_layer_times_add_up_to_the_prediction(monkeypatch, tmp_path):
    p, lat = _budget(monkeypatch, tmp_path)
    h = np.ones(p.space.size)
    h[list(p.space.families[0].gates[:3])] = 0
    e = p.space.effective(h)
    per_layer = lat.layer_ms(e)
    assert set(per_layer) == {"conv1", "conv2", "conv3"}
    assert sum(per_layer.values()) + lat.other == pytest.approx(lat.ms(e), rel=1e-12)
    assert per_layer["conv2"] < lat.layer_ms(np.ones(p.space.size))["conv2"]


def test_counts_slower_than_the_next_larger_one_are_reported(monkeypatch, tmp_path):
    """odd_is_slow: a conv whose output count is not a multiple of 4 runs 3x slower, so keeping 7
    of 8 channels is slower than keeping 8; keeping 4 is faster than keeping 5."""
    p, lat = _budget(monkeypatch, tmp_path, odd_is_slow)
    fam = p.space.families[0]
    h = np.ones(p.space.size)
    h[fam.gates[0]] = 0  # 7 of 8
    slow = lat.slower_counts(p.space, h)
    assert [(r["kept"], r["larger"]) for r in slow] == [(7, 8)]
    assert slow[0]["ms_larger"] < slow[0]["ms"]
    h = np.ones(p.space.size)
    h[list(fam.gates[:4])] = 0  # 4 of 8
    assert lat.slower_counts(p.space, h) == []


def test_counts_the_table_predicts_slower_than_a_larger_one_are_never_selected(monkeypatch, tmp_path):
    """With odd output counts 3x slower, keeping 5 or 7 of conv3's 16 costs more than keeping 8:
    those counts leave the family, and no selection at any target keeps them."""
    from smof_onnx.methods.latency import use_runtime_counts

    p, lat = _budget(monkeypatch, tmp_path, timer=odd_is_slow)
    dominated = lat.dominated_counts(p.space)
    assert dominated, "the 3x penalty must make some counts slower than larger ones"
    rows = use_runtime_counts(p, lat)
    assert [r["counts"] for r in rows] and all(r["counts"] for r in rows)
    for fam in p.space.families:
        assert not set(fam.allowed()) & set(dominated.get(fam.id, ()))
    rng = np.random.default_rng(0)
    for target in (0.9, 0.7, 0.5, 0.35):
        h, _ = select(p, rng.random(p.space.size), target)
        for fam in p.space.families:
            kept = int(h[list(fam.gates)].sum())
            assert kept in fam.allowed() and kept not in dominated.get(fam.id, ()), (target, fam.id, kept)
