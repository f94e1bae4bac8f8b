"""smof_onnx.methods.qr: pivoted-QR channel selection + least-squares reconstruction (CHaPR).

Specification: zero-contribution and redundant channels are dropped without error; planted
informative channels are the ones kept; the *cut* model meets the FLOPs target, residual
streams included; least squares beats plain zeroing; and the whole path runs without torch.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from smof_onnx.passes import pipeline
from smof_onnx.passes.analysis.flops import count_cost
from smof_onnx.passes.graph import to_graph, to_model
from smof_onnx.errors import UsageError
from smof_onnx.methods.qr import QRConfig, run
from smof_onnx.methods.qr_select import least_squares, pivoted_order
from tests.helpers import assert_equivalent, initializer, max_rel_err
from tests.helpers import run as ort_run

ROOT = Path(__file__).resolve().parents[1]


def _model(nodes, inits, in_shape, out_rank=4):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *in_shape[1:]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N"] + [None] * (out_rank - 1))],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _conv(x, y, w, name, k):
    return helper.make_node("Conv", [x, w, w + "_b"], [y], name=name, pads=[k // 2] * 4)


def chain(w1, b1, w2, b2):
    """input -> conv1 -> Relu -> conv2 -> output (conv2's output is frozen: one unit, conv1's)."""
    nodes = [_conv("input", "c1", "W1", "conv1", w1.shape[-1]), helper.make_node("Relu", ["c1"], ["a1"], name="r1"),
             _conv("a1", "output", "W2", "conv2", w2.shape[-1])]
    return _model(nodes, {"W1": w1, "W1_b": b1, "W2": w2, "W2_b": b2}, (1, w1.shape[1], 8, 8))


def resnet(seed=0, c=8, blocks=2):
    """stem conv -> [conv a, Relu, conv b, Add(stream), Relu] x blocks -> GAP -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    inits = {"Ws": rng.standard_normal((c, 3, 3, 3)) * 0.4, "Ws_b": rng.standard_normal(c) * 0.1}
    nodes = [_conv("input", "s", "Ws", "stem", 3), helper.make_node("Relu", ["s"], ["x0"], name="stem_relu")]
    for i in range(blocks):
        for part in "ab":
            inits[f"W{i}{part}"] = rng.standard_normal((c, c, 3, 3)) * (0.25 if part == "a" else 0.1)
            inits[f"W{i}{part}_b"] = rng.standard_normal(c) * 0.1
        nodes += [_conv(f"x{i}", f"a{i}", f"W{i}a", f"block{i}_a", 3),
                  helper.make_node("Relu", [f"a{i}"], [f"ar{i}"], name=f"block{i}_relu_a"),
                  _conv(f"ar{i}", f"b{i}", f"W{i}b", f"block{i}_b", 3),
                  helper.make_node("Add", [f"b{i}", f"x{i}"], [f"s{i}"], name=f"block{i}_add"),
                  helper.make_node("Relu", [f"s{i}"], [f"x{i + 1}"], name=f"block{i}_relu")]
    inits["Wfc"], inits["Wfc_b"] = rng.standard_normal((c, 5)), rng.standard_normal(5)
    nodes += [helper.make_node("GlobalAveragePool", [f"x{blocks}"], ["p"], name="gap"),
              helper.make_node("Flatten", ["p"], ["f"], name="flat"),
              helper.make_node("Gemm", ["f", "Wfc", "Wfc_b"], ["output"], name="fc")]
    return _model(nodes, inits, (1, 3, 8, 8), out_rank=2)


SHAPES = {"input": [1, 3, 8, 8]}


def _data(n=96, c=3, seed=1):
    return {"input": np.random.default_rng(seed).standard_normal((n, c, 8, 8)).astype(np.float32)}


def _cut(model):
    return to_model(pipeline.cut(to_graph(model), SHAPES).graph)


def _flops(model):
    return count_cost(model, SHAPES).flops


# ------------------------------------------------------------------------- linear algebra

