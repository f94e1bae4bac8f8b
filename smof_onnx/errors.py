"""The errors the product raises on purpose, and the exit code each maps to.

The graph library's errors (:mod:`smof_onnx.passes.base`) are re-exported so users catch
everything from one place. Exit codes (design 5): 2 for bad usage or bad input
(a ``MemoryError`` too: the sizes that exhaust memory come from the input -- shapes, data,
batch size -- and the message says which to lower), 3 when the verification gate refused to
write, 1 for anything else (a bug).
"""
from __future__ import annotations

from smof_onnx.passes.base import ModelError, PassError, SmofError, UnsupportedModelError

__all__ = ["SmofError", "ModelError", "UnsupportedModelError", "PassError", "DataError",
           "UsageError", "VerificationError", "exit_code"]


class DataError(SmofError):
    """Calibration data that cannot be read or does not fit the model's inputs."""


class UsageError(SmofError):
    """Arguments that contradict each other or the contract (e.g. output path == input path)."""


class VerificationError(SmofError):
    """The cut model does not compute what the input model computes; nothing was written.

    ``result`` is the :class:`smof_onnx.verify.VerifyResult` when the numbers were compared,
    None when the model failed before (checker, interface change, ONNX Runtime error).
    """

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


def exit_code(exc: BaseException) -> int:
    """The documented exit code for ``exc``."""
    if isinstance(exc, VerificationError):
        return 3
    if isinstance(exc, PassError):  # a pass broke its own contract: our bug, not the user's input
        return 1
    if isinstance(exc, (SmofError, MemoryError)):  # ModelError, UnsupportedModelError, DataError, UsageError, ...
        return 2
    return 1
