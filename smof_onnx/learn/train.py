"""The learning stage (design 4): search the gates under the FLOPs budget, then fine-tune.

One module per concern; this one re-exports their public names for the callers that read
``train.<name>`` (``methods/l2.py``, ``methods/qr.py``, ``bench/``):

- :mod:`.settings`: :class:`TrainSettings`, epoch defaults (:func:`make_settings`), threads;
- :mod:`.batches`: index batches, feeds, teacher outputs, mixed batches (:func:`make_batch`);
- :mod:`.losses`: distillation, cross-entropy and stage-output losses;
- :mod:`.search`: the gate search (importance / cost under a decreasing budget);
- :mod:`.finetune`: the fine-tune with the zeros fixed (smof's gates, or any zeroed model);
- :mod:`.quality`: the report's ``quality`` on held-out data;
- :mod:`.memory`: the learning stage's memory budget and the batch size it allows;
- torch-free: :mod:`smof_onnx.selection` (gates, budget, selection, feature taps).
"""
from __future__ import annotations

from ..selection.taps import feature_taps
from .batches import BN_SAMPLES, make_batch, predict, teacher_outputs
from .finetune import HALF_TYPES, attach_batchnorm, check_trainable, finetune, finetune_fixed, fold_batchnorm
from .losses import attach_feature_taps, check_labels, distill_loss, feature_loss, output_kinds, task_loss
from .quality import MASK_THRESHOLD, evaluate
from .search import gate_costs, search
from .settings import FEATURE_WEIGHT, TrainSettings, batched, make_settings, torch_threads

__all__ = ["TrainSettings", "torch_threads", "attach_batchnorm", "fold_batchnorm", "output_kinds",
           "teacher_outputs", "search", "finetune", "evaluate", "gate_costs", "finetune_fixed",
           "feature_taps", "attach_feature_taps", "feature_loss", "make_settings", "batched", "check_trainable",
           "check_labels", "distill_loss", "task_loss", "make_batch", "predict", "BN_SAMPLES", "HALF_TYPES",
           "MASK_THRESHOLD", "FEATURE_WEIGHT"]
