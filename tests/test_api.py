"""The Python API: inspect / cut / compress load, cut, verify, and write only what passed the gate."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import smof_onnx.methods
from passes import graph as pgraph
from passes import pipeline
from passes.analysis.flops import count_cost
from smof_onnx import api
from smof_onnx.errors import ModelError, UsageError, VerificationError
from tests.helpers import assert_equivalent, conv_weights

F = onnx.TensorProto.FLOAT


def zeroed_net(opset: int = 17, spatial=("N", 3, 8, 8), zero_ring: bool = True, zero_filters: bool = True,
               seed: int = 0, cout: int = 4) -> onnx.ModelProto:
    """x -> conv1 (8 filters 3x3) -> Relu -> conv2 (``cout`` filters 3x3) -> y.

    conv1's outer ring is zero in every filter (a 1x1 kernel remains) and its filters 6, 7 are
    zero with their bias (two channels the cut can remove)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal([8, 3, 3, 3]).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    if zero_ring:
        w1[:, :, [0, 2], :] = 0
        w1[:, :, :, [0, 2]] = 0
    if zero_filters:
        w1[6:] = 0
        b1[6:] = 0
    w2 = rng.standard_normal([cout, 8, 3, 3]).astype(np.float32)
    nodes = [oh.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c1"], ["r"], name="relu1"),
             oh.make_node("Conv", ["r", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    out_shape = [spatial[0], cout, spatial[2], spatial[3]]
    g = oh.make_graph(nodes, "net", [oh.make_tensor_value_info("x", F, list(spatial))],
                      [oh.make_tensor_value_info("y", F, out_shape)],
                      [onh.from_array(w1, "w1"), onh.from_array(b1, "b1"), onh.from_array(w2, "w2")])
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)])


def test_cut_returns_an_equivalent_smaller_model_and_a_consistent_report():
    model = zeroed_net()
    before = model.SerializeToString()
    out, rep = api.cut(model)
    assert model.SerializeToString() == before  # the caller's proto is not modified
    assert_equivalent(model, out)
    w = conv_weights(out)
    assert w["conv1"].shape == (6, 3, 1, 1)
    assert w["conv2"].shape == (4, 6, 3, 3)
    assert rep["flops"]["before"] == count_cost(model).flops
    assert rep["flops"]["after"] == count_cost(out).flops
    assert rep["flops"]["ratio"] == pytest.approx(rep["flops"]["after"] / rep["flops"]["before"])
    assert rep["flops"]["after"] == 2 * 6 * 64 * 3 + 2 * 4 * 64 * 6 * 9
    assert rep["verify"]["max_rel_err"] <= 1e-5 and rep["verify"]["inputs"] == 2
    rows = {r["name"]: r for r in rep["layers"]}
    assert rows["conv1"]["kernel_before"] == [3, 3] and rows["conv1"]["kernel_after"] == [1, 1]
    assert (rows["conv1"]["out_before"], rows["conv1"]["out_after"]) == (8, 6)
    assert (rows["conv2"]["in_before"], rows["conv2"]["in_after"]) == (8, 6)


