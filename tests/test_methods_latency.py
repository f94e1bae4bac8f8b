"""The measured correction of a latency selection: the timed cut model's gap to the prediction
moves the predicted-latency goal (down when too slow, up when far under the target) and the gates
are selected again; the result is the largest-goal selection timed within the target that a second
timing confirms. The timer is faked
(conv MACs of the cut model, which the table predicts exactly, + a fixed gap), so no assertion
depends on wall-clock time."""
from __future__ import annotations

import types

import numpy as np
import pytest

from smof_onnx.selection.select import select
from smof_onnx.methods import CompressConfig
from smof_onnx.methods import latency as method_latency
from smof_onnx.passes.analysis.flops import count_cost
from tests.test_selection_gates import cut_model
from tests.test_learn_latency_budget import _budget


def _gaps(gap, *later_gaps):
    """``time_of`` for :func:`_fake_timer`: the MACs ratio + gap (the first call; then each of
    ``later_gaps`` in turn, the last one repeating)."""
    gaps = [gap, *later_gaps]
    return lambda r: r + (gaps.pop(0) if len(gaps) > 1 else gaps[0])


def _fake_timer(p, time_of):
    """Time = ``time_of(conv MACs of the really cut model / the original's)``."""
    full = _macs(p.model, p.shapes)

    def measure(problem, zeroed, config):
        ratio = time_of(_macs(cut_model(zeroed, p.shapes), p.shapes) / full)
        return types.SimpleNamespace(a_ms=1.0, b_ms=ratio, self_ratio=1.0)
    return measure


def _loop(history):
    """The selection rounds, without the confirmations."""
    return [r for r in history if not r.get("confirms")]


def _macs(model, shapes):
    return sum(lay.flops for lay in count_cost(model, shapes).layers if lay.op == "Conv")


CONFIG = CompressConfig(target_flops=1.0, target_latency=0.6)


def _first_selection(monkeypatch, tmp_path, time_of):
    """The problem, its latency budget, the scores and the selection for a 0.6 latency goal,
    with ``_measure`` faked by ``_fake_timer(p, time_of)``."""
    p, lat = _budget(monkeypatch, tmp_path)
    monkeypatch.setattr(method_latency, "_measure", _fake_timer(p, time_of))
    scores = np.linspace(1.0, 2.0, p.space.size)
    h, ratios = select(p, scores, 1.0, extra=[(lat, 0.6)])
    return p, lat, scores, h, ratios


@pytest.mark.parametrize("gap", [0.0, 0.08])
def test_selection_is_redone_until_the_measured_latency_meets_the_target(monkeypatch, tmp_path, gap):
    p, lat, scores, h, ratios = _first_selection(monkeypatch, tmp_path, _gaps(gap))
    result = method_latency.correct_by_measurement(p, lat, scores, h, ratios, CONFIG, select)
    h2, history = result.h, _loop(result.rounds)
    measured = lat.ratio(p.space.effective(h2)) + gap
    assert result.rounds[-1]["confirms"] and result.rounds[-1]["measured_ratio"] == pytest.approx(measured, abs=1e-4)
    if gap == 0:
        assert len(history) == 1 and np.array_equal(h, h2)
    else:
        assert len(history) == 2 and history[1]["goal"] == pytest.approx(0.6 - (history[0]["measured_ratio"]
                                                                               - history[0]["predicted_ratio"]))
        assert measured <= 0.6 + 1e-9 < history[0]["measured_ratio"]


def test_a_pessimistic_prediction_raises_the_goal_to_use_the_time_left(monkeypatch, tmp_path):
    p, lat, scores, h, ratios = _first_selection(monkeypatch, tmp_path, _gaps(-0.08))
    result = method_latency.correct_by_measurement(p, lat, scores, h, ratios, CONFIG, select)
    h2, history = result.h, result.rounds
    assert history[0]["measured_ratio"] < 0.6 - method_latency.SLACK
    assert history[1]["goal"] == pytest.approx(0.6 + 0.08, abs=1e-4)
    before, after = (lat.ratio(p.space.effective(x)) for x in (h, h2))
    assert after > before  # more kept ...
    assert after - 0.08 <= 0.6 + 1e-9  # ... and still measured within the target


def test_a_raised_selection_that_runs_over_is_dropped_for_the_one_that_met(monkeypatch, tmp_path):
    p, lat, scores, h, ratios = _first_selection(monkeypatch, tmp_path, _gaps(-0.2, 0.2, -0.2))
    result = method_latency.correct_by_measurement(p, lat, scores, h, ratios, CONFIG, select, rounds=2)
    history = result.rounds
    assert history[0]["measured_ratio"] <= 0.6 < history[1]["measured_ratio"]
    assert len(history) == 3 and history[2]["confirms"] and history[2]["goal"] == history[0]["goal"]
    assert np.array_equal(result.h, h) and result.ratios == ratios


