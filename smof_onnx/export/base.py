"""What every export target shares: the artifact it wrote, how to run it, and the error for a
runtime that is not installed.

A target module (``onnx_target``, ``ort_format``, ``openvino``, ``tflite``) offers
``require()`` (raises :class:`RuntimeMissingError` naming the extra), ``convert(...)`` (writes
the artifact into a private work folder and returns an :class:`Artifact`) and ``open(...)``
(a :data:`Runner`: graph-input feeds in, outputs out, in the ONNX model's output order and
NCHW layout whatever the runtime's own layout is).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

from ..runtimes import Runner, RuntimeMissingError, require  # noqa: F401 -- the targets' shared names


@dataclasses.dataclass(frozen=True)
class Artifact:
    """Files written in the work folder, in the order they are placed (the main file last:
    an OpenVINO ``.bin`` lands before its ``.xml``), each with the suffix its destination gets."""

    files: tuple[tuple[Path, str], ...]  # (file in the work folder, destination suffix: "" or ".bin")
    runtime: str
    info: Mapping[str, object] = dataclasses.field(default_factory=dict)

    @property
    def main(self) -> Path:
        return self.files[-1][0]


