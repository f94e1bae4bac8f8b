"""The command line: subcommands, exit codes 0/1/2/3, atomic output, and the input left alone."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
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
from smof_onnx.cli import main
from tests.helpers import assert_equivalent, conv_weights, initializer, random_inputs, run
from tests.test_api import _fake_method, zeroed_net

F = onnx.TensorProto.FLOAT


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save(tmp_path: Path, model: onnx.ModelProto, name: str = "in.onnx") -> Path:
    path = tmp_path / name
    onnx.save(model, path)
    return path


def _cut(tmp_path, model, *extra):
    src = _save(tmp_path, model)
    digest = _sha(src)
    code = main(["cut", str(src), "-o", str(tmp_path / "out.onnx"), "--report", str(tmp_path / "r.json"), *extra])
    assert _sha(src) == digest  # the input file is never modified
    return code


# --- usage and bad input: exit 2 ---------------------------------------------------------------

def test_python_m_smof_onnx_help_lists_the_subcommands():
    res = subprocess.run([sys.executable, "-m", "smof_onnx", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for command in ("inspect", "cut", "compress", "bench"):
        assert command in res.stdout


def test_bad_usage_is_exit_2(capsys):
    assert main(["cut"]) == 2
    assert "required" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert main(["compress", "m.onnx", "-o", "o.onnx", "--target-flops", "half"]) == 2


def test_threads_reaches_the_method_and_zero_threads_is_exit_2(tmp_path, capsys, monkeypatch):
    from smof_onnx import methods
    from tests.test_selection_gates import tiny_cnn

    src = tmp_path / "m.onnx"
    onnx.save(tiny_cnn(), str(src))
    assert main(["compress", str(src), "-o", str(tmp_path / "o.onnx"), "--method", "l2", "--threads", "0"]) == 2
    assert "--threads 0" in capsys.readouterr().err
    seen = {}
    real = methods.METHODS["l2"]
    monkeypatch.setitem(methods.METHODS, "l2", lambda m, **kw: seen.update(kw) or real(m, **kw))
    data = tmp_path / "d.npz"  # l2 reads --threads only when it fine-tunes, i.e. with data
    np.savez(data, x=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    assert main(["compress", str(src), "-o", str(tmp_path / "o.onnx"), "--method", "l2", "--threads", "1",
                 "--data", str(data), "--finetune-epochs", "1"]) == 0
    assert seen["threads"] == 1


def test_feature_distill_reaches_the_method_and_a_negative_weight_is_exit_2(tmp_path, capsys, monkeypatch):
    from smof_onnx import methods
    from tests.test_selection_gates import tiny_cnn

    src = tmp_path / "m.onnx"
    onnx.save(tiny_cnn(), str(src))
    out = tmp_path / "o.onnx"
    assert main(["compress", str(src), "-o", str(out), "--method", "l2", "--feature-distill", "-1"]) == 2
    assert "--feature-distill -1" in capsys.readouterr().err and not out.exists()
    seen = {}
    real = methods.METHODS["l2"]
    monkeypatch.setitem(methods.METHODS, "l2", lambda m, **kw: seen.update(kw) or real(m, **kw))
    data = tmp_path / "d.npz"  # l2 reads --feature-distill only when it fine-tunes, i.e. with data
    np.savez(data, x=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    assert main(["compress", str(src), "-o", str(out), "--method", "l2", "--feature-distill", "0",
                 "--data", str(data), "--finetune-epochs", "1"]) == 0
    assert seen["feature_distill"] == 0


@pytest.mark.parametrize("content,expect", [
    (None, "no such file"),
    (b"this is not a model\n" * 20, "not a readable ONNX model"),
])
def test_missing_and_non_onnx_files_are_exit_2_with_the_path(tmp_path, capsys, content, expect):
    src = tmp_path / "m.onnx"
    if content is not None:
        src.write_bytes(content)
    assert main(["cut", str(src), "-o", str(tmp_path / "o.onnx")]) == 2
    err = capsys.readouterr().err
    assert str(src) in err and expect in err
    assert not (tmp_path / "o.onnx").exists()


def test_a_truncated_model_is_exit_2(tmp_path, capsys):
    good = zeroed_net().SerializeToString()
    src = tmp_path / "t.onnx"
    src.write_bytes(good[: len(good) // 2])
    assert main(["inspect", str(src)]) == 2
    assert "t.onnx" in capsys.readouterr().err


def test_output_equal_to_input_is_exit_2_and_the_input_is_untouched(tmp_path, capsys):
    src = _save(tmp_path, zeroed_net())
    digest = _sha(src)
    assert main(["cut", str(src), "-o", str(src)]) == 2
    assert "is the input model" in capsys.readouterr().err
    assert _sha(src) == digest and sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_symbolic_spatial_dims_without_input_shape_is_exit_2(tmp_path, capsys):
    src = _save(tmp_path, zeroed_net(spatial=("N", 3, "H", "W")))
    assert main(["cut", str(src), "-o", str(tmp_path / "o.onnx")]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert main(["cut", str(src), "-o", str(tmp_path / "o.onnx"), "--input-shape", "1x3x8x8"]) == 0


# --- cut: exit 0 -------------------------------------------------------------------------------

def test_cut_prints_the_table_writes_model_and_report(tmp_path, capsys):
    assert _cut(tmp_path, zeroed_net()) == 0
    out, err = capsys.readouterr()
    assert "conv1" in out and "3x3 -> 1x1" in out and "total" in out
    assert "wrote" in err
    model = pgraph.load_model(tmp_path / "out.onnx")
    assert_equivalent(zeroed_net(), model)
    # Graph input and output names, dtypes and shapes are preserved.
    for kind in ("input", "output"):
        assert [v.SerializeToString() for v in getattr(model.graph, kind)] == \
            [v.SerializeToString() for v in getattr(zeroed_net().graph, kind)]
    rep = json.loads((tmp_path / "r.json").read_text())
    for key in ("flops", "params", "verify", "layers", "frozen"):
        assert key in rep
    assert set(rep["flops"]) >= {"before", "after", "ratio"} and set(rep["params"]) >= {"before", "after"}
    assert rep["flops"]["ratio"] == pytest.approx(rep["flops"]["after"] / rep["flops"]["before"])
    assert set(rep["verify"]) >= {"max_rel_err", "inputs"}
    layer_keys = {"name", "op", "kernel_before", "kernel_after", "in_before", "in_after", "out_before",
                  "out_after", "flops_before", "flops_after"}
    assert all(set(row) >= layer_keys for row in rep["layers"])
    assert sum(row["flops_after"] for row in rep["layers"]) == rep["flops"]["after"]
    assert all(set(f) >= {"where", "reason"} for f in rep["frozen"])


@pytest.mark.parametrize("opset", range(11, 22))
def test_opsets_11_to_21(tmp_path, opset):
    model = zeroed_net(opset=opset)
    assert _cut(tmp_path, model) == 0
    out = pgraph.load_model(tmp_path / "out.onnx")
    assert [(o.domain, o.version) for o in out.opset_import] == [("", opset)]
    assert conv_weights(out)["conv1"].shape[2:] == (1, 1)
    assert_equivalent(model, out)


def _lrn_net() -> onnx.ModelProto:
    """x -> conv_a (ring zero, filters 6,7 zero) -> LRN -> conv_b (filters 5..7 zero) -> Relu -> conv_c -> y.

    LRN mixes neighbouring channels: no rule may drop a channel through it, so conv_a's output
    group is frozen; conv_b's zero filters are in a group of their own and go."""
    rng = np.random.default_rng(1)
    wa = rng.standard_normal([8, 3, 3, 3]).astype(np.float32)
    wa[:, :, [0, 2], :] = 0
    wa[:, :, :, [0, 2]] = 0
    wa[6:] = 0
    wb = rng.standard_normal([8, 8, 3, 3]).astype(np.float32)
    wb[5:] = 0
    wc = rng.standard_normal([4, 8, 3, 3]).astype(np.float32)
    nodes = [oh.make_node("Conv", ["x", "wa"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             oh.make_node("LRN", ["a"], ["l"], name="lrn", size=3),
             oh.make_node("Conv", ["l", "wb"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["b"], ["r"], name="relu"),
             oh.make_node("Conv", ["r", "wc"], ["y"], name="conv_c", pads=[1, 1, 1, 1])]
    g = oh.make_graph(nodes, "lrn_net", [oh.make_tensor_value_info("x", F, ["N", 3, 8, 8])],
                      [oh.make_tensor_value_info("y", F, ["N", 4, 8, 8])],
                      [onh.from_array(wa, "wa"), onh.from_array(wb, "wb"), onh.from_array(wc, "wc")])
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])


def test_an_op_without_a_rule_freezes_its_group_and_the_rest_is_cut(tmp_path):
    assert _cut(tmp_path, _lrn_net()) == 0
    out = pgraph.load_model(tmp_path / "out.onnx")
    assert_equivalent(_lrn_net(), out)
    w = conv_weights(out)
    assert w["conv_a"].shape == (8, 3, 1, 1)   # kernel cut; channels kept: the LRN froze them
    assert w["conv_b"].shape == (5, 8, 3, 3)   # its zero filters are gone
    assert w["conv_c"].shape == (4, 5, 3, 3)
    frozen = json.loads((tmp_path / "r.json").read_text())["frozen"]
    assert any("lrn" in f["where"] or "LRN" in f["reason"] for f in frozen), frozen


def _if_net() -> onnx.ModelProto:
    """conv1 (filters 6,7 zero) feeds an If whose branches convolve it with their own weights
    (the then-branch's weight has a zero ring). Inside subgraphs nothing may be cut, and conv1's
    channels are read there, so they must stay."""
    rng = np.random.default_rng(2)
    w1 = rng.standard_normal([8, 3, 3, 3]).astype(np.float32)
    w1[6:] = 0
    wt = rng.standard_normal([4, 8, 3, 3]).astype(np.float32)
    wt[:, :, [0, 2], :] = 0
    we = rng.standard_normal([4, 8, 3, 3]).astype(np.float32)

    def branch(name, w):
        return oh.make_graph([oh.make_node("Conv", ["r", f"{name}_w"], [f"{name}_y"], name=f"{name}_conv",
                                           pads=[1, 1, 1, 1])], name, [],
                             [oh.make_tensor_value_info(f"{name}_y", F, ["N", 4, 8, 8])],
                             [onh.from_array(w, f"{name}_w")])
    nodes = [oh.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c1"], ["r"], name="relu1"),
             oh.make_node("If", ["cond"], ["y"], name="branch", then_branch=branch("then", wt),
                          else_branch=branch("else", we))]
    g = oh.make_graph(nodes, "if_net", [oh.make_tensor_value_info("x", F, ["N", 3, 8, 8]),
                                        oh.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
                      [oh.make_tensor_value_info("y", F, ["N", 4, 8, 8])], [onh.from_array(w1, "w1")])
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])


