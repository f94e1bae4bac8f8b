"""``export --to tflite`` through onnx2tf in its own environment: runs only where that environment
exists ($SMOF_TFLITE_PYTHON, or onnx2tf importable here); the artifact is checked with the TFLite
interpreter of that environment, not through smof-onnx's runner."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "default" / "resnet20_fmnist.onnx"
CALIB = ROOT / "models" / "default" / "calib.npz"

PYTHON = os.environ.get("SMOF_TFLITE_PYTHON")
if not PYTHON:
    pytest.importorskip("onnx2tf", reason="no TFLite environment: set SMOF_TFLITE_PYTHON (docs/deploying.md)")
    PYTHON = sys.executable

_INTERPRET = """
import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
x = np.load(sys.argv[2])
run = Interpreter(model_path=sys.argv[1]).get_signature_runner()
np.save(sys.argv[3], np.concatenate([run(input=x[i:i + 1].transpose(0, 2, 3, 1))["output"] for i in range(len(x))]))
"""


@pytest.mark.slow
def test_tflite_export_verifies_and_the_interpreter_agrees(tmp_path):
    from smof_onnx.cli import main

    out, rep = tmp_path / "m.tflite", tmp_path / "r.json"
    assert main(["export", str(MODEL), "-o", str(out), "--to", "tflite", "--data", str(CALIB),
                 "--tflite-python", PYTHON, "--report", str(rep), "--seconds", "0.5"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite", "r.json"]
    report = json.loads(rep.read_text())
    assert report["verification"]["max_rel_err"] <= 1e-4 and report["artifact"]["layout"] == "NHWC"
    with np.load(CALIB) as d:
        x = d["input"][:16]
    np.save(tmp_path / "x.npy", x)
    subprocess.run([PYTHON, "-I", "-c", _INTERPRET, str(out), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                   check=True, capture_output=True, timeout=600)
    got = np.load(tmp_path / "y.npy")
    ref = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.max(np.abs(ref - got)) / np.max(np.abs(ref)) <= 1e-4