def test_least_squares_recovers_weights_when_dropped_columns_do_not_contribute():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 12))
    w = rng.standard_normal((4, 12))
    w[:, [2, 3, 9]] = 0
    keep = np.array([0, 1, 4, 5, 6, 7, 8, 10, 11])
    v = least_squares(x.T @ x, x.T @ (x @ w.T), keep, ridge=0.0)
    assert np.allclose(v.T, w[:, keep], atol=1e-10)


def test_pivoted_order_ranks_by_what_the_columns_add_and_the_curve_is_the_unexplained_energy():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 5)) * np.array([1.0, 5.0, 0.1, 2.0, 1.0])
    a[:, 4] = 3 * a[:, 1]            # a multiple of column 1: adds nothing once 1 is in
    perm, res = pivoted_order(a.T @ a)
    assert perm[0] == 4                       # the largest column first
    assert set(perm[1:3]) == {3, 0} and perm[3] == 2 and perm[4] == 1  # then by what they add
    assert res[0] == pytest.approx(1.0) and res[-1] == 0.0
    assert np.all(np.diff(res) <= 1e-12)
    assert res[4] < 1e-12            # four independent columns span everything
    q, _ = np.linalg.qr(a[:, perm[:2]])
    assert res[2] == pytest.approx(np.sum((a - q @ (q.T @ a)) ** 2) / np.sum(a ** 2), rel=1e-8)


def test_allocation_takes_channels_where_the_residual_per_flop_is_lowest():
    from smof_onnx.methods.qr_alloc import LayerFlops, allocate, modelled_flops

    flat = np.linspace(0.05, 0.0, 9)             # redundant unit: 8 channels, little to lose
    steep = np.linspace(1.0, 0.0, 9)             # every channel carries 1/8 of the output
    layers = [LayerFlops("a", 800.0, None, 0), LayerFlops("b", 800.0, 0, 1), LayerFlops("c", 800.0, 1, None)]
    keep, flops = allocate(layers, [flat, steep], [1, 1], target=1600.0)
    assert flops <= 1600.0 and keep[1] == 8 and keep[0] < 8
    # bilinear: layer b shrinks with both of its units
    assert modelled_flops(layers, np.array([4, 2]), np.array([8, 8])) == 800 * 0.5 + 800 * 0.5 * 0.25 + 800 * 0.25


# ------------------------------------------------------------------------- the method

def test_reconstruction_is_exact_when_dropped_channels_carry_zero_contribution():
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((8, 3, 3, 3)), rng.standard_normal(8) * 0.1
    w2, b2 = rng.standard_normal((6, 8, 3, 3)), rng.standard_normal(6)
    w2[:, [1, 4]] = 0                 # no contribution at all
    w1[6], b1[6] = w1[2], b1[2]       # channel 6 duplicates channel 2 ...
    w2[:, 6] = 0.5 * w2[:, 2]         # ... and its contribution is half of channel 2's
    model = chain(w1, b1, w2, b2)
    base = _flops(model)
    result = run(model, _data(), QRConfig(target_flops=5 / 8, ridge=0.0))
    assert result.settings["target_met"] and result.choices[0]["kept"] == 5
    w_new = initializer(result.model, "W2")
    assert np.all(w_new[:, [1, 4, 6]] == 0)
    # channel 6's share moved onto channel 2 (same activations): W2'[:, 2] = 1.5 W2[:, 2]
    assert np.allclose(w_new[:, 2], 1.5 * w2[:, 2], atol=1e-5)
    assert_equivalent(model, result.model, SHAPES)
    cut = _cut(result.model)
    assert_equivalent(model, cut, SHAPES)
    assert initializer(cut, "W2").shape[1] == 5 and _flops(cut) <= 5 / 8 * base


