"""OpenVINO IR (``.xml`` graph + ``.bin`` weights), fp32 or NNCF int8.

Pitfalls handled here:

- ``openvino.save_model`` compresses weights to fp16 by default; the fp32 export passes
  ``compress_to_fp16=False`` so the IR holds the exact weights.
- The CPU plugin's default ``INFERENCE_PRECISION_HINT`` is bf16 on CPUs with AMX or AVX512-BF16:
  outputs then move by ~1e-3..1e-2 relative (2e-3 to 8.5e-3 measured on compressed ResNet-20s)
  and top-1 by a few hundredths of a point. Verification and timing compile with the hint set
  to f32; :func:`default_precision` tells what this CPU would use unset, and the report says so.
- Timing and verification compile with one stream, ``INFERENCE_NUM_THREADS`` threads and CPU
  pinning off: pinned threads wait for their core when other processes share the CPU (the
  default ResNet-20 at batch 1 took 5.9 ms pinned with the LATENCY hint, 1.4 ms unpinned, on a
  2-core machine shared with other jobs).
- The IR is two files, placed both or neither by the caller; ``read_model(xml)`` finds the
  ``.bin`` by the same stem, so the pair must keep matching names.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import VerificationError
from .runtimes import openvino_cpu_config
from .base import Artifact, Runner, require

EXTRA = "openvino"


def require_openvino():
    return require("openvino", EXTRA, "--to openvino")


def convert(model_path: Path, work: Path, calibration: list[dict[str, np.ndarray]] | None = None) -> Artifact:
    """``model_path`` (ONNX) as IR in ``work``; quantized by NNCF when ``calibration`` is given."""
    ov = require_openvino()
    try:
        model = ov.convert_model(str(model_path))
    except Exception as exc:  # noqa: BLE001 -- OpenVINO's frontend errors are plain RuntimeErrors
        raise VerificationError(f"OpenVINO could not convert the model: {_first_line(exc)}; nothing was written") from exc
    info: dict[str, object] = {"format": "openvino-ir", "weights": "fp32"}
    if calibration is not None:
        from .quantize import quantize_openvino

        model = quantize_openvino(model, calibration)
        info["weights"] = "int8 (NNCF post-training quantization)"
    xml = work / "model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return Artifact(((xml.with_suffix(".bin"), ".bin"), (xml, "")), "openvino", info)


def default_precision() -> str:
    """The CPU plugin's inference precision when the hint is left unset (f32, bf16 or f16)."""
    ov = require_openvino()
    value = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    return value.to_string() if hasattr(value, "to_string") else str(value)


def open_compiled(xml: Path, names: list[str], threads: int = 1, precision: str = "f32") -> Runner:
    """A CPU compiled model on the IR at ``xml`` with ``INFERENCE_PRECISION_HINT = precision``,
    returning the outputs ``names`` (the ONNX graph's output names, which the IR keeps)."""
    ov = require_openvino()
    core = ov.Core()
    try:
        compiled = core.compile_model(core.read_model(str(xml)), "CPU", openvino_cpu_config(threads, precision))
    except Exception as exc:  # noqa: BLE001
        raise VerificationError(f"OpenVINO cannot compile the exported IR: {_first_line(exc)}; "
                                "nothing was written") from exc
    request = compiled.create_infer_request()
    try:
        outputs = [compiled.output(n) for n in names]
    except Exception as exc:  # noqa: BLE001
        raise VerificationError(f"the exported IR lacks the model's outputs {names}: {_first_line(exc)}; "
                                "nothing was written") from exc

    def run(feed):
        result = request.infer(dict(feed))
        return [np.array(result[o]) for o in outputs]

    return run


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
