"""TFLite (LiteRT) through onnx2tf, run in its own Python environment.

Why a separate environment: onnx2tf pins exact old versions of onnx, onnxruntime, numpy,
protobuf and tensorflow (onnx2tf 1.29.24: onnx==1.19.1, onnxruntime==1.23.0, numpy==1.26.4,
tensorflow==2.19.0, ~2.6 GB), so installing it beside smof-onnx would downgrade the user's
environment. ``export --to tflite`` instead calls that environment's Python by subprocess:
``--tflite-python PATH`` or ``$SMOF_TFLITE_PYTHON``; the current Python only when onnx2tf is
importable in it. Create it with::

    python3 -m venv ~/.smof-tflite && ~/.smof-tflite/bin/pip install onnx2tf==1.29.24
    export SMOF_TFLITE_PYTHON=~/.smof-tflite/bin/python

Pitfalls handled here:

- onnx2tf fails on a symbolic batch: the model is given a fixed batch (1 unless
  ``--input-shape`` says otherwise) with ``onnxruntime.tools.onnx_model_utils``.
- For models whose inputs are all 4-D with 3 channels, onnx2tf downloads a sample-image file from
  GitHub for a dummy inference (offline, the conversion fails). It reads
  ``calibration_image_sample_data_20x128x128x3_float32.npy`` from its working folder first, so a
  local file of uniform [0, 1) values is put there (it only drives onnx2tf's shape probing; the
  artifact is verified here on the real feeds).
- The .tflite file is NHWC (channels last) for 3-D / 4-D / 5-D inputs and outputs: the runner
  transposes NCHW feeds to channels-last and channels-last outputs back before comparing.
- Inputs and outputs are found by name through the file's ``serving_default`` signature.
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx

from ..errors import VerificationError
from .base import Artifact, RuntimeMissingError

ENV_VAR = "SMOF_TFLITE_PYTHON"
SETUP = ("python3 -m venv ~/.smof-tflite && ~/.smof-tflite/bin/pip install onnx2tf==1.29.24, then pass "
         f"--tflite-python ~/.smof-tflite/bin/python or set {ENV_VAR}")
_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"
_WORKER = Path(__file__).with_name("tflite_worker.py")


def find_python(explicit: str | os.PathLike | None = None) -> str:
    """The Python of the onnx2tf environment, or RuntimeMissingError saying how to make one."""
    given = explicit or os.environ.get(ENV_VAR)
    if not given:
        if importlib.util.find_spec("onnx2tf") is not None:
            return sys.executable
        raise RuntimeMissingError("--to tflite needs onnx2tf, which pins old onnx / onnxruntime / numpy and so lives "
                                  f"in its own environment; create it with: {SETUP}")
    py = shutil.which(str(given)) or str(given)
    probe = "import importlib.util as u, sys; sys.exit(0 if u.find_spec('onnx2tf') else 3)"
    try:
        rc = subprocess.run([py, "-I", "-c", probe], capture_output=True, timeout=120).returncode
    except OSError as exc:
        raise RuntimeMissingError(f"--tflite-python {given}: cannot run it ({exc.strerror or exc}); {SETUP}") from None
    if rc != 0:
        raise RuntimeMissingError(f"--tflite-python {given}: onnx2tf is not installed there; {SETUP}")
    return py


def fix_batch(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """A copy of ``model`` with every input at ``shapes`` (concrete) and output shapes re-inferred."""
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_input_shape_fixed

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for name, dims in shapes.items():
        make_input_shape_fixed(fixed.graph, name, [int(d) for d in dims])
    fix_output_shapes(fixed)
    return fixed


def convert(model: onnx.ModelProto, work: Path, python: str, timeout_s: float = 3600) -> Artifact:
    """``model`` (fixed batch) converted by onnx2tf in ``work/tflite``; the float32 .tflite."""
    folder = work / "tflite"
    folder.mkdir()
    onnx.save(model, str(folder / "model.onnx"))
    if _needs_sample(model):
        np.save(folder / _SAMPLE, np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONNOUSERSITE": "1"}
    cmd = [python, "-I", "-m", "onnx2tf", "-i", "model.onnx", "-o", "out", "-n"]
    try:
        proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise VerificationError(f"onnx2tf did not finish in {timeout_s:.0f} s; nothing was written") from None
    out = folder / "out" / "model_float32.tflite"
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise VerificationError(f"onnx2tf could not convert the model (exit {proc.returncode}); nothing was "
                                f"written. Its last lines:\n{tail}")
    return Artifact(((out, ""),), "tflite", {"format": "tflite", "weights": "fp32", "converter": "onnx2tf",
                                              "layout": "NHWC"})


def _needs_sample(model: onnx.ModelProto) -> bool:
    inits = {i.name for i in model.graph.initializer}
    dims = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input if i.name not in inits]
    return bool(dims) and all(len(d) == 4 and d[1] == 3 for d in dims)


class Worker:
    """A .tflite file run by the worker in the TFLite environment; call it with NCHW feeds."""

    def __init__(self, path: Path, python: str, model: onnx.ModelProto, threads: int = 1):
        self.names = [o.name for o in model.graph.output]
        self.batch = _static_batch(model)
        self.declared = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.proc = subprocess.Popen([python, "-I", str(_WORKER), str(path), str(threads), ",".join(self.names)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self._receive()

    def __call__(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        n = len(next(iter(feed.values())))
        chunks = []
        for start in range(0, n, self.batch):
            part = {k: _channels_last(v[start:start + self.batch]) for k, v in feed.items()}
            _, arrays = self._request({"op": "run"}, part)
            chunks.append([arrays[f"out{i}"] for i in range(len(self.names))])
        return [self._nchw(name, np.concatenate([c[i] for c in chunks])) for i, name in enumerate(self.names)]

    def median_ms(self, feed: Mapping[str, np.ndarray], seconds: float) -> float:
        header, _ = self._request({"op": "time", "seconds": seconds},
                                  {k: _channels_last(v) for k, v in feed.items()})
        return float(header["median_ms"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def _nchw(self, name: str, out: np.ndarray) -> np.ndarray:
        """onnx2tf writes rank >= 3 outputs channels-last; moved back when that gives the ONNX shape
        (also when both orders would: the channels-last rule then decides)."""
        if out.ndim < 3:
            return out
        moved = np.moveaxis(out, -1, 1)
        return moved if list(moved.shape[1:]) == self.declared[name][1:] else out

    def _request(self, header: dict, arrays: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
        raw = io.BytesIO()
        np.savez(raw, **arrays)
        head = json.dumps(header).encode()
        try:
            self.proc.stdin.write(struct.pack(">I", len(head)) + head + struct.pack(">Q", raw.tell()) + raw.getvalue())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise VerificationError("the TFLite interpreter stopped; nothing was written") from None
        return self._receive()

    def _receive(self) -> tuple[dict, dict]:
        try:
            header = json.loads(self._read(struct.unpack(">I", self._read(4))[0]))
            payload = self._read(struct.unpack(">Q", self._read(8))[0])
        except (EOFError, struct.error):
            raise VerificationError("the TFLite interpreter could not load or run the .tflite file; nothing was "
                                    "written") from None
        if "error" in header:
            raise VerificationError(f"the TFLite interpreter failed: {header['error']}; nothing was written")
        with np.load(io.BytesIO(payload)) as npz:
            return header, {k: npz[k] for k in npz.files}

    def _read(self, n: int) -> bytes:
        buf = self.proc.stdout.read(n)
        if len(buf) != n:
            raise EOFError
        return buf


def _static_batch(model: onnx.ModelProto) -> int:
    inits = {i.name for i in model.graph.initializer}
    first = next(i for i in model.graph.input if i.name not in inits)
    return max(first.type.tensor_type.shape.dim[0].dim_value, 1)


def _channels_last(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)) if a.ndim >= 3 else a