def test_selection_keeps_the_planted_informative_channels():
    rng = np.random.default_rng(3)
    planted = [1, 5, 8, 10]
    w1 = rng.standard_normal((12, 4, 1, 1))
    w2 = rng.standard_normal((6, 12, 3, 3)) * 0.02
    for j, src in zip([0, 2, 3, 4, 6, 7, 9, 11], planted * 2):
        w1[j] = w1[src]               # the other channels repeat a planted channel's activations
    w2[:, planted] = rng.standard_normal((6, 4, 3, 3))
    model = chain(w1, np.zeros(12), w2, np.zeros(6))
    data = {"input": rng.standard_normal((64, 4, 8, 8)).astype(np.float32)}
    result = run(model, data, QRConfig(target_flops=4 / 12 + 1e-9, ridge=0.0))
    (choice,) = result.choices
    assert choice["kept"] == 4
    kept = np.flatnonzero(np.abs(initializer(result.model, "W2")).sum(axis=(0, 2, 3)) > 0)
    assert kept.tolist() == planted
    # the copies' small contributions are folded exactly onto the planted channels by least squares
    assert_equivalent(model, result.model, {"input": [1, 4, 8, 8]})


@pytest.mark.parametrize("residual", ["on", "off"])
@pytest.mark.parametrize("target", [0.7, 0.55])
def test_flops_target_is_met_by_the_cut_model(residual, target):
    model = resnet()
    result = run(model, _data(), QRConfig(target_flops=target, residual=residual))
    cut = _cut(result.model)
    assert result.settings["target_met"]
    assert _flops(cut) <= target * _flops(model)
    assert result.settings["flops_after"] == _flops(cut)
    onnx.checker.check_model(cut, full_check=True)
    assert_equivalent(result.model, cut, SHAPES)  # the cut removes exactly what qr zeroed
    stem_out = initializer(cut, "Ws").shape[0]
    streams = [c for c in result.choices if c["residual_stream"]]
    if residual == "on":
        assert len(streams) == 1 and set(streams[0]["members"]) == {"block0_a", "block1_a", "fc"}
        assert streams[0]["producers"] == ["block0_b", "block1_b", "stem"]
        assert stem_out == streams[0]["kept"]
    else:
        assert not streams and stem_out == 8
        assert any("residual" in s["reason"] for s in result.settings["skipped"])


def test_residual_handling_reaches_budgets_that_branch_pruning_alone_cannot():
    model = resnet()
    off = run(model, _data(), QRConfig(target_flops=0.15, residual="off", allow_miss=True))
    on = run(model, _data(), QRConfig(target_flops=0.15, residual="on"))
    assert not off.settings["target_met"] and on.settings["target_met"]
    assert on.settings["flops_after"] <= 0.15 * _flops(model) < off.settings["flops_after"]
    assert "residual handling is off" in off.settings["miss_reason"]


def test_a_missed_target_is_an_error_naming_what_limited_it():
    from smof_onnx.errors import VerificationError

    with pytest.raises(VerificationError, match=r"qr cannot reach 0\.15 of the FLOPs.*residual handling is off"):
        run(resnet(), _data(), QRConfig(target_flops=0.15, residual="off"))


def test_least_squares_beats_zeroing_the_dropped_channels():
    model = resnet(seed=2)
    data = _data(seed=3)
    result = run(model, data, QRConfig(target_flops=0.5))
    zeroed = onnx.ModelProto()
    zeroed.CopyFrom(result.model)
    for init in zeroed.graph.initializer:   # same zero pattern, original values elsewhere
        orig = initializer(model, init.name)
        new = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(np.where(new == 0, 0, orig).astype(np.float32), init.name))
    feeds = {"input": _data(n=16, seed=9)["input"]}
    ref = ort_run(model, feeds)
    assert max_rel_err(ref, ort_run(result.model, feeds)) < 0.5 * max_rel_err(ref, ort_run(zeroed, feeds))


def test_sequential_and_parallel_reconstruction_both_meet_the_target():
    model = resnet(seed=4)
    for mode in ("sequential", "parallel"):
        result = run(model, _data(), QRConfig(target_flops=0.5, reconstruct=mode))
        assert result.settings["target_met"] and result.settings["reconstruct"] == mode
        assert all(c["recon_rel_err"] is None or 0 <= c["recon_rel_err"] < 1 for c in result.choices)


