"""The CPU runtimes models are timed on, behind one callable per model, and how they are timed.

``RUNTIMES``: ``ort`` (ONNX Runtime, graph optimisations on, no spinning), ``ort-int8`` (the same
on the model quantized as ``smof-onnx export --quantize int8`` does it,
:func:`smof_onnx.export.quantize.quantize_ort`, calibrated on the feed it will be timed on or on
random normal inputs) and ``openvino`` (OpenVINO's CPU plugin on the ONNX file,
``INFERENCE_PRECISION_HINT`` f32, one stream, ``INFERENCE_NUM_THREADS`` threads, CPU pinning off:
see :mod:`smof_onnx.export.openvino` for why).

- :func:`runner`: ``model`` on ``runtime`` as a :data:`Runner` (graph-input feeds in, outputs
  out); a runtime that is not installed is a :class:`RuntimeMissingError` naming the extra.
- :func:`time_runners`: medians of several runners timed in a rotated order within one budget
  (the way :func:`smof_onnx.verify.compare_latency` times ONNX Runtime sessions).
- :func:`version`: the runtime's version, for cache keys and reports.
Torch-free.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx

from ..errors import UsageError
from .base import Runner, require

RUNTIMES = ("ort", "ort-int8", "openvino")
EXTRAS = {"openvino": "openvino"}


def openvino_cpu_config(threads: int, precision: str = "f32") -> dict[str, str]:
    """OpenVINO CPU compile properties for verification and timing (module docstring)."""
    return {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": str(threads), "NUM_STREAMS": "1",
            "ENABLE_CPU_PINNING": "NO"}


def check_runtime(runtime: str, what: str = "--latency-runtime") -> None:
    """A :class:`UsageError` for an unknown runtime, :class:`RuntimeMissingError` for a missing one."""
    if runtime not in RUNTIMES:
        raise UsageError(f"{what} {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if runtime == "openvino":
        require("openvino", EXTRAS[runtime], f"{what} openvino")


def version(runtime: str) -> str:
    if runtime == "openvino":
        return str(require("openvino", "openvino", "--latency-runtime openvino").__version__)
    if runtime == "ort-int8":  # the quantizer ships with ONNX Runtime
        import onnxruntime

        return f"{onnxruntime.__version__} (int8 QDQ)"
    import onnxruntime

    return onnxruntime.__version__


def runner(model: onnx.ModelProto, runtime: str, threads: int,
           calibration: Mapping[str, np.ndarray] | None = None) -> Runner:
    """``model`` compiled for the CPU on ``runtime`` with ``threads`` threads; ``calibration``:
    the feed ``ort-int8`` calibrates its activation ranges on (default: random normal inputs)."""
    check_runtime(runtime)
    names = [o.name for o in model.graph.output]
    if runtime == "ort-int8":
        from .quantize import quantize_ort
        from ..verify import random_feeds

        feed = dict(calibration) if calibration is not None else random_feeds(model, None, seed=0)
        with tempfile.TemporaryDirectory(prefix="smof-int8-") as tmp:
            src, dst = Path(tmp) / "model.onnx", Path(tmp) / "int8.onnx"
            onnx.save_model(model, str(src))
            model = quantize_ort(src, dst, [feed])
        runtime = "ort"
    if runtime == "ort":
        import onnxruntime as ort

        from ..verify import session_options

        sess = ort.InferenceSession(model.SerializeToString(), session_options(True, threads),
                                    providers=["CPUExecutionProvider"])
        return lambda feed: sess.run(names, dict(feed))
    ov = require("openvino", "openvino", "--latency-runtime openvino")
    core = ov.Core()
    with tempfile.TemporaryDirectory(prefix="smof-ov-") as tmp:  # OpenVINO reads ONNX from a file
        path = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(path))
        compiled = core.compile_model(core.read_model(str(path)), "CPU", openvino_cpu_config(threads))
    request = compiled.create_infer_request()
    outputs = [compiled.output(n) for n in names]

    def run(feed):
        result = request.infer(dict(feed))
        return [np.array(result[o]) for o in outputs]

    return run


def time_runners(runners: list[Runner], feeds: list[Mapping[str, np.ndarray]], budget_s: float,
                 warmup: int = 3, min_runs: int = 5, max_runs: int | None = None) -> list[float]:
    """Median ms of each ``runners[i](feeds[i])``: a warm-up, then the runners in a rotated order
    every iteration (none always runs first on a warm cache) until ``budget_s`` seconds have
    passed (and ``min_runs`` each; at most ``max_runs``)."""
    for _ in range(max(warmup, 1)):
        for r, f in zip(runners, feeds):
            r(f)
    times: list[list[float]] = [[] for _ in runners]
    k, it, start = len(runners), 0, time.perf_counter()
    while it < min_runs or (time.perf_counter() - start < budget_s and (max_runs is None or it < max_runs)):
        for j in range(k):
            i = (it + j) % k
            t0 = time.perf_counter()
            runners[i](feeds[i])
            times[i].append((time.perf_counter() - t0) * 1e3)
        it += 1
    return [statistics.median(t) for t in times]