def test_cut_writes_model_and_report_and_keeps_the_interface(tmp_path):
    src = tmp_path / "in.onnx"
    onnx.save(zeroed_net(), src)
    digest = src.read_bytes()
    out, rep = api.cut(src, tmp_path / "out.onnx", report_path=tmp_path / "r.json")
    assert src.read_bytes() == digest
    written = pgraph.load_model(tmp_path / "out.onnx")
    assert written.SerializeToString() == out.SerializeToString()
    assert json.loads((tmp_path / "r.json").read_text())["flops"] == rep["flops"]
    for kind in ("input", "output"):
        assert [v.SerializeToString() for v in getattr(written.graph, kind)] == \
            [v.SerializeToString() for v in getattr(zeroed_net().graph, kind)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx", "r.json"]


def test_a_failed_gate_raises_and_writes_nothing(tmp_path, monkeypatch):
    real_cut = pipeline.cut

    def broken_cut(graph, *a, **k):  # a wrong cut: one weight changed after the exact passes
        out = real_cut(graph, *a, **k)
        conv = next(n for n in out.graph.nodes if n.op == "Conv")
        conv.inputs[1].values = conv.inputs[1].values * 1.01
        return out
    monkeypatch.setattr(pipeline, "cut", broken_cut)
    with pytest.raises(VerificationError, match="max relative error .* > 1e-05") as info:
        api.cut(zeroed_net(), tmp_path / "out.onnx", report_path=tmp_path / "r.json")
    assert info.value.result is not None and not info.value.result.ok
    assert list(tmp_path.iterdir()) == []


def test_an_interface_change_fails_the_gate(monkeypatch):
    real_cut = pipeline.cut

    def renaming_cut(graph, *a, **k):
        out = real_cut(graph, *a, **k)
        out.graph.outputs[0].name = "renamed"
        return out
    monkeypatch.setattr(pipeline, "cut", renaming_cut)
    with pytest.raises(VerificationError, match="interface"):
        api.cut(zeroed_net())


def test_symbolic_spatial_dims_need_input_shapes_as_dict_or_spec():
    model = zeroed_net(spatial=("N", 3, "H", "W"))
    with pytest.raises(ModelError, match="'x'.*--input-shape"):
        api.cut(model)
    out, rep = api.cut(model, input_shapes=["x=1x3x10x12"])
    assert rep["input_shapes"] == {"x": [1, 3, 10, 12]}
    assert conv_weights(out)["conv1"].shape == (6, 3, 1, 1)
    _, rep2 = api.cut(model, input_shapes={"x": [1, 3, 10, 12]})
    assert rep2["flops"] == rep["flops"]
    with pytest.raises(ModelError, match="inputs are"):
        api.cut(model, input_shapes={"nope": [1, 3, 4, 4]})


def test_calibration_data_joins_the_random_inputs_of_the_gate():
    data = {"x": np.random.default_rng(3).standard_normal([4, 3, 8, 8]).astype(np.float32)}
    _, rep = api.cut(zeroed_net(), data=data)
    assert rep["verify"]["inputs"] == 2 + 2


def test_output_path_equal_to_the_input_is_refused(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(zeroed_net(), src)
    before = src.read_bytes()
    with pytest.raises(UsageError, match="is the input model"):
        api.cut(src, tmp_path / "." / "m.onnx")
    assert src.read_bytes() == before


def test_inspect_reports_layers_costs_and_groups():
    info = api.inspect(zeroed_net())
    cost = count_cost(zeroed_net())
    assert info["flops"] == cost.flops and info["params"] == cost.params
    assert [r["name"] for r in info["layers"]] == ["conv1", "conv2"]
    assert info["layers"][0]["kernel"] == [3, 3] and info["layers"][0]["out_channels"] == 8
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 3, 8, 8]}]
    assert isinstance(info["channel_groups"], list) and isinstance(info["frozen"], list)
    # The group feeding the graph output is frozen, with a reason.
    assert any(g["frozen"] and g["reason"] for g in info["channel_groups"])
    json.dumps(info)


def _fake_method(calls):
    def method(model, *, data, target_flops, input_shapes, seed, **options):
        calls.append({"target_flops": target_flops, "seed": seed, "data": data is not None, **options})
        w = onh.to_array(model.graph.initializer[0]).copy()  # w1: zero its ring
        w[:, :, [0, 2], :] = 0
        w[:, :, :, [0, 2]] = 0
        model.graph.initializer[0].CopyFrom(onh.from_array(w, "w1"))
        return model, {"quality": {"agreement": 0.99}, "settings": {"rings": 1}}
    return method


def test_compress_runs_the_method_then_the_same_cut_and_gate(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(smof_onnx.methods, "METHODS", {"fake": _fake_method(calls)}, raising=False)
    model = zeroed_net(zero_ring=False, zero_filters=False)
    out, rep = api.compress(model, tmp_path / "o.onnx", method="fake", target_flops=0.4, seed=7, epochs=3,
                            report_path=tmp_path / "r.json")
    assert calls == [{"target_flops": 0.4, "seed": 7, "data": False, "epochs": 3}]
    assert conv_weights(out)["conv1"].shape == (8, 3, 1, 1)
    assert rep["quality"] == {"agreement": 0.99}
    assert rep["method"] == {"name": "fake", "target_flops": 0.4, "seed": 7, "epochs": 3, "rings": 1}
    assert rep["flops"]["before"] == count_cost(model).flops  # the input model's, not the zeroed one's
    assert json.loads((tmp_path / "r.json").read_text())["method"]["name"] == "fake"


def test_compress_refuses_unknown_methods_and_targets_outside_0_1(monkeypatch):
    monkeypatch.setattr(smof_onnx.methods, "METHODS", {"fake": _fake_method([])}, raising=False)
    with pytest.raises(UsageError, match="unknown; available: \\['fake'\\]"):
        api.compress(zeroed_net(), method="nope")
    for bad in (0, 1.5, -0.1):
        with pytest.raises(UsageError, match="target-flops"):
            api.compress(zeroed_net(), method="fake", target_flops=bad)


def test_models_with_external_data_load_cut_and_save(tmp_path):
    src = tmp_path / "ext.onnx"
    onnx.save_model(zeroed_net(), src, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    out, _ = api.cut(src, tmp_path / "out" / "cut.onnx")
    assert_equivalent(zeroed_net(), pgraph.load_model(tmp_path / "out" / "cut.onnx"))


def test_compress_reports_the_methods_per_layer_choices(tmp_path):
    model = pgraph.load_model("models/default/resnet20_fmnist.onnx")
    _, rep = api.compress(model, method="l2", target_flops=0.5)
    choices = rep["method"]["choices"]
    assert choices and all({"name", "kernel_before", "kernel_after"} <= set(c) for c in choices)
    assert rep["flops"]["ratio"] <= 0.5 + 0.01
