"""Defaults that the methods (:mod:`smof_onnx.methods`) and the trainer (:mod:`smof_onnx.learn`)
both read; here so that neither imports the other for a constant and the torch-free methods need
not import the trainer."""
from __future__ import annotations

__all__ = ["FEATURE_DISTILL"]

# Default weight of the stage-output distillation (``--feature-distill``) in smof's training
# and the l2 / qr fine-tunes; measured in :mod:`smof_onnx.learn.losses`.
FEATURE_DISTILL = 1.0
