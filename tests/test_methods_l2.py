"""--method l2: data-free, torch-free; drops the lowest-norm filters and the lowest-energy kernel
rings until the *cut* model meets the FLOPs target (ratio <= target + 0.01)."""
from __future__ import annotations

import subprocess
import sys

import json

import numpy as np
import onnx.numpy_helper as onh
import pytest

from smof_onnx.passes.analysis.flops import count_cost
from smof_onnx import api
from smof_onnx.selection.select import prepare
from smof_onnx.methods import METHODS, l2
from tests import cases
from tests.test_selection_gates import tiny_cnn


@pytest.mark.parametrize("target", [0.7, 0.5, 0.3])
def test_meets_the_target_exactly_on_a_small_model(target):
    model = tiny_cnn()
    result = METHODS["l2"](model, target_flops=target, channel_multiple=1)
    cut, report = api.cut(result.model)
    ratio = count_cost(cut, None).flops / count_cost(model, None).flops
    assert target - 0.05 <= ratio <= target + 0.01
    assert result.settings["flops_ratio_cut"] == pytest.approx(ratio)
    assert result.quality is None and result.settings["finetuned"] is False


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenet_v2"])
def test_compress_meets_the_target_on_zoo_models(name):
    _, report = api.compress(cases.load_zoo(name, "torchscript"), method="l2", target_flops=0.5)
    assert 0.45 <= report["flops"]["ratio"] <= 0.51
    assert report["verify"]["max_rel_err"] <= 1e-5


def test_lowest_norm_filters_and_empty_rings_go_first():
    model = tiny_cnn()
    inits = {i.name: i for i in model.graph.initializer}
    w3 = onh.to_array(inits["w3"]).copy()
    w3[:4] *= 1e-3                      # four weak filters of conv3
    w1 = onh.to_array(inits["w1"]).copy()
    w1[:, :, :, [0, 2]] *= 1e-3         # conv1's left/right columns hold almost no energy
    b3 = onh.to_array(inits["b3"]).copy()
    b3[:4] *= 1e-3
    inits["w3"].CopyFrom(onh.from_array(w3, "w3"))
    inits["b3"].CopyFrom(onh.from_array(b3, "b3"))
    inits["w1"].CopyFrom(onh.from_array(w1, "w1"))
    p = prepare(model, None, multiple=1)
    s = l2.scores(p.model, p.space)
    col = next(g.index for g in p.space.kernel if g.node == "conv1" and g.axis == 1)
    row = next(g.index for g in p.space.kernel if g.node == "conv1" and g.axis == 0)
    assert s[col] < 1e-3 < s[row]
    conv3 = [g for g in p.space.channel if g.producers[0][0] == "conv3"]
    weak = sorted(g.index for g in conv3 if g.producers[0][2] < 4)
    assert sorted(np.argsort(s[[g.index for g in conv3]])[:4]) == [0, 1, 2, 3]
    assert len(weak) == 4
    channels_only = METHODS["l2"](model, target_flops=0.8, channel_multiple=1, kernel=False)
    w3_after = onh.to_array(next(i for i in channels_only.model.graph.initializer if i.name == "w3"))
    assert not w3_after[:4].any()  # the weak filters are among the zeroed ones


def test_runs_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from tests.test_selection_gates import tiny_cnn\n"
            "from smof_onnx import api\n"
            "_, rep = api.compress(tiny_cnn(), method='l2', target_flops=0.5, channel_multiple=1)\n"
            "assert rep['flops']['ratio'] <= 0.51, rep['flops']\n"
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_same_inputs_same_bytes():
    a = METHODS["l2"](tiny_cnn(), target_flops=0.4, channel_multiple=1).model.SerializeToString()
    b = METHODS["l2"](tiny_cnn(), target_flops=0.4, channel_multiple=1).model.SerializeToString()
    assert a == b


def test_with_data_it_fine_tunes_and_reports_quality():
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((40, 3, 8, 8)).astype(np.float32)}
    plain = METHODS["l2"](tiny_cnn(), target_flops=0.5, channel_multiple=1)
    tuned = METHODS["l2"](tiny_cnn(), data, target_flops=0.5, channel_multiple=1, finetune_epochs=2, batch_size=8,
                          progress_bars=False)
    assert tuned.settings["finetuned"] is True and tuned.quality["samples"] == 4
    assert tuned.choices == plain.choices  # same zeros, different surviving weights
    assert tuned.model.SerializeToString() != plain.model.SerializeToString()
    # the fine-tune distils the stage outputs too, as smof does; --feature-distill 0 turns it off
    assert tuned.settings["feature_distill"] == 1.0 and tuned.settings["feature_taps"]
    outputs_only = METHODS["l2"](tiny_cnn(), data, target_flops=0.5, channel_multiple=1, finetune_epochs=2,
                                 batch_size=8, progress_bars=False, feature_distill=0)
    assert outputs_only.settings["feature_distill"] == 0 and outputs_only.settings["feature_taps"] == []
    assert outputs_only.model.SerializeToString() != tuned.model.SerializeToString()


