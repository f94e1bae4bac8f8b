"""Latency of an export against its input model, both on the artifact's runtime.

``onnx``: :func:`smof_onnx.verify.compare_latency` (ORT sessions rotated, plus the input against a
second session of itself: ``self_ratio`` near 1.00 says the machine was quiet). ``ort`` and
``openvino``: the input model (ORT session / OpenVINO compiling the ONNX file, f32 hint) and the
artifact rotated by :func:`smof_onnx.export.runtimes.time_runners`. ``tflite``: the artifact timed inside the TFLite
environment, the input model under ONNX Runtime (there is no TFLite build of the input to compare
with without a second conversion).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from .. import verify as ver
from .runtimes import time_runners


def measure(to: str, ref_path: Path, m: onnx.ModelProto, candidate: onnx.ModelProto, runner,
            shapes: dict | None, config) -> dict[str, Any]:
    budget, batch, threads = config.bench_seconds, config.bench_batch, config.threads
    feed_model = candidate if to == "tflite" else m
    feed = ver.random_feeds(feed_model, shapes if to != "tflite" else None, batch=batch)
    got = len(next(iter(feed.values())))
    out: dict[str, Any] = {"batch": got, "threads": threads, "seconds": budget}
    if to == "onnx":
        cmp = ver.compare_latency(m, candidate, shapes, threads=threads, batch=batch, budget_s=budget)
        before, after = cmp.a.median_ms, cmp.b.median_ms
        out["self_ratio"] = cmp.self_ratio
        out["input_on"] = "onnxruntime"
    elif to in ("ort", "openvino"):
        if to == "ort":
            from .ort_format import open_session

            original = open_session(ref_path, threads)
        else:
            from .openvino import open_compiled

            original = open_compiled(ref_path, [o.name for o in m.graph.output], threads)
        before, after = time_runners([original, runner], [feed, feed], budget)
        out["input_on"] = "onnxruntime" if to == "ort" else "openvino (f32)"
    else:
        from .ort_format import open_session

        after = runner.median_ms(feed, budget / 2)
        before = time_runners([open_session(ref_path, threads)], [feed], budget / 2)[0]
        out["input_on"] = "onnxruntime (no TFLite build of the input)"
    return {**out, "input_ms": before, "artifact_ms": after, "speedup": before / after if after else None}
