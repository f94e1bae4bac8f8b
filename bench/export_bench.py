"""One table: models x deployment runtimes, every artifact written and verified by
``smof_onnx.export`` first, then measured with the runtime's own API.

    python bench/export_bench.py MODEL [MODEL ...] [--data CALIB.npz] [--seconds 3] [--threads 1]
                                 [--tflite-python PATH] [--test-samples N]

Columns: max relative error of the artifact against ONNX Runtime fp32 on the same model (Fashion-MNIST
test images), top-1 accuracy on them (labels from ``models.fashion_mnist``), median latency at batch 1
and 32, the speedup over the *first* model (the original) on the same runtime at batch 32, and over
the original under ONNX Runtime fp32 at batch 32.
Runtimes: ORT fp32, ORT int8 (QDQ), ORT format (portable), OpenVINO fp32 (f32 hint), OpenVINO int8
(NNCF), TFLite fp32 (only with --tflite-python / $SMOF_TFLITE_PYTHON; exported at batch 1 and 32).
Run from the repository root (``models`` is imported from there).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import fashion_mnist  # noqa: E402
from smof_onnx.export import ExportConfig, export  # noqa: E402
from smof_onnx.export.runtimes import time_runners  # noqa: E402

RUNTIMES = [("ORT fp32", "onnx", None), ("ORT int8", "onnx", "int8"), ("ORT format", "ort", None),
            ("OpenVINO fp32", "openvino", None), ("OpenVINO int8", "openvino", "int8"), ("TFLite fp32", "tflite", None)]


def _runner(to: str, path: Path, names: list[str], threads: int, python: str | None, model=None):
    if to in ("onnx", "ort"):
        from smof_onnx.export.ort_format import open_session
        return open_session(path, threads)
    if to == "openvino":
        from smof_onnx.export.openvino import open_compiled
        return open_compiled(path, names, threads)
    from smof_onnx.export.tflite import Worker
    return Worker(path, python, model, threads)


def _outputs(run, x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([run({"input": x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def _latency(run, x: np.ndarray, batch: int, seconds: float) -> float:
    feed = {"input": x[:batch]}
    if hasattr(run, "median_ms"):
        return run.median_ms(feed, seconds)
    return time_runners([run], [feed], seconds)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", default="models/default/calib.npz")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--test-samples", type=int, default=10000)
    ap.add_argument("--tflite-python", default=os.environ.get("SMOF_TFLITE_PYTHON"))
    args = ap.parse_args()
    import onnx

    x, y = fashion_mnist.load("test")
    x, y = x[:args.test_samples], y[:args.test_samples]
    runtimes = [r for r in RUNTIMES if r[1] != "tflite" or args.tflite_python]
    base: dict[str, float] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="smof-export-bench-") as tmp:
        for k, model in enumerate(args.models):
            m = onnx.load(model)
            names = [o.name for o in m.graph.output]
            from smof_onnx.export.ort_format import open_session
            ref = _outputs(open_session(Path(model), args.threads), x, 250)
            for label, to, q in runtimes:
                suffix = {"onnx": ".onnx", "ort": ".ort", "openvino": ".xml", "tflite": ".tflite"}[to]
                lat = {}
                err = acc = None
                for batch in (1, 32):
                    if to != "tflite" and batch == 32:
                        path = out  # one artifact serves both batches (symbolic batch)
                    else:
                        out = Path(tmp) / f"m{k}-{to}-{q}-{batch}{suffix}"
                        shapes = [f"{batch}x1x28x28"] if to == "tflite" else None
                        export(model, out, to, quantize=q, data=args.data, input_shapes=shapes,
                               tflite_python=args.tflite_python, config=ExportConfig(threads=args.threads))
                        path = out
                    fixed = None
                    if to == "tflite":
                        from smof_onnx.export.tflite import fix_batch
                        fixed = fix_batch(m, {"input": [batch, 1, 28, 28]})
                    run = _runner(to, path, names, args.threads, args.tflite_python, fixed)
                    try:
                        if err is None:
                            got = _outputs(run, x, 250)  # a fixed-batch-1 TFLite runner splits it
                            err = float(np.max(np.abs(got - ref[:len(got)])) / np.max(np.abs(ref)))
                            acc = float(np.mean(got.argmax(1) == y[:len(got)]))
                        lat[batch] = _latency(run, x, batch, args.seconds)
                    finally:
                        getattr(run, "close", lambda: None)()
                if k == 0:
                    base[label] = lat[32]
                rows.append((Path(model).name, label, err, acc, lat[1], lat[32], base[label] / lat[32],
                             base["ORT fp32"] / lat[32]))
                print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    head = ("model", "runtime", "max err vs ORT fp32", "accuracy %", "b1 ms", "b32 ms", "speedup b32",
            "vs ORT fp32 original b32")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, label, err, acc, b1, b32, sp, sp_ort in rows:
        print(f"| {name} | {label} | {err:.1e} | {acc * 100:.2f} | {b1:.2f} | {b32:.1f} | {sp:.2f}x | {sp_ort:.2f}x |")
    print(f"\nthreads {args.threads}, {len(x)} Fashion-MNIST test images, medians over {args.seconds:g} s; speedup = "
          "the first model's b32 latency on the same runtime / this row's")


if __name__ == "__main__":
    main()
