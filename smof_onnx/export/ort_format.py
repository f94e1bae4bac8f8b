"""ONNX Runtime targets: ``--to onnx`` (the model as ONNX, possibly int8) and ``--to ort`` (ONNX
Runtime's flatbuffer format for its mobile / minimal builds).

The ORT format file is what ``onnxruntime.tools.convert_onnx_models_to_ort`` writes with its
default "fixed" optimisation style: a session at ``ORT_ENABLE_ALL`` saves its optimised graph
with ``session.save_model_format = ORT``, with the ``NchwcTransformer`` disabled, because that
layout rewrite is specific to x86 CPUs and the file would not load on ARM phones. The price on
x86: the portable default ResNet-20 ran 2.3x slower at batch 1 and 1.7x at batch 32 than ORT on
the .onnx; ``platform="amd64"`` (``--ort-platform amd64``) keeps NCHWc for x86-only deployments
(as fast as the .onnx).
"""
from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort

from smof_onnx.passes import graph as pgraph

from .. import verify as ver
from ..errors import VerificationError
from .base import Artifact, Runner

# x86-only layout rewrite: keeping it out makes the .ort file portable (what the ORT tool does).
_NOT_PORTABLE = ["NchwcTransformer"]


def convert_onnx(model: onnx.ModelProto, work: Path) -> Artifact:
    """The model itself, saved (external data only past the protobuf limit)."""
    work.mkdir(exist_ok=True)
    path = pgraph.save_model(model, work / "model.onnx")
    files = [(path, "")]
    data = path.parent / (path.name + ".data")
    if data.exists():
        files.insert(0, (data, ".data"))
    return Artifact(tuple(files), "onnxruntime", {"format": "onnx"})


def convert_ort(model_path: Path, work: Path, platform: str = "arm") -> Artifact:
    """``model_path`` (an .onnx in the work folder) as an optimised .ort file beside it; ``platform``
    "arm" (portable, the default of ORT's own tool) or "amd64" (keeps the x86-only NCHWc layout)."""
    out = work / "model.ort"
    opts = ver.session_options(True, threads=1)
    opts.optimized_model_filepath = str(out)
    opts.add_session_config_entry("session.save_model_format", "ORT")
    try:
        ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"],
                             disabled_optimizers=_NOT_PORTABLE if platform != "amd64" else None)
    except Exception as exc:  # noqa: BLE001 -- ORT raises its own pybind types
        raise VerificationError(f"ONNX Runtime could not convert the model to ORT format: {_first_line(exc)}; "
                                "nothing was written") from exc
    layout = "NCHWc (x86 only)" if platform == "amd64" else "no NCHWc (portable)"
    return Artifact(((out, ""),), "onnxruntime", {"format": "ort", "optimization": f"ORT_ENABLE_ALL, {layout}",
                                                  "platform": platform})


def open_session(path: Path, threads: int = 1) -> Runner:
    """A CPU session on the artifact at ``path`` with the default (full) optimisations."""
    try:
        sess = ort.InferenceSession(str(path), ver.session_options(True, threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise VerificationError(f"ONNX Runtime cannot load the exported {path.suffix} file: {_first_line(exc)}; "
                                "nothing was written") from exc
    names = [o.name for o in sess.get_outputs()]
    return lambda feed: sess.run(names, dict(feed))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
