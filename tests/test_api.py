"""The Python API: inspect / cut / compress load, cut, verify, and write only what passed the gate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import smof_onnx.methods
from smof_onnx.passes import graph as pgraph
from smof_onnx.passes import pipeline
from smof_onnx.passes.analysis.flops import count_cost
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
    out, rep = api.compress(model, tmp_path / "o.onnx", method="fake", target_flops=0.62, seed=7, epochs=3,
                            report_path=tmp_path / "r.json")
    assert calls == [{"target_flops": 0.62, "seed": 7, "data": False, "epochs": 3}]
    assert rep["target_met"] is True and "allow_miss" not in rep
    assert conv_weights(out)["conv1"].shape == (8, 3, 1, 1)
    assert rep["quality"] == {"agreement": 0.99}
    assert rep["method"] == {"name": "fake", "target_flops": 0.62, "seed": 7, "epochs": 3, "rings": 1}
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


# --- where the results go: checked before any work, both written or neither ----------------------

def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in folder.rglob("*")}


def test_outputs_on_the_inputs_external_data_are_refused_and_the_input_kept(tmp_path, monkeypatch):
    # Writing over ext.bin (the input's weights) replaced it by the cut model: the input was destroyed.
    calls = []
    monkeypatch.setattr(smof_onnx.methods, "METHODS", {"fake": _fake_method(calls)}, raising=False)
    src = tmp_path / "ext.onnx"
    onnx.save_model(zeroed_net(), src, save_as_external_data=True, location="ext.bin", size_threshold=0)
    src2 = tmp_path / "ext2.onnx"  # its weights are where -o o.onnx puts its external data
    onnx.save_model(zeroed_net(), src2, save_as_external_data=True, location="o.onnx.data", size_threshold=0)
    (tmp_path / "sub").mkdir()
    before = _files(tmp_path)
    for output, report in [(tmp_path / "ext.bin", None), (tmp_path / "o.onnx", tmp_path / "ext.bin"),
                           (tmp_path / "sub" / ".." / "ext.bin", None)]:
        with pytest.raises(UsageError, match="holds the weights of the input model .*choose another output"):
            api.compress(src, output, method="fake", report_path=report)
        with pytest.raises(UsageError, match="holds the weights of the input model"):
            api.cut(src, output, report_path=report)
    # A link to the weights file, and a model whose OUT.data would be the input's weights file.
    (tmp_path / "link.bin").symlink_to(tmp_path / "ext.bin")
    with pytest.raises(UsageError, match="link.bin holds the weights"):
        api.cut(src, tmp_path / "link.bin")
    (tmp_path / "link.bin").unlink()
    with pytest.raises(UsageError, match="its external data.*holds the weights"):
        api.cut(src2, tmp_path / "o.onnx")
    assert calls == [] and _files(tmp_path) == before


def test_a_report_on_the_model_path_or_its_external_data_file_is_refused(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(zeroed_net(), src)
    with pytest.raises(UsageError, match="the report would replace the model.*--report .*o.report.json"):
        api.cut(src, tmp_path / "o.onnx", report_path=tmp_path / "." / "o.onnx")
    with pytest.raises(UsageError, match="o.onnx.data is where the weights of -o .* go"):
        api.cut(src, tmp_path / "o.onnx", report_path=tmp_path / "o.onnx.data")
    with pytest.raises(UsageError, match="would replace the model"):  # direct callers of cut_and_verify too
        api.cut_and_verify(zeroed_net(), zeroed_net(), output=tmp_path / "o.onnx", report_path=tmp_path / "o.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("output,report,expect", [
    ("out", None, r"-o .*out is a directory; give the file to write, e.g. -o .*out/m.onnx"),
    ("o.onnx", "out", r"--report .*out is a directory; give the file to write, e.g. --report .*out/report.json"),
    ("o.onnx", "afile/r.json", r"--report .*afile/r.json: .*afile is a file, not a directory"),
    ("afile/x/o.onnx", None, r"-o .*afile/x/o.onnx: .*afile is a file, not a directory"),
    ("new/", None, r"-o .*new/ names a directory"),
])
def test_unwritable_destinations_are_refused_before_the_method_runs(tmp_path, monkeypatch, output, report, expect):
    # Found only at write time, these cost the whole run and left the model without its report.
    calls = []
    monkeypatch.setattr(smof_onnx.methods, "METHODS", {"fake": _fake_method(calls)}, raising=False)
    src = tmp_path / "m.onnx"
    onnx.save(zeroed_net(), src)
    (tmp_path / "out").mkdir()
    (tmp_path / "afile").write_text("x")
    before = _files(tmp_path)
    with pytest.raises(UsageError, match=expect):
        api.compress(src, f"{tmp_path}/{output}", method="fake",  # a string: Path drops a trailing slash
                     report_path=None if report is None else tmp_path / report)
    assert calls == [] and _files(tmp_path) == before


def test_an_output_in_a_new_folder_is_still_created(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(zeroed_net(), src)
    api.cut(src, tmp_path / "a" / "b" / "o.onnx", report_path=tmp_path / "c" / "r.json")
    assert (tmp_path / "a" / "b" / "o.onnx").is_file() and (tmp_path / "c" / "r.json").is_file()


def test_a_failed_report_write_removes_the_model_and_what_the_run_created(tmp_path, monkeypatch):
    # The report's place turns into a folder between the checks and the write (another process).
    src = tmp_path / "m.onnx"
    onnx.save(zeroed_net(), src)
    real_save = pgraph.save_model

    def save_then_block(model, path, **k):
        out = real_save(model, path, **k)
        (tmp_path / "r.json").mkdir()
        return out
    monkeypatch.setattr(pgraph, "save_model", save_then_block)
    with pytest.raises(UsageError, match="--report .*r.json: could not write .*nothing from this run was kept"):
        api.cut(src, tmp_path / "new" / "o.onnx", report_path=tmp_path / "r.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "r.json"]  # "new" removed, it was ours
    assert not any((tmp_path / "r.json").iterdir())


def test_a_failed_model_write_leaves_no_report_and_no_external_data(tmp_path, monkeypatch):
    src = tmp_path / "m.onnx"
    onnx.save(zeroed_net(cout=16), src)  # a 3.5 kB weight: over the lowered limit below
    (tmp_path / "r.json").write_text("old report\n")
    monkeypatch.setattr(pgraph, "PROTOBUF_LIMIT", 1000 + (64 << 20))  # written with external data
    real_replace = pgraph.os.replace
    data_placed = []

    def full_disk(a, b):  # OUT.data is placed, then renaming the model fails
        if Path(b) == tmp_path / "sub" / "o.onnx":
            data_placed.append((tmp_path / "sub" / "o.onnx.data").exists())
            raise OSError(28, "No space left on device")
        return real_replace(a, b)
    monkeypatch.setattr(pgraph.os, "replace", full_disk)
    with pytest.raises(UsageError, match="-o .*o.onnx: could not write \\(No space left on device\\)"):
        api.cut(src, tmp_path / "sub" / "o.onnx", report_path=tmp_path / "r.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "r.json"]
    assert data_placed == [True] and (tmp_path / "r.json").read_text() == "old report\n"


def test_a_method_that_diverged_to_nan_weights_is_refused_and_nothing_written(monkeypatch, tmp_path):
    """The gate compares the cut with the zeroed model, so NaN in both would pass it: the
    weights a method returns must be finite where the input's were."""
    def diverged(model, **_):
        w = onh.to_array(model.graph.initializer[0]).copy()
        w[0, 0, 0, 0] = np.nan
        model.graph.initializer[0].CopyFrom(onh.from_array(w, model.graph.initializer[0].name))
        return model

    monkeypatch.setattr(smof_onnx.methods, "METHODS", {"diverged": diverged}, raising=False)
    with pytest.raises(VerificationError, match="non-finite weights .* in 1 tensor.*'w1'.*Lower --lr"):
        api.compress(zeroed_net(), tmp_path / "o.onnx", method="diverged", report_path=tmp_path / "r.json")
    assert not (tmp_path / "o.onnx").exists() and not (tmp_path / "r.json").exists()