def test_settings_and_choices_are_json_ready():
    result = run(resnet(), _data(), QRConfig(target_flops=0.6))
    json.dumps(result.settings)
    json.dumps(result.choices)
    assert {"name", "kept", "total", "residual_at_kept", "residual_curve"} <= set(result.choices[0])


@pytest.mark.parametrize("bad", [dict(target_flops=0), dict(target_flops=0.5, residual="maybe"),
                                 dict(target_flops=0.5, reconstruct="later"), dict(target_flops=1.5),
                                 dict(target_flops=0.5, feature_distill=-1)])
def test_bad_settings_are_usage_errors(bad):
    with pytest.raises(UsageError):
        QRConfig(**bad)


def test_runs_without_torch(tmp_path):
    path = tmp_path / "resnet.onnx"
    onnx.save(resnet(), str(path))
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is not installed (blocked by the test)")
        sys.meta_path.insert(0, NoTorch())
        sys.path.insert(0, {str(ROOT)!r})
        import numpy as np, onnx
        from smof_onnx.passes import pipeline
        from smof_onnx.passes.graph import to_graph, to_model
        from smof_onnx.methods.qr import QRConfig, run, finetune
        from smof_onnx.errors import UsageError
        m = onnx.load({str(path)!r})
        x = np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32)
        r = run(m, {{"input": x}}, QRConfig(target_flops=0.6))
        to_model(pipeline.cut(to_graph(r.model), {{"input": [1, 3, 8, 8]}}).graph)
        try:
            finetune(r.model, {{"input": x}}, 1)
        except UsageError as e:
            assert "torch" in str(e).lower(), e
        else:
            raise AssertionError("finetune ran without torch")
        assert r.settings["target_met"]
        assert not any(k == "torch" or k.startswith("torch.") for k in sys.modules), "torch was imported"
        print("OK")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")


def test_registry_entry_runs_qr_with_compress_options():
    from smof_onnx.methods import METHODS

    model = resnet()
    result = METHODS["qr"](model, _data(), target_flops=0.6, seed=1, channel_multiple=2)
    assert result.settings["method"] == "qr" and result.settings["target_met"]
    assert result.settings["seed"] == 1 and result.settings["channel_multiple"] == 2
    assert _flops(_cut(result.model)) <= 0.6 * _flops(model)
    with pytest.raises(UsageError, match="calibration data"):
        METHODS["qr"](model, None, target_flops=0.6)


def test_fine_tune_distils_the_stage_outputs_unless_told_not_to():
    """The pruned graph keeps the original's tensor names, so its fine-tune can match the
    original's stage outputs (as smof's does); ``feature_distill=0`` trains on the outputs only.
    Both keep the selection (same cut)."""
    pytest.importorskip("torch")
    from smof_onnx.learn.train import feature_taps
    from smof_onnx.methods import METHODS

    model, data = resnet(), _data()
    staged = METHODS["qr"](model, data, target_flops=0.6, finetune_epochs=1, progress_bars=False)
    plain = METHODS["qr"](model, data, target_flops=0.6, finetune_epochs=1, progress_bars=False, feature_distill=0)
    assert staged.settings["feature_distill"] == 1.0 and plain.settings["feature_distill"] == 0
    assert feature_taps(staged.model)  # (were none shared with the original, both runs would be equal)
    assert staged.model.SerializeToString() != plain.model.SerializeToString()
    assert _flops(_cut(staged.model)) == _flops(_cut(plain.model))


def test_every_zoo_model_meets_the_target_after_the_cut(zoo_model):
    name, _exporter, model, shape = zoo_model
    x = np.random.default_rng(0).standard_normal((24, *shape[1:])).astype(np.float32)
    result = run(model, {"input": x}, QRConfig(target_flops=0.6, max_positions=512))
    shapes = {"input": list(shape)}
    cut = to_model(pipeline.cut(to_graph(result.model), shapes).graph)
    assert result.settings["target_met"], result.settings["skipped"]
    assert count_cost(cut, shapes).flops <= 0.6 * count_cost(model, shapes).flops
    assert result.settings["units"] >= 1
    assert all(s["reason"] for s in result.settings["skipped"])