def test_a_step_in_the_real_time_is_bracketed_by_bisection(monkeypatch, tmp_path):
    """Real time 0.1 under the prediction below 0.65 and 0.05 over it above (a SIMD step): raising
    the goal by the first gap overshoots the step, so the goal is bisected between the two."""
    p, lat, scores, h, ratios = _first_selection(monkeypatch, tmp_path, lambda r: r - 0.1 if r < 0.65 else r + 0.05)
    result = method_latency.correct_by_measurement(p, lat, scores, h, ratios, CONFIG, select)
    h2, history = result.h, _loop(result.rounds)
    measured = [r["measured_ratio"] for r in history]
    assert measured[0] <= 0.6 < measured[1]  # met, then the raised goal ran over
    assert 0.6 < history[2]["goal"] < history[1]["goal"]  # bisected between them
    assert len(history) <= 4
    first, final = (lat.ratio(p.space.effective(x)) for x in (h, h2))
    assert final > first
    assert (final - 0.1 if final < 0.65 else final + 0.05) <= 0.6 + 1e-9


def test_a_read_that_came_out_low_is_not_trusted_without_a_second_timing(monkeypatch, tmp_path):
    """The raised selection reads within the target once (0.2 low), then at its real time: it is
    dropped for the first selection, which a second timing confirms."""
    p, lat, scores, h, ratios = _first_selection(monkeypatch, tmp_path, _gaps(-0.2, -0.2, 0.0))
    result = method_latency.correct_by_measurement(p, lat, scores, h, ratios, CONFIG, select)
    loop, confirms = _loop(result.rounds), [r for r in result.rounds if r.get("confirms")]
    assert len(loop) == 2 and all(r["measured_ratio"] <= 0.6 for r in loop)
    assert [r["goal"] for r in confirms] == [loop[1]["goal"], loop[0]["goal"]]  # largest goal first
    assert confirms[0]["measured_ratio"] > 0.6 >= confirms[1]["measured_ratio"]
    assert np.array_equal(result.h, h) and result.ratios == ratios


def test_when_no_confirmation_holds_the_most_conservative_timed_selection_is_kept(monkeypatch, tmp_path):
    p, lat, scores, h, ratios = _first_selection(monkeypatch, tmp_path, _gaps(-0.2, -0.2, 0.3))
    result = method_latency.correct_by_measurement(p, lat, scores, h, ratios, CONFIG, select)
    confirms = [r for r in result.rounds if r.get("confirms")]
    assert len(confirms) == method_latency.CONFIRMATIONS and all(r["measured_ratio"] > 0.6 for r in confirms)
    assert np.array_equal(result.h, h)  # the smallest goal timed within the target


def test_smof_scores_by_measured_time_unless_no_latency_or_untimeable(monkeypatch, tmp_path):
    """The default scoring table is measured; --no-latency and a runtime that cannot time a layer
    fall back to FLOPs and say why; --no-latency with --target-latency is a usage error."""
    from smof_onnx.errors import UsageError
    from smof_onnx.learn import latency as table_latency

    p, _ = _budget(monkeypatch, tmp_path)
    monkeypatch.setenv("SMOF_CACHE", str(tmp_path / "cache"))
    lat, source = method_latency.scoring_latency(p, CompressConfig(bench_batch=4))
    assert source == "measured" and lat is not None and lat.total > 0
    assert method_latency.scoring_latency(p, CompressConfig(no_latency=True)) == (None, "flops (--no-latency)")

    def broken(*a, **k):
        raise RuntimeError("no kernel for this conv")

    monkeypatch.setattr(table_latency, "time_model", broken)
    monkeypatch.setenv("SMOF_CACHE", str(tmp_path / "empty"))
    lat, source = method_latency.scoring_latency(p, CompressConfig(bench_batch=4))
    assert lat is None and source.startswith("flops (") and "no kernel for this conv" in source
    with pytest.raises(UsageError, match="--no-latency and --target-latency"):
        CompressConfig(no_latency=True, target_latency=0.5)


def test_the_scoring_table_is_timed_at_a_batch_that_fits_the_memory_budget(monkeypatch, tmp_path):
    """A table whose largest cell does not fit the budget at --bench-batch is timed at a halved
    batch (the report says so); where not even batch 1 fits, smof scores by FLOPs and says why."""
    from smof_onnx.learn import memory
    from smof_onnx.learn.latency import conv_sites

    p, _ = _budget(monkeypatch, tmp_path)
    monkeypatch.setattr(memory, "current_rss", lambda: 0)
    # the independent estimate: input + output floats of the biggest conv, per sample
    per_sample = max(4 * (int(np.prod(s.input_shape[1:])) + s.weight_shape[0] * int(np.prod(s.input_shape[2:])))
                     for s in conv_sites(p.model, p.shapes))
    at_32 = method_latency.table_batch(p, CompressConfig(bench_batch=32, max_memory=1 << 40))
    assert at_32 == (32, None)
    room = int(method_latency.TABLE_FACTOR * per_sample * 24)  # fewer than 24 samples fit (plus im2col, weights)
    batch, why = method_latency.table_batch(p, CompressConfig(bench_batch=32, max_memory=room))
    assert batch in (1, 2, 4, 8, 16) and method_latency.TABLE_FACTOR * batch * per_sample <= room
    assert f"timed at batch {batch}, not 32" in why
    batch, why = method_latency.table_batch(p, CompressConfig(bench_batch=32, max_memory=per_sample // 4))
    assert batch is None and "memory budget" in why
    lat, source = method_latency.scoring_latency(p, CompressConfig(bench_batch=32, max_memory=per_sample // 4))
    assert lat is None and source.startswith("flops (timing the largest layer")