def test_if_subgraphs_are_left_untouched_with_a_reason(tmp_path):
    model = _if_net()
    assert _cut(tmp_path, model) == 0
    out = pgraph.load_model(tmp_path / "out.onnx")
    for cond in (True, False):
        feeds = {**random_inputs(model, seed=3), "cond": np.array(cond)}
        a, b = run(model, feeds), run(out, feeds)
        assert np.max(np.abs(a["y"] - b["y"])) <= 1e-5 * np.max(np.abs(a["y"]))
    if_node = next(n for n in out.graph.node if n.op_type == "If")
    then = next(a.g for a in if_node.attribute if a.name == "then_branch")
    assert onh.to_array(then.initializer[0]).shape == (4, 8, 3, 3)
    assert initializer(out, next(n for n in out.graph.node if n.name == "conv1").input[1]).shape[0] == 8
    frozen = json.loads((tmp_path / "r.json").read_text())["frozen"]
    assert any("branch" in f["where"] or "If" in f["reason"] for f in frozen), frozen


def _quantized_net() -> onnx.ModelProto:
    """conv1 (filter 3 zero) -> QuantizeLinear -> QLinearConv -> DequantizeLinear -> conv2 (zero ring).

    The quantized ops carry scales and zero points per tensor: their channels are not modelled,
    so conv1's zero filter must stay (frozen, with the reason), while conv2's ring still goes.
    """
    rng = np.random.default_rng(4)
    w1 = rng.standard_normal([4, 3, 3, 3]).astype(np.float32)
    w1[3] = 0
    w2 = rng.standard_normal([2, 4, 3, 3]).astype(np.float32)
    w2[:, :, [0, 2], :] = 0
    w2[:, :, :, [0, 2]] = 0
    wq = rng.integers(-20, 20, [4, 4, 1, 1]).astype(np.int8)
    u8, i8 = lambda v, n: onh.from_array(np.array(v, np.uint8), n), lambda v, n: onh.from_array(np.array(v, np.int8), n)
    f32 = lambda v, n: onh.from_array(np.array(v, np.float32), n)
    inits = [onh.from_array(w1, "w1"), onh.from_array(w2, "w2"), onh.from_array(wq, "wq"),
             f32(0.05, "xs"), u8(128, "xz"), f32(0.02, "ws"), i8(0, "wz"), f32(0.1, "ys"), u8(128, "yz")]
    nodes = [oh.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             oh.make_node("QuantizeLinear", ["c1", "xs", "xz"], ["q1"], name="quant"),
             oh.make_node("QLinearConv", ["q1", "xs", "xz", "wq", "ws", "wz", "ys", "yz"], ["q2"], name="qconv"),
             oh.make_node("DequantizeLinear", ["q2", "ys", "yz"], ["d2"], name="dequant"),
             oh.make_node("Conv", ["d2", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    g = oh.make_graph(nodes, "qnet", [oh.make_tensor_value_info("x", F, ["N", 3, 8, 8])],
                      [oh.make_tensor_value_info("y", F, ["N", 2, 8, 8])], inits)
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 13)])


