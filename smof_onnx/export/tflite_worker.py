"""Runs a .tflite file for smof-onnx in the TFLite environment (numpy + ai-edge-litert or
tensorflow only: this file is executed by that environment's Python, never imported by smof-onnx).

Protocol on stdin / stdout, one message each way per request: a 4-byte big-endian length and a
JSON header, then an 8-byte length and an .npz payload. Requests: ``{"op": "run"}`` with the
feeds (NHWC, the model's fixed batch) -> the outputs as ``out0``, ``out1``, ... in the order of
``names``; ``{"op": "time", "seconds": S, "warmup": W}`` with one feed -> ``{"median_ms": ...}``.
"""
import io
import json
import statistics
import struct
import sys
import time

import numpy as np


def _interpreter(path, threads):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tensorflow.lite import Interpreter
    return Interpreter(model_path=path, num_threads=threads)


def _read(stream, n):
    buf = stream.read(n)
    if len(buf) != n:
        raise EOFError
    return buf


def _send(out, header, arrays):
    raw = io.BytesIO()
    np.savez(raw, **arrays)
    head = json.dumps(header).encode()
    out.write(struct.pack(">I", len(head)) + head + struct.pack(">Q", raw.tell()) + raw.getvalue())
    out.flush()


def main():
    path, threads, names = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
    interp = _interpreter(path, threads)
    runner = interp.get_signature_runner()
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    _send(out, {"ready": True, "signature": interp.get_signature_list()}, {})
    while True:
        try:
            header = json.loads(_read(inp, struct.unpack(">I", _read(inp, 4))[0]))
            payload = _read(inp, struct.unpack(">Q", _read(inp, 8))[0])
        except EOFError:
            return
        with np.load(io.BytesIO(payload)) as npz:
            feed = {k: npz[k] for k in npz.files}
        try:
            if header["op"] == "run":
                result = runner(**feed)
                _send(out, {}, {f"out{i}": np.asarray(result[n]) for i, n in enumerate(names)})
            else:
                for _ in range(max(header.get("warmup", 3), 1)):
                    runner(**feed)
                times, start = [], time.perf_counter()
                while len(times) < 5 or time.perf_counter() - start < header["seconds"]:
                    t0 = time.perf_counter()
                    runner(**feed)
                    times.append((time.perf_counter() - t0) * 1e3)
                _send(out, {"median_ms": statistics.median(times), "runs": len(times)}, {})
        except Exception as exc:  # noqa: BLE001 -- reported to the parent, which raises its own error
            _send(out, {"error": f"{type(exc).__name__}: {exc}"}, {})


if __name__ == "__main__":
    main()
