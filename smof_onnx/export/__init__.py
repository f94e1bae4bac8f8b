"""Verified export to a deployment runtime, optionally int8 (design 5c).

``export(model, output, to="onnx"|"ort"|"openvino"|"tflite", quantize=None|"int8", data=None, ...)``

1. The runtime is found first (none installed: :class:`RuntimeMissingError`, exit 2, naming
   the extra: ``pip install 'smof-onnx[openvino]'``; TFLite: the onnx2tf environment, see
   :mod:`.tflite`), then the destinations are checked, then the data (``--quantize`` needs it).
2. ``quantize="int8"``: ONNX Runtime static QDQ quantization (per-channel int8 weights, uint8
   activations, 7-bit weights, MinMax on ``data``; :mod:`.quantize`) for ``onnx`` / ``ort``;
   NNCF post-training quantization for ``openvino``; TFLite int8 is not offered.
3. The artifact is written into a work folder beside ``output``: ``onnx`` the model itself;
   ``ort`` ONNX Runtime's ORT format; ``openvino`` ``NAME.xml`` + ``NAME.bin``; ``tflite`` the
   float32 file from onnx2tf with the batch fixed (1 unless ``input_shapes`` say otherwise).
4. It is verified against ONNX Runtime fp32 on the input model (:mod:`.check`): random inputs
   plus the first 512 samples of ``data``; fp32 artifacts by max relative error <= 1e-4, int8
   ones by top-1 agreement >= 0.98 (classifiers) or relative RMS error <= 0.10 on ``data``.
   OpenVINO is compiled with ``INFERENCE_PRECISION_HINT = f32`` (its CPU default is bf16 on
   AMX / AVX512-BF16 CPUs); the report records the CPU's default precision.
5. Failed: :class:`VerificationError` (exit 3), and nothing is left (the work folder is removed).
   Passed: latency is measured when ``bench_seconds > 0`` (the input model and the artifact on
   the artifact's runtime, rotated, medians; ORT targets through
   :func:`smof_onnx.verify.compare_latency`), then every file of the artifact and the report are
   moved into place together (:mod:`.place`).

Returns the report (a JSON-ready dict).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import onnx

from smof_onnx.passes import graph as pgraph

from .. import verify as ver
from ..data import as_calibration
from ..errors import ModelError, UsageError, VerificationError
from . import check, place
from .base import Artifact, RuntimeMissingError

__all__ = ["export", "ExportConfig", "RuntimeMissingError", "TARGETS"]

TARGETS = ("onnx", "ort", "openvino", "tflite")
Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Thresholds and budgets of an export (defaults documented in :mod:`.check`)."""

    fp32_tol: float = 1e-4
    min_agreement: float = 0.98
    max_rel_rms: float = 0.10
    check_samples: int = 512
    calib_samples: int = 512
    n_random: int = 3
    reduce_range: bool = True
    threads: int = 1
    bench_seconds: float = 0.0
    bench_batch: int = 1
    ort_platform: str = "arm"


def export(model: Any, output: Any, to: str = "onnx", *, quantize: str | None = None, data: Any = None,
           input_shapes: Any = None, report_path: Any = None, tflite_python: Any = None,
           config: ExportConfig = ExportConfig(), progress: Progress | None = None) -> dict[str, Any]:
    """Write ``model`` for runtime ``to`` at ``output``, verified; see the module docstring."""
    if to not in TARGETS:
        raise UsageError(f"--to {to}: unknown target; choose one of {', '.join(TARGETS)}")
    if quantize not in (None, "int8"):
        raise UsageError(f"--quantize {quantize}: only int8 is supported")
    if config.ort_platform not in ("arm", "amd64"):
        raise UsageError(f"--ort-platform {config.ort_platform}: choose arm (portable) or amd64 (x86 only)")
    if quantize and data is None:
        raise UsageError("--quantize int8 needs --data: the activation ranges are calibrated on it")
    if quantize and to == "tflite":
        raise UsageError("--to tflite --quantize int8 is not supported; export --to onnx --quantize int8 for ONNX "
                         "Runtime, or --to openvino --quantize int8")
    python = _require_runtime(to, quantize, tflite_python)
    src, m = _load(model)
    place.check_paths(src, output, to, report_path)
    shapes = _shapes(m, input_shapes)
    calib = as_calibration(data, m, shapes)
    work = place.work_folder(output)
    try:
        report = _export_in(work, m, src, output, to, quantize, calib, shapes, python, config, progress)
        moves = [(f, place.destination(output, suffix)) for f, suffix in report.pop("_files")]
        if report_path is not None:
            from ..report import stage_report

            moves.append((stage_report(report, report_path), Path(report_path)))
        place.place(moves)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _load(model: Any) -> tuple[Path | None, onnx.ModelProto]:
    """(path or None, a private copy): what :func:`smof_onnx.api.load` does (api calls this
    package, so it is not imported from here)."""
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return None, copy
    if isinstance(model, (str, os.PathLike)):
        return Path(model), pgraph.load_model(model)
    raise UsageError(f"model must be a path or an onnx.ModelProto, not {type(model).__name__}")


def _shapes(m: onnx.ModelProto, input_shapes: Any) -> dict[str, list[int]] | None:
    """``input_shapes`` (dict or ["x=1x3x224x224"] specs) as a dict; every non-batch dim must then
    be known (ModelError naming the input otherwise), as in :func:`smof_onnx.api.resolve_shapes`."""
    if input_shapes is None:
        shapes = None
    elif isinstance(input_shapes, Mapping):
        shapes = {k: [int(d) for d in v] for k, v in input_shapes.items()}
    else:
        inits = {i.name for i in m.graph.initializer}
        shapes = pgraph.parse_shape_spec(list(input_shapes), [i.name for i in m.graph.input if i.name not in inits])
    pgraph.graph_input_shapes(m, shapes, default_dim=1)
    return shapes