def test_quantized_operators_are_left_untouched_with_a_reason(tmp_path):
    model = _quantized_net()
    assert _cut(tmp_path, model) == 0
    out = pgraph.load_model(tmp_path / "out.onnx")
    feeds = random_inputs(model, seed=5)
    a, b = run(model, feeds)["y"], run(out, feeds)["y"]
    assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(a))
    weights = conv_weights(out)
    assert weights["conv1"].shape == (4, 3, 3, 3)  # its zero filter feeds the quantized chain
    assert weights["conv2"].shape == (2, 4, 1, 1)  # the float conv after it is still cut
    assert np.array_equal(initializer(out, "wq"), initializer(model, "wq"))
    frozen = json.loads((tmp_path / "r.json").read_text())["frozen"]
    assert any("quant" in f["where"] and "quantized" in f["reason"] for f in frozen), frozen


def test_over_2gb_models_are_written_with_external_data(tmp_path, monkeypatch):
    # The >2 GB path, with the limit lowered so a 3.5 kB weight counts as "too big".
    monkeypatch.setattr(pgraph, "PROTOBUF_LIMIT", 1000 + (64 << 20))
    model = zeroed_net(cout=16)
    assert _cut(tmp_path, model) == 0
    assert (tmp_path / "out.onnx.data").exists()
    assert_equivalent(model, pgraph.load_model(tmp_path / "out.onnx"))


