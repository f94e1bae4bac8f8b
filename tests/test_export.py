"""``smof-onnx export``: ORT format, OpenVINO, int8; verification against ONNX Runtime fp32 with the
runtimes' own APIs, exit codes 2 / 3, and nothing left behind when verification fails."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper as onh
import onnxruntime as ort
import pytest

import smof_onnx.export as ex
from smof_onnx.cli import main
from smof_onnx.errors import VerificationError
from smof_onnx.export import place

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "default" / "resnet20_fmnist.onnx"
CALIB = ROOT / "models" / "default" / "calib.npz"


def _ort_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _calib(n: int = 64) -> np.ndarray:
    with np.load(CALIB) as d:
        return d["input"][:n]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- fp32 exports, checked with the runtimes' own APIs -----------------------------------------

def test_ort_format_export_verifies_and_runs_in_onnxruntime(tmp_path):
    out, rep = tmp_path / "m.ort", tmp_path / "r.json"
    assert main(["export", str(MODEL), "-o", str(out), "--to", "ort", "--data", str(CALIB), "--report", str(rep),
                 "--seconds", "0.2"]) == 0
    assert out.read_bytes()[4:8] == b"ORTM"  # the flatbuffer file identifier of the ORT format
    x = _calib()
    assert _rel(_ort_outputs(MODEL, x), _ort_outputs(out, x)) <= 1e-4
    report = json.loads(rep.read_text())
    assert report["verification"]["ok"] and report["verification"]["max_rel_err"] <= 1e-4
    assert report["verification"]["inputs"] == 3 + 512 // 32
    assert report["latency"]["input_ms"] > 0 and report["latency"]["artifact_ms"] > 0
    assert _left(tmp_path) == ["m.ort", "r.json"]


def test_ort_format_export_of_a_zoo_model_verifies(tmp_path):
    from tests import cases

    src = tmp_path / "in.onnx"
    onnx.save(cases.load_zoo("mobilenet_v3"), src)
    rep = ex.export(src, tmp_path / "m.ort", "ort")
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert _rel(_ort_outputs(src, x), _ort_outputs(tmp_path / "m.ort", x)) <= 1e-4
    assert rep["verification"]["max_rel_err"] <= 1e-4


def test_openvino_export_writes_xml_and_bin_that_openvino_runs(tmp_path):
    import openvino as ov  # installed by .ci/run: this test is never skipped
    out = tmp_path / "m.xml"
    assert main(["export", str(MODEL), "-o", str(out), "--to", "openvino", "--data", str(CALIB)]) == 0
    assert _left(tmp_path) == ["m.bin", "m.xml"]
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(out)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = _calib()
    got = np.asarray(compiled({"input": x})[compiled.output("output")])
    assert _rel(_ort_outputs(MODEL, x), got) <= 1e-4
    # The IR keeps fp32 weights (openvino.save_model would compress them to fp16 by default).
    assert (tmp_path / "m.bin").stat().st_size >= 0.95 * sum(
        onh.to_array(i).nbytes for i in onnx.load(str(MODEL)).graph.initializer)


def test_openvino_needs_an_xml_name(tmp_path, capsys):
    assert main(["export", str(MODEL), "-o", str(tmp_path / "m.onnx"), "--to", "openvino"]) == 2
    assert "m.xml" in capsys.readouterr().err
    assert _left(tmp_path) == []


# --- failed verification: exit 3, nothing left ------------------------------------------------

def _tamper(model: onnx.ModelProto) -> onnx.ModelProto:
    """The export's input with one conv weight nudged by 2 % (what a broken converter would do)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    init = next(i for i in out.graph.initializer if len(i.dims) == 4)
    init.CopyFrom(onh.from_array(onh.to_array(init) * np.float32(1.02), init.name))
    return out


@pytest.mark.parametrize("to, name", [("onnx", "m.onnx"), ("ort", "m.ort"), ("openvino", "m.xml")])
def test_tampered_export_fails_with_exit_3_and_leaves_what_was_there(tmp_path, monkeypatch, capsys, to, name):
    monkeypatch.setattr(ex, "_conversion_input", _tamper)
    out = tmp_path / name
    out.write_bytes(b"an older file")
    assert main(["export", str(MODEL), "-o", str(out), "--to", to, "--report", str(tmp_path / "r.json")]) == 3
    err = capsys.readouterr().err
    assert "verification failed" in err and "max relative error" in err
    assert _left(tmp_path) == [name] and out.read_bytes() == b"an older file"


