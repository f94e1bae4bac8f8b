"""The measured correction of a latency selection: while the timed cut model is over the target,
the predicted-latency goal drops by the gap and the gates are selected again. The timer is faked
(conv MACs of the cut model, which the table predicts exactly, + a fixed gap), so no assertion
depends on wall-clock time."""
from __future__ import annotations

import types

import numpy as np
import pytest

from smof_onnx.learn.select import select
from smof_onnx.methods import CompressConfig
from smof_onnx.methods import latency as method_latency
from passes.analysis.flops import count_cost
from tests.test_learn_gates import cut_model
from tests.test_learn_latency_budget import _budget


def _fake_measure(p, gap):
    """Time = conv MACs of the really cut model (what the table's fake timer measures), + gap."""
    full = _macs(p.model, p.shapes)

    def measure(problem, zeroed, config):
        ratio = _macs(cut_model(zeroed, p.shapes), p.shapes) / full + gap
        return types.SimpleNamespace(a=types.SimpleNamespace(median_ms=1.0), b=types.SimpleNamespace(median_ms=ratio),
                                     self_ratio=1.0)
    return measure


def _macs(model, shapes):
    return sum(lay.flops for lay in count_cost(model, shapes).layers if lay.op == "Conv")


@pytest.mark.parametrize("gap", [0.0, 0.08])
def test_selection_is_redone_until_the_measured_latency_meets_the_target(monkeypatch, tmp_path, gap):
    p, lat = _budget(monkeypatch, tmp_path)
    monkeypatch.setattr(method_latency, "_measure", _fake_measure(p, gap))
    config = CompressConfig(target_flops=1.0, target_latency=0.6)
    scores = np.linspace(1.0, 2.0, p.space.size)
    h, ratios = select(p, scores, 1.0, extra=[(lat, 0.6)])
    h2, _, history = method_latency.correct_by_measurement(p, lat, scores, h, ratios, config, select)
    measured = lat.ratio(p.space.effective(h2)) + gap
    if gap == 0:
        assert len(history) == 1 and np.array_equal(h, h2)
    else:
        assert len(history) == 2 and history[1]["goal"] == pytest.approx(0.6 - (history[0]["measured_ratio"]
                                                                               - history[0]["predicted_ratio"]))
        assert measured <= 0.6 + 1e-9 < history[0]["measured_ratio"]