def test_an_input_with_external_data_is_read_and_left_alone(tmp_path):
    src = tmp_path / "ext.onnx"
    onnx.save_model(zeroed_net(), src, save_as_external_data=True, location="ext.bin", size_threshold=0)
    digests = (_sha(src), _sha(tmp_path / "ext.bin"))
    assert main(["cut", str(src), "-o", str(tmp_path / "o.onnx")]) == 0
    assert (_sha(src), _sha(tmp_path / "ext.bin")) == digests


def test_outputs_on_the_inputs_external_data_are_exit_2_and_the_input_is_untouched(tmp_path, capsys, monkeypatch):
    # -o / --report on ext.bin replaced the input's weights by the result, and exited 0.
    calls = []
    monkeypatch.setattr(smof_onnx.methods, "METHODS", {"fake": _fake_method(calls)}, raising=False)
    src = tmp_path / "ext.onnx"
    onnx.save_model(zeroed_net(), src, save_as_external_data=True, location="ext.bin", size_threshold=0)
    digests = (_sha(src), _sha(tmp_path / "ext.bin"))
    for extra in (["-o", str(tmp_path / "ext.bin")],
                  ["-o", str(tmp_path / "o.onnx"), "--report", str(tmp_path / "ext.bin")]):
        assert main(["compress", str(src), *extra, "--method", "fake", "--target-flops", "1.0"]) == 2
        assert "holds the weights of the input model" in capsys.readouterr().err
    assert calls == [] and (_sha(src), _sha(tmp_path / "ext.bin")) == digests
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.bin", "ext.onnx"]


@pytest.mark.parametrize("output,report,expect", [
    ("o.onnx", "o.onnx", "the report would replace the model"),   # the JSON silently replaced the model
    ("o.onnx", "o.onnx.data", "is where the weights of -o"),
    ("o.onnx", "out", "is a directory; give the file to write"),  # found after the model was written: exit 1
    ("o.onnx", "afile/r.json", "is a file, not a directory"),
    ("out", None, "is a directory; give the file to write"),      # found after all the work: exit 1
])
def test_bad_destinations_are_exit_2_before_the_method_runs(tmp_path, capsys, monkeypatch, output, report, expect):
    calls = []
    monkeypatch.setattr(smof_onnx.methods, "METHODS", {"fake": _fake_method(calls)}, raising=False)
    src = _save(tmp_path, zeroed_net(zero_ring=False, zero_filters=False))
    (tmp_path / "out").mkdir()
    (tmp_path / "afile").write_text("x")
    argv = ["compress", str(src), "-o", str(tmp_path / output), "--method", "fake"]
    assert main(argv + ([] if report is None else ["--report", str(tmp_path / report)])) == 2
    assert expect in capsys.readouterr().err
    assert calls == [] and sorted(p.name for p in tmp_path.iterdir()) == ["afile", "in.onnx", "out"]
    assert list((tmp_path / "out").iterdir()) == []


