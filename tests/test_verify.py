"""The verification gate compares outputs under ONNX Runtime; latency is timed the way design 8 says."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnxruntime as ort
import pytest

from smof_onnx.passes import graph as pgraph
from smof_onnx.passes.base import ModelError
from smof_onnx import verify

F = onnx.TensorProto.FLOAT


def _conv_net(scale: float = 1.0, out_name: str = "y", cin: int = 3, cout: int = 4, k: int = 3,
              spatial=("N", 3, 8, 8)) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal([cout, cin, k, k]).astype(np.float32)
    nodes = [oh.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[k // 2] * 4),
             oh.make_node("Relu", ["c"], ["r"], name="relu"),
             oh.make_node("Mul", ["r", "s"], [out_name], name="scale")]
    g = oh.make_graph(nodes, "net", [oh.make_tensor_value_info("x", F, list(spatial))],
                      [oh.make_tensor_value_info(out_name, F, ["N", cout, spatial[2], spatial[3]])],
                      [onh.from_array(w, "w"), onh.from_array(np.array(scale, np.float32), "s")])
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])


def test_identical_models_pass_with_zero_error_on_every_random_input():
    m = _conv_net()
    res = verify.verify_equivalent(m, m, n_random=3)
    assert res.ok and res.max_rel_err == 0.0 and res.inputs == 3
    assert res.per_output == {"y": 0.0}


def test_a_relative_change_of_1e_3_fails_the_gate_and_is_measured():
    res = verify.verify_equivalent(_conv_net(), _conv_net(scale=1.001))
    assert not res.ok
    assert res.max_rel_err == pytest.approx(1e-3, rel=1e-3)


def test_a_change_below_the_tolerance_passes():
    res = verify.verify_equivalent(_conv_net(), _conv_net(scale=1 + 2e-6))
    assert res.ok and 1e-6 < res.max_rel_err < 1e-5


def test_calibration_data_adds_its_first_batches():
    m = _conv_net()
    data = {"x": np.random.default_rng(1).standard_normal([5, 3, 8, 8]).astype(np.float64)}
    assert verify.verify_equivalent(m, m, data=data, n_random=1, batch=2).inputs == 1 + 2

    class Calib:  # what smof_onnx.data.load_data returns: arrays under .inputs
        inputs = data
    assert verify.verify_equivalent(m, m, data=Calib(), n_random=0, batch=2, n_data_batches=1).inputs == 1


def test_data_feeds_follow_a_fixed_batch_dim():
    m = _conv_net(spatial=(1, 3, 8, 8))
    feeds = verify.data_feeds(m, {"x": np.zeros([3, 3, 8, 8])}, batch=2, n_batches=5)
    assert [f["x"].shape for f in feeds] == [(1, 3, 8, 8)] * 3
    assert feeds[0]["x"].dtype == np.float32


def test_symbolic_spatial_dims_need_input_shapes():
    m = _conv_net(spatial=("N", 3, "H", "W"))
    with pytest.raises(ModelError, match="input-shape"):
        verify.verify_equivalent(m, m)
    assert verify.verify_equivalent(m, m, input_shapes={"x": [1, 3, 6, 10]}).ok


def test_rel_err_rules():
    a = np.array([1.0, np.nan, -4.0], np.float32)
    assert verify.rel_err(a, a.copy()) == 0.0
    assert verify.rel_err(a, np.array([1.0, 0.0, -4.0], np.float32)) == float("inf")  # NaN moved
    assert verify.rel_err(a, np.array([1.0, np.nan, -3.0], np.float32)) == pytest.approx(0.25)
    assert verify.rel_err(np.array([1, 2]), np.array([1, 3])) == float("inf")
    assert verify.rel_err(np.array([1, 2]), np.array([1, 2])) == 0.0
    assert verify.rel_err(np.zeros(3), np.zeros(4)) == float("inf")
    assert verify.rel_err(np.array([np.inf, 1.0]), np.array([np.inf, 1.5])) == pytest.approx(0.5)


def test_interface_changes_name_what_changed():
    assert verify.interface_changes(_conv_net(), _conv_net()) == []
    (change,) = verify.interface_changes(_conv_net(), _conv_net(out_name="z"))
    assert "outputs changed" in change and "'z'" in change


def test_gate_sessions_run_the_graph_as_written_and_timing_sessions_do_not_spin():
    gate = verify.session_options(optimize=False)
    assert gate.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    timing = verify.session_options(optimize=True, threads=2)
    assert timing.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert timing.intra_op_num_threads == 2
    assert timing.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_models_over_the_protobuf_limit_are_run_from_a_file_with_external_data(monkeypatch):
    monkeypatch.setattr(pgraph, "PROTOBUF_LIMIT", 100 + (64 << 20))  # anything over 100 bytes is "too big"
    saved = []
    real_save = pgraph.save_model

    def spy(model, path, **kw):
        saved.append((path, kw))
        return real_save(model, path, **kw)
    monkeypatch.setattr(pgraph, "save_model", spy)
    m = _conv_net(cin=8, spatial=("N", 8, 8, 8))  # a 2.3 kB weight goes to the external file
    assert verify.verify_equivalent(m, _conv_net(scale=1.5, cin=8, spatial=("N", 8, 8, 8))).max_rel_err \
        == pytest.approx(0.5)
    assert len(saved) == 3 and all(kw == {"external_data": True} for _, kw in saved)
    # The sessions' temporary copies are removed afterwards.
    assert not any(path.parent.exists() for path, _ in saved)


def test_measure_latency_returns_a_median_over_at_least_five_runs():
    lat = verify.measure_latency(_conv_net(), threads=1, batch=2, budget_s=0.05)
    assert lat.runs >= 5 and lat.median_ms > 0 and lat.threads == 1 and lat.batch == 2


def test_compare_latency_sees_a_model_with_fewer_macs_as_faster():
    big = _conv_net(cin=32, cout=32, k=5, spatial=("N", 32, 32, 32))
    small = _conv_net(cin=32, cout=32, k=1, spatial=("N", 32, 32, 32))
    cmp = verify.compare_latency(big, small, threads=1, batch=1, budget_s=0.6)
    # 25x fewer MACs; even on a shared, noisy machine the medians keep the order.
    assert cmp.speedup > 2
    assert cmp.a.runs == cmp.b.runs >= 5
    assert 0 < cmp.self_ratio < 10
    d = cmp.to_dict()
    assert d["speedup"] == pytest.approx(d["before"] / d["after"]) and d["threads"] == 1
    assert "self-vs-self" in cmp.line()


def test_outputs_of_bounded_ops_are_measured_against_their_range():
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["": 17]>
        g (float[1,4] x) => (float[1,4] p, float[1,4] q) {
            s = Sigmoid(x)
            p = Reshape(s, shape)
            q = Relu(x)
            shape = Constant<value = int64[2] {1, 4}>()
        }""")
    floors = verify.output_scale_floors(model)
    assert floors == {"p": 1.0, "q": 0.0}
    tiny = np.full(4, 3e-6)
    assert verify.rel_err(tiny, tiny + 1e-7, floors["p"]) == pytest.approx(1e-7)
    assert verify.rel_err(tiny, tiny + 1e-7, floors["q"]) == pytest.approx(1e-7 / 3.1e-6, rel=0.05)