def test_int8_gate_can_fail_and_then_writes_nothing(tmp_path):
    with pytest.raises(VerificationError, match="top-1 agreement"):
        ex.export(MODEL, tmp_path / "q.onnx", quantize="int8", data=CALIB, config=ex.ExportConfig(min_agreement=1.01))
    assert _left(tmp_path) == []


def test_place_restores_the_first_file_when_the_second_move_fails(tmp_path):
    a_new, a_dest = tmp_path / "a.new", tmp_path / "m.bin"
    a_new.write_bytes(b"new")
    a_dest.write_bytes(b"old")
    with pytest.raises(OSError):
        place.place([(a_new, a_dest), (tmp_path / "missing", tmp_path / "m.xml")])
    assert a_dest.read_bytes() == b"old" and not (tmp_path / "m.xml").exists()


# --- int8 ---------------------------------------------------------------------------------------

def _agreement(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean(ref.argmax(1) == got.argmax(1)))


def test_quantize_int8_writes_a_qdq_model_that_agrees(tmp_path):
    out, rep = tmp_path / "q.onnx", tmp_path / "r.json"
    assert main(["export", str(MODEL), "-o", str(out), "--quantize", "int8", "--data", str(CALIB),
                 "--report", str(rep), "--seconds", "0.2"]) == 0
    q = onnx.load(str(out))
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    int8 = [i for i in q.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert any(len(i.dims) == 4 for i in int8)  # conv weights stored as int8
    zero_points = [i for i in q.graph.initializer if i.data_type == onnx.TensorProto.UINT8]
    assert zero_points  # uint8 activations
    x = _calib(512)
    assert _agreement(_ort_outputs(MODEL, x), _ort_outputs(out, x)) >= 0.98
    report = json.loads(rep.read_text())
    assert report["verification"]["agreement"] >= 0.98 and report["latency"]["speedup"] > 0
    assert report["verification"]["accuracy_input"] is not None


def test_openvino_int8_is_quantized_by_nncf_and_agrees(tmp_path):
    import openvino as ov

    out = tmp_path / "q.xml"
    rep = ex.export(MODEL, out, "openvino", quantize="int8", data=CALIB)
    assert "FakeQuantize" in out.read_text() or "FakeConvert" in out.read_text()
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(out)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = _calib(512)
    got = np.asarray(compiled({"input": x})[compiled.output("output")])
    assert _agreement(_ort_outputs(MODEL, x), got) >= 0.98
    assert rep["verification"]["agreement"] >= 0.98


def test_quantize_without_data_is_exit_2(tmp_path, capsys):
    assert main(["export", str(MODEL), "-o", str(tmp_path / "q.onnx"), "--quantize", "int8"]) == 2
    assert "--data" in capsys.readouterr().err
    assert _left(tmp_path) == []


# --- missing runtimes: exit 2 naming what to install ---------------------------------------------

def test_missing_openvino_is_exit_2_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    assert main(["export", str(MODEL), "-o", str(tmp_path / "m.xml"), "--to", "openvino"]) == 2
    assert "pip install 'smof-onnx[openvino]'" in capsys.readouterr().err
    assert _left(tmp_path) == []


def test_missing_nncf_is_exit_2_for_openvino_int8(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "nncf", None)
    assert main(["export", str(MODEL), "-o", str(tmp_path / "m.xml"), "--to", "openvino", "--quantize", "int8",
                 "--data", str(CALIB)]) == 2
    assert "pip install 'smof-onnx[openvino]'" in capsys.readouterr().err


def test_missing_tflite_environment_is_exit_2_saying_how_to_make_it(tmp_path, monkeypatch, capsys):
    from smof_onnx.export import tflite

    monkeypatch.delenv(tflite.ENV_VAR, raising=False)
    monkeypatch.setattr(tflite.importlib.util, "find_spec", lambda name, *a: None)
    assert main(["export", str(MODEL), "-o", str(tmp_path / "m.tflite"), "--to", "tflite"]) == 2
    err = capsys.readouterr().err
    assert "pip install onnx2tf==" in err and tflite.ENV_VAR in err
    assert main(["export", str(MODEL), "-o", str(tmp_path / "m.tflite"), "--to", "tflite",
                 "--tflite-python", sys.executable]) == 2  # a Python without onnx2tf
    assert "onnx2tf is not installed there" in capsys.readouterr().err
    assert _left(tmp_path) == []