def test_a_write_failing_late_is_exit_2_and_leaves_neither_file(tmp_path, capsys, monkeypatch):
    src = _save(tmp_path, zeroed_net())
    real_save = pgraph.save_model

    def save_then_block(model, path, **k):  # the report's place becomes a folder after the checks
        out = real_save(model, path, **k)
        if Path(path) == tmp_path / "o.onnx":
            (tmp_path / "r.json").mkdir()
        return out
    monkeypatch.setattr(pgraph, "save_model", save_then_block)
    assert main(["cut", str(src), "-o", str(tmp_path / "o.onnx"), "--report", str(tmp_path / "r.json")]) == 2
    assert "nothing from this run was kept" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "r.json"]


# --- verification failure: exit 3; internal error: exit 1 -----------------------------------------

def _break_cut(monkeypatch):
    real_cut = pipeline.cut

    def broken_cut(graph, *a, **k):
        out = real_cut(graph, *a, **k)
        conv = next(n for n in out.graph.nodes if n.op == "Conv")
        conv.inputs[1].values = conv.inputs[1].values * 1.01
        return out
    monkeypatch.setattr(pipeline, "cut", broken_cut)


def test_a_failed_gate_is_exit_3_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    _break_cut(monkeypatch)
    assert _cut(tmp_path, zeroed_net()) == 3
    assert "verification failed" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_an_internal_error_is_exit_1_with_a_message_and_traceback_only_with_debug(tmp_path, monkeypatch, capsys):
    def crash(*a, **k):
        raise RuntimeError("boom")
    monkeypatch.setattr(pipeline, "cut", crash)
    assert _cut(tmp_path, zeroed_net()) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: boom" in err and "report" in err and "Traceback" not in err
    assert main(["--debug", "cut", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "o.onnx")]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert main(["cut", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "o.onnx"), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


# --- inspect, compress, bench --------------------------------------------------------------------

def test_inspect_table_and_json(tmp_path, capsys):
    src = _save(tmp_path, zeroed_net())
    assert main(["inspect", str(src)]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "conv2" in out and "total" in out
    assert main(["inspect", str(src), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in info["layers"]] == ["conv1", "conv2"] and info["flops"] > 0


def test_compress_passes_method_options_through(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(smof_onnx.methods, "METHODS", {"fake": _fake_method(calls)}, raising=False)
    src = _save(tmp_path, zeroed_net(zero_ring=False, zero_filters=False))
    code = main(["compress", str(src), "-o", str(tmp_path / "o.onnx"), "--method", "fake", "--target-flops", "0.3",
                 "--epochs", "3", "--no-kernel", "--lr", "0.01", "--seed", "5", "--report", str(tmp_path / "r.json"),
                 "--allow-miss"])
    assert code == 0
    # stderr is not a terminal here: no progress bars
    assert calls == [{"target_flops": 0.3, "seed": 5, "data": False, "epochs": 3, "kernel": False, "lr": 0.01,
                      "progress_bars": False}]
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["quality"] == {"agreement": 0.99} and rep["method"]["epochs"] == 3
    assert rep["target_met"] is False and rep["allow_miss"] is True and "progress_bars" not in rep["method"]
    assert "warning: the target was missed (the cut keeps 0.619" in capsys.readouterr().err
    assert main(["compress", str(src), "-o", str(tmp_path / "o2.onnx"), "--method", "nope"]) == 2
    assert main(["compress", str(src), "-o", str(tmp_path / "o2.onnx"), "--method", "fake",
                 "--target-flops", "1.5"]) == 2


def test_bench_one_model_and_two_side_by_side(tmp_path, capsys):
    a = _save(tmp_path, zeroed_net(), "a.onnx")
    assert main(["cut", str(a), "-o", str(tmp_path / "b.onnx")]) == 0
    capsys.readouterr()
    assert main(["bench", str(a), "--seconds", "0.1", "--threads", "1"]) == 0
    assert "ms median" in capsys.readouterr().out
    assert main(["bench", str(a), str(tmp_path / "b.onnx"), "--seconds", "0.2", "--threads", "1", "--batch", "2",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["threads"] == 1 and res["batch"] == 2 and res["self_ratio"] > 0 and res["speedup"] > 0
    cut_flops = count_cost(pgraph.load_model(tmp_path / "b.onnx")).flops
    assert res["flops_ratio"] == pytest.approx(cut_flops / count_cost(zeroed_net()).flops)
    assert main(["bench", str(a), "--threads", "0"]) == 2