def test_channel_multiple_keeps_round_counts():
    model = resnet(c=16)
    result = run(model, _data(), QRConfig(target_flops=0.5, channel_multiple=4))
    assert result.settings["target_met"]
    assert all(c["kept"] % 4 == 0 or c["kept"] == c["total"] for c in result.choices)
    assert any(c["kept"] < c["total"] for c in result.choices)


def test_unnamed_nodes_are_handled():
    model = resnet()
    for node in model.graph.node:
        node.name = ""
    result = run(model, _data(), QRConfig(target_flops=0.6))
    assert result.settings["target_met"] and result.settings["units"] == 3
    assert _flops(_cut(result.model)) <= 0.6 * _flops(model)


# ------------------------------------------------------------------------- depthwise groups

def inverted_residual(seed=0, c=8, e=24):
    """stem 3x3 -> [expand 1x1, Relu, depthwise 3x3 (group=e), Relu, project 1x1] -> head 1x1:
    the expanded channels pass through the depthwise conv; the project conv is their only reader."""
    rng = np.random.default_rng(seed)
    inits = {"Ws": rng.standard_normal((c, 3, 3, 3)) * 0.4, "Ws_b": rng.standard_normal(c) * 0.1,
             "We": rng.standard_normal((e, c, 1, 1)) * 0.4, "We_b": rng.standard_normal(e) * 0.1,
             "Wd": rng.standard_normal((e, 1, 3, 3)) * 0.4, "Wd_b": rng.standard_normal(e) * 0.1,
             "Wp": rng.standard_normal((c, e, 1, 1)) * 0.3, "Wp_b": rng.standard_normal(c) * 0.1,
             "Wh": rng.standard_normal((4, c, 1, 1)) * 0.3, "Wh_b": rng.standard_normal(4) * 0.1}
    nodes = [_conv("input", "s", "Ws", "stem", 3), helper.make_node("Relu", ["s"], ["sr"], name="stem_relu"),
             _conv("sr", "x", "We", "expand", 1), helper.make_node("Relu", ["x"], ["xr"], name="expand_relu"),
             helper.make_node("Conv", ["xr", "Wd", "Wd_b"], ["d"], name="dw", pads=[1] * 4, group=e),
             helper.make_node("Relu", ["d"], ["dr"], name="dw_relu"),
             _conv("dr", "p", "Wp", "project", 1), _conv("p", "output", "Wh", "head", 1)]
    return _model(nodes, inits, (1, 3, 8, 8))


def test_a_group_through_a_depthwise_conv_is_selected_by_its_readers_and_cut_exactly():
    model = inverted_residual()
    result = run(model, _data(), QRConfig(target_flops=0.5))
    through = [c for c in result.choices if c["depthwise"]]
    assert [c["depthwise"] for c in through] == [["dw"]] and through[0]["members"] == ["project"]
    assert through[0]["kept"] < through[0]["total"]
    assert not any("depthwise" in s["reason"] for s in result.settings["skipped"])
    assert result.settings["target_met"] and _flops(_cut(result.model)) <= 0.5 * _flops(model)
    cut = _cut(result.model)
    dw = next(n for n in cut.graph.node if n.op_type == "Conv" and any(a.name == "group" for a in n.attribute))
    group = next(a.i for a in dw.attribute if a.name == "group")
    assert group == through[0]["kept"]  # the depthwise conv lost exactly the dropped channels
    assert_equivalent(result.model, cut, {"input": (4, 3, 8, 8)})


def test_mobilenet_v2_reaches_a_target_only_its_depthwise_groups_allow():
    from tests import cases

    model = cases.load_zoo("mobilenet_v2", "torchscript")
    shape = cases.zoo_input_shape("mobilenet_v2")
    x = np.random.default_rng(0).standard_normal((24, *shape[1:])).astype(np.float32)
    result = run(model, {"input": x}, QRConfig(target_flops=0.3, max_positions=512))
    shapes = {"input": list(shape)}
    assert count_cost(to_model(pipeline.cut(to_graph(result.model), shapes).graph), shapes).flops <= \
        0.3 * count_cost(model, shapes).flops
    assert sum(1 for c in result.choices if c["depthwise"] and c["kept"] < c["total"]) >= 5


