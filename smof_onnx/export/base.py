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
import importlib
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from ..errors import UsageError

Runner = Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]


class RuntimeMissingError(UsageError):
    """The runtime a command needs is not installed (exit 2); the message names the extra."""


def require(module: str, extra: str, what: str) -> object:
    """Import ``module`` or raise :class:`RuntimeMissingError` saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeMissingError(f"{what} needs the Python package '{module.split('.')[0]}', which is not "
                                  f"installed ({exc}); install it with: pip install 'smof-onnx[{extra}]'") from None


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