def _scaled_sigmoid(scale: float, shift: float) -> onnx.ModelProto:
    """y = Sigmoid(x * scale + shift): large logits, like a detector's probability map."""
    return onnx.parser.parse_model(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 64] x) => (float[N, 64] y) <float s = {{{scale}}}, float b = {{{shift}}}>
        {{
            z = Mul(x, s)
            l = Add(z, b)
            y = Sigmoid(l)
        }}""")


def test_a_sigmoid_output_is_compared_at_its_logits():
    """Logits of scale ~100 moved by 1e-6 of their scale (float32 rounding after a fold) move the
    probabilities by ~2.5e-5 near 0.5, which the gate accepts; a 1e-3 logit error it refuses."""
    ref = _scaled_sigmoid(100.0, 0.0)
    assert verify.bounded_arguments(ref) == {"y": ("l", ("", "Sigmoid", ()))}
    rounding = verify.verify_equivalent(ref, _scaled_sigmoid(100.0, 1e-4), n_random=3)
    assert rounding.ok, rounding.per_output
    a = 1 / (1 + np.exp(-0.0))
    assert abs(1 / (1 + np.exp(-1e-4)) - a) > 1e-5  # the probabilities alone would fail the gate
    wrong = verify.verify_equivalent(ref, _scaled_sigmoid(100.0, 0.5), n_random=3)
    assert not wrong.ok and wrong.per_output["y"] > 1e-3


def test_threshold_is_the_base_tolerance_where_the_model_rounds_less():
    res = verify.verify_equivalent(_conv_net(), _conv_net(), n_random=2)
    assert res.noise_floor < 1e-6
    assert res.tol == 1e-5


def test_deep_model_threshold_follows_its_own_rounding_and_still_refuses_a_change(tmp_path):
    """PP-OCR rec rounds at ~3e-6 between ORT's own optimised and unoptimised runs; an exact
    rewrite by another tool (ORT's basic optimiser, saved) passes, a 1% weight change does not."""
    from tests.cases import load_ppocr
    from models.ppocr import PPOCR_SHAPES

    rec = load_ppocr("rec")
    shapes = {rec.graph.input[0].name: list(PPOCR_SHAPES["rec"])}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(tmp_path / "basic.onnx")
    ort.InferenceSession(rec.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rewritten = onnx.load(str(tmp_path / "basic.onnx"))

    same = verify.verify_equivalent(rec, rewritten, shapes)
    assert same.ok and same.noise_floor > 1e-6
    assert same.tol == pytest.approx(max(1e-5, verify.NOISE_FACTOR * same.noise_floor))

    w = next(i for i in rewritten.graph.initializer if len(i.dims) == 4 and i.dims[0] > 8)
    w.CopyFrom(onh.from_array(onh.to_array(w) * np.float32(1.01), w.name))
    changed = verify.verify_equivalent(rec, rewritten, shapes)
    assert not changed.ok and changed.max_rel_err > 100 * changed.tol