# ------------------------------------------------------------------------- quality and options

def test_compress_with_labelled_data_reports_quality_before_and_after():
    from smof_onnx import api

    model = resnet(c=16)
    x = _data(n=60)["input"]
    labels = np.random.default_rng(3).integers(0, 5, 60)
    from smof_onnx.data import CalibrationData
    calib = CalibrationData({"input": x}, labels)
    _, rep = api.compress(model, data=calib, method="qr", target_flops=0.6, val_split=0.25, seed=2)
    q = rep["quality"]
    assert q["split"] == "val" and q["samples"] == 15 and q["metric"] == "accuracy"
    assert 0 <= q["accuracy_before"] <= 1 and 0 <= q["accuracy_after"] <= 1
    assert q["relative_rms_error"] > 0  # the pruned model differs from the original
    assert rep["method"]["val_samples"] == 15 and rep["method"]["train_samples"] == 45


def test_fine_tune_options_reach_the_trainer(monkeypatch):
    import smof_onnx.methods.qr as qr

    seen = {}

    def fake(model, data, epochs, **kwargs):
        seen.update(kwargs, epochs=epochs, n=len(data))
        return model

    monkeypatch.setattr(qr, "finetune", fake)
    from smof_onnx.methods import METHODS

    METHODS["qr"](resnet(), _data(n=40), target_flops=0.6, finetune_epochs=2, seed=7, lr=3e-4, batch_size=16,
                  threads=1, val_split=0.25, progress_bars=False)
    assert {k: seen[k] for k in ("epochs", "seed", "lr", "batch_size", "threads", "n")} == \
        {"epochs": 2, "seed": 7, "lr": 3e-4, "batch_size": 16, "threads": 1, "n": 30}


# ------------------------------------------------------------------------- PP-OCR

def _ppocr_qr(kind, n, target, **sizes):
    from models import ppocr_calib
    from tests import cases

    model = cases.load_ppocr(kind)
    data = ppocr_calib.calibration(kind, n, **sizes)
    shapes = {k: [1, *v.shape[1:]] for k, v in data.items()}
    result = run(model, data, QRConfig(target_flops=target, max_positions=1024, val_split=0.1))
    cut = to_model(pipeline.cut(to_graph(result.model), shapes).graph)
    return result, count_cost(cut, shapes).flops / count_cost(model, shapes).flops


def test_ppocr_cls_reaches_half_the_flops_with_its_depthwise_groups():
    pytest.importorskip("PIL")
    result, ratio = _ppocr_qr("cls", 48, 0.5)
    assert ratio <= 0.5 and result.settings["target_met"]
    assert any(c["depthwise"] and c["kept"] < c["total"] for c in result.choices)
    assert result.quality is None or "top1_agreement" in result.quality


@pytest.mark.slow
def test_ppocr_det_reaches_half_the_flops_with_its_depthwise_groups():
    pytest.importorskip("PIL")
    result, ratio = _ppocr_qr("det", 24, 0.5, size=(160, 160))
    assert ratio <= 0.5 and result.settings["target_met"]
    assert result.quality is None or "mask_iou" in result.quality


@pytest.mark.parametrize("options,flag", [
    (dict(kernel=False), "--no-kernel"), (dict(channel=False), "--no-channel"), (dict(epochs=3), "--epochs"),
    (dict(target_latency=0.5), "--target-latency"), (dict(bench_batch=8), "--bench-batch"),
    (dict(lr=1e-3), "--lr"), (dict(feature_distill=0.5), "--feature-distill"),
])
def test_options_qr_does_not_read_are_refused_naming_option_and_method(options, flag):
    from smof_onnx.methods import METHODS

    with pytest.raises(UsageError, match=rf"^{flag} is .*--method qr"):
        METHODS["qr"](resnet(), _data(n=8), target_flops=0.6, **options)