def _require_runtime(to: str, quantize: str | None, tflite_python: Any) -> str | None:
    if to == "openvino":
        from . import openvino

        openvino.require_openvino()
        if quantize:
            from .base import require

            require("nncf", openvino.EXTRA, "--to openvino --quantize int8")
    if to == "tflite":
        from . import tflite

        return tflite.find_python(tflite_python)
    return None


def _export_in(work: Path, m: onnx.ModelProto, src: Path | None, output: Any, to: str, quantize: str | None,
               calib: Any, shapes: dict | None, python: str | None, config: ExportConfig,
               progress: Progress | None) -> dict[str, Any]:
    ref_path = pgraph.save_model(m, work / "input.onnx")
    batches = None
    candidate = m
    if quantize:
        from .quantize import calibration_batches, quantize_ort

        batches = calibration_batches(calib, config.calib_samples)
        if to in ("onnx", "ort"):
            _say(progress, f"quantizing to int8 (ONNX Runtime QDQ, {sum(len(next(iter(b.values()))) for b in batches)} "
                           "calibration samples)")
            candidate = quantize_ort(ref_path, work / "int8.onnx", batches, config.reduce_range)
    if to == "tflite":
        from . import tflite

        candidate = tflite.fix_batch(candidate, ver.feed_shapes(candidate, shapes, batch=1))
    candidate = _conversion_input(candidate)
    _say(progress, f"writing the {to} artifact")
    artifact = _convert(work, candidate, to, batches if to == "openvino" else None, python, config.ort_platform)
    feeds_model = candidate if to == "tflite" else m
    rand, data_feeds, labels = check.make_feeds(feeds_model, shapes if to != "tflite" else None, calib,
                                                config.n_random, config.check_samples)
    _say(progress, f"verifying against ONNX Runtime fp32 ({len(rand)} random + {len(data_feeds)} data batches)")
    ref_rand, ref_data = _reference(ref_path, m, rand), _reference(ref_path, m, data_feeds)
    runner = _open(artifact, m, candidate, python, config.threads)
    try:
        cand_rand = check.run_all(runner, rand)
        cand_data = check.run_all(runner, data_feeds)
        if quantize:
            result = check.check_int8(m, ref_rand, cand_rand, ref_data, cand_data, config.min_agreement,
                                      config.max_rel_rms)
        else:
            result = check.check_fp32(m, ref_rand + ref_data, cand_rand + cand_data, config.fp32_tol)
        result["accuracy_input"] = check.accuracy(m, ref_data, labels)
        result["accuracy_artifact"] = check.accuracy(m, cand_data, labels)
        if not result["ok"]:
            raise VerificationError(f"the {to}{' int8' if quantize else ''} export does not compute what the model "
                                    f"computes: {check.describe_failure(result)}; nothing was written", result)
        latency = None
        if config.bench_seconds > 0:
            _say(progress, f"timing ({config.bench_seconds:g} s, batch {config.bench_batch})")
            from .latency import measure

            latency = measure(to, ref_path, m, candidate, runner, shapes, config)
    finally:
        getattr(runner, "close", lambda: None)()
    report = {"model": str(src) if src else None, "output": str(output), "to": to, "quantize": quantize,
              "runtime": artifact.runtime, "artifact": dict(artifact.info),
              "files": [str(place.destination(output, s)) for _, s in artifact.files],
              "verification": result, "latency": latency}
    if to == "openvino":
        from . import openvino

        report["artifact"]["cpu_default_precision"] = openvino.default_precision()
        report["artifact"]["verified_precision"] = "f32 (INFERENCE_PRECISION_HINT)"
    report["_files"] = list(artifact.files)
    return report


def _conversion_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """The ONNX model handed to the converter (tests replace this to tamper with an export)."""
    return model


def _convert(work: Path, candidate: onnx.ModelProto, to: str, batches, python: str | None,
             ort_platform: str) -> Artifact:
    from . import ort_format

    if to == "onnx":
        return ort_format.convert_onnx(candidate, work / "artifact")
    path = pgraph.save_model(candidate, work / "candidate.onnx")
    if to == "ort":
        return ort_format.convert_ort(path, work, ort_platform)
    if to == "openvino":
        from . import openvino

        return openvino.convert(path, work, batches)
    from . import tflite

    return tflite.convert(candidate, work, python)


def _reference(path: Path, m: onnx.ModelProto, feeds: list[dict]) -> list[list]:
    """The input model's outputs under ONNX Runtime fp32, optimisations off (the gate's rules)."""
    import onnxruntime as ort

    names = [o.name for o in m.graph.output]
    try:
        sess = ort.InferenceSession(str(path), ver.session_options(False), providers=["CPUExecutionProvider"])
        return [sess.run(names, f) for f in feeds]
    except Exception as exc:  # noqa: BLE001 -- ORT's pybind errors
        raise ModelError(f"ONNX Runtime cannot run the input model ({str(exc).strip().splitlines()[0]}); the "
                         "export is verified against it on the CPU execution provider") from exc


def _open(artifact: Artifact, m: onnx.ModelProto, candidate: onnx.ModelProto, python: str | None, threads: int):
    if artifact.runtime == "onnxruntime":
        from .ort_format import open_session

        return open_session(artifact.main, threads)
    if artifact.runtime == "openvino":
        from .openvino import open_compiled

        return open_compiled(artifact.main, [o.name for o in m.graph.output], threads)
    from .tflite import Worker

    return Worker(artifact.main, python, candidate, threads)


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)