def test_target_latency_meets_the_predicted_latency_and_reports_the_measured(monkeypatch, tmp_path):
    """The table's timer is faked (conv MACs: deterministic); the cut model is timed for real
    (briefly), so only the report's shape and the predicted ratio are asserted."""
    from smof_onnx.learn import latency
    from smof_onnx.methods import latency as method_latency
    from tests.test_learn_latency_budget import conv_macs

    monkeypatch.setenv("SMOF_CACHE", str(tmp_path))
    monkeypatch.setattr(latency, "time_model", lambda m, feed, *a: conv_macs(m, feed))
    monkeypatch.setattr(method_latency, "MEASURE_S", 0.2)
    result = METHODS["l2"](tiny_cnn(), target_flops=1.0, target_latency=0.5, channel_multiple=1, bench_batch=4)
    lat = result.settings["latency"]
    assert lat["predicted_ratio"] <= 0.5 and lat["target"] == 0.5
    assert lat["bench_batch"] == 4 and lat["threads"] == 2
    assert lat["measured_ratio"] > 0 and lat["measured_ms"] > 0 and 0.5 < lat["self_ratio"] < 2
    # conv MACs are FLOPs here and the convs are nearly all of them: the FLOPs follow
    assert result.settings["flops_ratio_cut"] <= 0.55
    assert list(tmp_path.glob("latency/*.json")), "the table is cached under $SMOF_CACHE"


@pytest.mark.parametrize("target", ["1.0", "0.5"])
def test_a_model_without_flops_is_a_usage_error_not_a_crash(target, tmp_path, capsys):
    """As smof ("nothing to learn"), l2 refuses a model with nothing to compress: exit 2, no output."""
    import onnx

    from smof_onnx.cli import main
    from smof_onnx.errors import UnsupportedModelError, exit_code
    from tests.test_selection_budget import relu_only

    with pytest.raises(UnsupportedModelError, match="nothing to compress") as info:
        METHODS["l2"](relu_only(), target_flops=float(target))
    assert exit_code(info.value) == 2
    src, out = tmp_path / "relu.onnx", tmp_path / "out.onnx"
    onnx.save(relu_only(), src)
    assert main(["compress", str(src), "-o", str(out), "--method", "l2", "--target-flops", target]) == 2
    assert "nothing to compress" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("options,flag,has_data", [
    (dict(epochs=2), "--epochs", False), (dict(epochs=2), "--epochs", True),
    (dict(lr=1e-3), "--lr", False), (dict(finetune_epochs=2), "--finetune-epochs", False),
    (dict(batch_size=8), "--batch-size", False), (dict(val_split=0.2), "--val-split", False),
    (dict(threads=1), "--threads", False), (dict(feature_distill=0.0), "--feature-distill", False),
    (dict(bench_batch=8), "--bench-batch", False),
])
def test_options_l2_does_not_read_are_refused_naming_option_and_method(options, flag, has_data):
    from smof_onnx.errors import UsageError

    data = {"x": np.zeros((4, 3, 8, 8), np.float32)} if has_data else None
    with pytest.raises(UsageError, match=rf"^{flag} is .*--method l2"):
        METHODS["l2"](tiny_cnn(), data, target_flops=0.7, **options)


def test_every_option_is_classified_and_bench_batch_needs_a_latency_table():
    import dataclasses

    from smof_onnx.errors import UsageError
    from smof_onnx.methods import METHOD_OPTIONS, CompressConfig, _ALWAYS, check_options

    fields = {f.name for f in dataclasses.fields(CompressConfig)}
    read = set(_ALWAYS).union(*(t for m in METHOD_OPTIONS.values() for t in m.values()))
    assert fields == read  # a new option must say which methods read it
    # smof times its latency table at --bench-batch by default; with --no-latency nothing is timed
    check_options("smof", CompressConfig(bench_batch=8), {"bench_batch"}, True)
    with pytest.raises(UsageError, match="--bench-batch is read only with --target-latency"):
        check_options("smof", CompressConfig(bench_batch=8, no_latency=True), {"bench_batch", "no_latency"}, True)
    with pytest.raises(UsageError, match="--bench-batch is read only with --target-latency"):
        check_options("l2", CompressConfig(bench_batch=8), {"bench_batch"}, True)
    check_options("smof", CompressConfig(epochs=2, lr=1e-3), {"epochs", "lr"}, True)  # smof reads both


def test_latency_runtime_openvino_times_the_table_and_the_result_on_openvino(monkeypatch, tmp_path):
    """The table's timer is faked (it must be asked for OpenVINO); the result is timed for real on
    OpenVINO, briefly, and the report says where."""
    pytest.importorskip("openvino")
    from smof_onnx.learn import latency
    from smof_onnx.methods import latency as method_latency
    from tests.test_learn_latency_budget import conv_macs

    asked = set()

    def timer(m, feed, *args):
        asked.add(args[-1])
        return conv_macs(m, feed)

    monkeypatch.setenv("SMOF_CACHE", str(tmp_path))
    monkeypatch.setattr(latency, "time_model", timer)
    monkeypatch.setattr(method_latency, "MEASURE_S", 0.2)
    result = METHODS["l2"](tiny_cnn(), target_flops=1.0, target_latency=0.5, channel_multiple=1, bench_batch=4,
                           latency_runtime="openvino")
    lat = result.settings["latency"]
    assert asked == {"openvino"}
    assert lat["runtime"] == "openvino" and lat["measured_ms"] > 0 and lat["predicted_ratio"] <= 0.5
    assert 0.5 < lat["self_ratio"] < 2  # the original timed against itself on OpenVINO
    tables = [json.loads(p.read_text()) for p in tmp_path.glob("latency/*.json")]
    assert tables and all(t["meta"]["machine"]["runtime"] == "openvino" for t in tables)


def test_latency_runtime_is_refused_where_no_latency_is_timed():
    from smof_onnx.errors import UsageError

    with pytest.raises(UsageError, match="--latency-runtime is read only with --target-latency"):
        METHODS["l2"](tiny_cnn(), target_flops=0.5, latency_runtime="openvino")
    with pytest.raises(UsageError, match="--latency-runtime is not used by --method qr"):
        METHODS["qr"](tiny_cnn(), data={"x": np.zeros((4, 3, 8, 8), np.float32)}, target_flops=0.5,
                      latency_runtime="openvino")
