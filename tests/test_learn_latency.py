"""The per-layer latency table: candidate shapes, micro models, interpolation, cache.

Specification:
- Kernel candidates shrink each axis by whole rings; channel grids respect the multiple.
- A table cell's micro model has the original layer's output size (cut pad rule) and runs in ORT.
- ``predict`` sums layer times, interpolating between channel grid points (exact for a cost
  that is bilinear in (cin, cout), which the fake timer below is).
- Tables are cached per model + settings + machine and reloaded without measuring.
No assertion depends on wall-clock timings (those belong to bench/).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from smof_onnx.passes.analysis.flops import count_cost
from smof_onnx.learn import latency
from smof_onnx.learn.latency import (LatencyConfig, LayerChoice, channel_grid, conv_sites, kernel_candidates,
                                     measure_table, micro_conv)
from tests.helpers import run


def two_conv_model(valid: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((16, 1, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal((24, 16, 1, 1)).astype(np.float32), "w3")]
    pads = [0, 0, 0, 0] if valid else [1, 1, 1, 1]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="dense", pads=pads),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["d"], name="dw", pads=[1, 1, 1, 1], group=16, strides=[2, 2]),
             helper.make_node("Conv", ["d", "w3"], ["y"], name="pw")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8, 12, 12])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def fake_timer(model, feed, threads, budget_s, warmup, *runs_and_runtime):
    """'Milliseconds' = conv MACs / 1e3: bilinear in (cin, cout) for a fixed kernel, so interpolation
    is exact; a whole model costs the sum of its convs."""
    shapes = {k: list(v.shape) for k, v in feed.items()}
    return sum(lay.flops for lay in count_cost(model, shapes).layers if lay.op == "Conv") / 2e3


def test_kernel_candidates_remove_whole_rings():
    assert set(kernel_candidates((3, 3))) == {(3, 3), (3, 1), (1, 3), (1, 1)}
    assert len(kernel_candidates((5, 5))) == 9 and (3, 3) in kernel_candidates((5, 5))
    assert kernel_candidates((1, 1)) == [(1, 1)]
    assert kernel_candidates((3,)) == [(3,), (1,)]


def test_channel_grid_respects_multiple():
    assert channel_grid(16, (0.25, 0.5, 0.75, 1.0), 1) == [4, 8, 12, 16]
    assert channel_grid(16, (0.25, 0.5, 0.75, 1.0), 8) == [8, 16]
    assert channel_grid(22, (0.5, 1.0), 4) == [12, 22]  # the original count is always measured


def test_conv_sites_read_static_shapes():
    sites = {s.name: s for s in conv_sites(two_conv_model(), {"x": [4, 8, 12, 12]})}
    assert sites["dense"].input_shape == (4, 8, 12, 12) and not sites["dense"].depthwise
    assert sites["dw"].depthwise and sites["dw"].input_shape == (4, 16, 12, 12)
    assert sites["pw"].input_shape == (4, 16, 6, 6)


@pytest.mark.parametrize("valid", [False, True])
@pytest.mark.parametrize("kernel", [(3, 3), (3, 1), (1, 3), (1, 1)])
def test_micro_model_keeps_the_layer_output_size(kernel, valid):
    model = two_conv_model(valid)
    site = next(s for s in conv_sites(model, {"x": [2, 8, 12, 12]}) if s.name == "dense")
    full, feed = micro_conv(site, (3, 3), 8, 16, 2)
    cut, cut_feed = micro_conv(site, kernel, 4, 12, 2)
    out_full, out_cut = run(full, feed)["y"], run(cut, cut_feed)["y"]
    assert out_full.shape == (2, 16) + ((10, 10) if valid else (12, 12))
    assert out_cut.shape == (2, 12) + out_full.shape[2:]


def test_table_interpolates_and_sums(monkeypatch, tmp_path):
    monkeypatch.setattr(latency, "time_model", fake_timer)
    config = LatencyConfig(cache_dir=str(tmp_path), channel_fractions=(0.5, 1.0))
    table = measure_table(two_conv_model(), {"x": [2, 8, 12, 12]}, config)
    assert set(table.layers) == {"dense", "dw", "pw"}
    assert table.layers["dense"]["cin"] == [4, 8] and table.layers["dense"]["cout"] == [8, 16]
    assert table.layers["dw"]["channels"] == [8, 16]
    # exact MACs/1e3 of the original convs: 2*16*12*12*8*9, 2*16*6*6*9, 2*24*6*6*16
    full = (2 * 16 * 144 * 72 + 2 * 16 * 36 * 9 + 2 * 24 * 36 * 16) / 1e3
    assert table.predict() == pytest.approx(full)
    assert table.meta["model_ms"] == pytest.approx(full)  # the whole model, timed once, is cached too
    # between grid points (cin 6, cout 12) and a 3x1 kernel: still exact (bilinear cost)
    dense = table.layer_ms("dense", (3, 1), 6, 12)
    assert dense == pytest.approx(2 * 12 * 144 * 6 * 3 / 1e3)
    choice = {"dense": LayerChoice((3, 1), 6, 12), "dw": ((1, 1), 12, 12)}
    expected = dense + 2 * 12 * 36 * 1 / 1e3 + 2 * 24 * 36 * 16 / 1e3
    assert table.predict(choice) == pytest.approx(expected)
    with pytest.raises(KeyError, match="not measured"):
        table.layer_ms("dense", (2, 2), 8, 16)
    with pytest.raises(KeyError, match="no latency row"):
        table.predict({"nope": ((1, 1), 1, 1)})


def test_table_is_cached_per_machine_and_settings(monkeypatch, tmp_path):
    monkeypatch.setattr(latency, "time_model", fake_timer)
    config = LatencyConfig(cache_dir=str(tmp_path), channel_fractions=(1.0,))
    first = measure_table(two_conv_model(), {"x": [2, 8, 12, 12]}, config)
    assert len(list(tmp_path.glob("*.json"))) == 1

    def must_not_measure(*args):
        raise AssertionError("a cached table was measured again")

    monkeypatch.setattr(latency, "time_model", must_not_measure)
    again = measure_table(two_conv_model(), {"x": [2, 8, 12, 12]}, config)
    assert again.predict() == first.predict() and again.meta["machine"]["threads"] == 2
    monkeypatch.setattr(latency, "time_model", fake_timer)
    measure_table(two_conv_model(), {"x": [2, 8, 12, 12]}, LatencyConfig(cache_dir=str(tmp_path), threads=1,
                                                                        channel_fractions=(1.0,)))
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_real_measurement_runs(tmp_path):
    config = LatencyConfig(cache_dir=str(tmp_path), threads=1, budget_s=0.0, warmup=1, channel_fractions=(1.0,))
    table = measure_table(two_conv_model(), {"x": [1, 8, 12, 12]}, config)
    for name, row in table.layers.items():
        ms = np.asarray(row["ms"], dtype=np.float64)
        assert np.isfinite(ms).all() and ms.min() > 0, name
    assert table.predict() > 0


def test_layers_of_the_same_geometry_are_timed_once(monkeypatch, tmp_path):
    calls = []

    def counting(model, feed, *args):
        calls.append(tuple(next(i.dims for i in model.graph.initializer if len(i.dims) == 4)))
        return fake_timer(model, feed, *args)

    monkeypatch.setattr(latency, "time_model", counting)
    model = two_conv_model()
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    # a second 'dense' conv of the same geometry on the same input
    twin.graph.node.insert(1, helper.make_node("Conv", ["x", "w1"], ["a2"], name="dense2", pads=[1, 1, 1, 1]))
    twin.graph.output.append(helper.make_tensor_value_info("a2", onnx.TensorProto.FLOAT, None))
    config = LatencyConfig(cache_dir=str(tmp_path), channel_fractions=(0.5, 1.0))
    once = len(calls) if measure_table(model, {"x": [2, 8, 12, 12]}, config, use_cache=False) else 0
    calls.clear()
    table = measure_table(twin, {"x": [2, 8, 12, 12]}, config, use_cache=False)
    assert len(calls) == once  # no new cells: 'dense2' reuses the cells of 'dense'
    assert table.layers["dense2"]["ms"] == table.layers["dense"]["ms"]


def test_a_tiny_cell_stops_at_max_runs_not_at_the_time_budget():
    """A 30-second budget on a conv that runs in microseconds: the run cap ends the timing."""
    import time

    m, feed = micro_conv(conv_sites(two_conv_model(), {"x": [1, 8, 12, 12]})[0], (3, 3), 8, 16, 1)
    start = time.perf_counter()
    ms = latency.time_model(m, feed, 1, 30.0, 1, max_runs=20)
    assert ms > 0 and time.perf_counter() - start < 10.0


def test_openvino_tables_are_real_and_kept_apart_from_onnxruntime_ones(tmp_path):
    pytest.importorskip("openvino")  # the [openvino] extra: installed in CI
    shapes = {"x": [1, 8, 12, 12]}
    config = LatencyConfig(cache_dir=str(tmp_path), threads=1, budget_s=0.0, warmup=1, channel_fractions=(0.5, 1.0),
                           runtime="openvino")
    table = measure_table(two_conv_model(), shapes, config)
    assert table.meta["machine"]["runtime"] == "openvino" and table.meta["machine"]["runtime_version"]
    for name, row in table.layers.items():
        assert np.isfinite(np.asarray(row["ms"], np.float64)).all() and np.min(row["ms"]) > 0, name
    assert table.meta["model_ms"] > 0
    measure_table(two_conv_model(), shapes, dataclasses.replace(config, runtime="ort"))
    assert len(list(tmp_path.glob("*.json"))) == 2  # one per runtime: never read across


def test_an_unknown_or_missing_runtime_is_a_usage_error(monkeypatch):
    import builtins

    from smof_onnx.errors import UsageError
    from smof_onnx.export.base import RuntimeMissingError
    from smof_onnx.export.runtimes import check_runtime

    with pytest.raises(UsageError, match="choose one of ort, ort-int8, openvino"):
        check_runtime("tensorrt")
    real_import = builtins.__import__

    def no_openvino(name, *a, **k):
        if name.startswith("openvino"):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    monkeypatch.delitem(__import__("sys").modules, "openvino", raising=False)
    with pytest.raises(RuntimeMissingError, match=r"pip install 'smof-onnx\[openvino\]'"):
        check_runtime("openvino")


def test_int8_cells_are_timed_on_the_quantized_conv(tmp_path, monkeypatch):
    """ort-int8 times the QDQ model `export --quantize int8` would write, calibrated on the cell's feed."""
    from smof_onnx.export import runtimes

    quantized = []
    real = runtimes.runner

    def spy(model, runtime, threads, calibration=None):
        run = real(model, runtime, threads, calibration)
        quantized.append((runtime, calibration is not None))
        return run

    monkeypatch.setattr(runtimes, "runner", spy)
    m, feed = micro_conv(conv_sites(two_conv_model(), {"x": [1, 8, 12, 12]})[0], (3, 3), 8, 16, 1)
    assert latency.time_model(m, feed, 1, 0.0, 1, 5, "ort-int8") > 0
    assert quantized == [("ort-int8", True)]
    from smof_onnx.export.quantize import quantize_ort

    q = quantize_ort(_save(m, tmp_path), tmp_path / "q.onnx", [feed])
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in q.graph.node}


def _save(model, folder):
    path = folder / "m.onnx"
    onnx.save_model(model, str(path))
    return path
