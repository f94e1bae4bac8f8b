"""The training loss: distillation from the original model, cross-entropy with labels, stage outputs.

Losses (per graph output o, student s = the gated model, teacher t = the original):
- classifier outputs (rank 2, more than one column): ``T^2 KL(softmax(t/T) || softmax(s/T))``
  on their logits; a classifier that ends in its own Softmax (every row non-negative and summing
  to 1: kind ``probs``) is read through ``log p``, which is its logits up to a per-row constant,
  so the same loss applies (a softmax of probabilities would flatten [0.99, 0.01] to
  [0.73, 0.27] and weaken the signal about 30-fold)
  with ``temperature`` T = 1 by default (T = 4 measured 91.90% on the default model at 0.5
  FLOPs from 4096 images, but 2.4 points worse than T = 1 on the short 6 + 6 epoch schedule
  of the 512-image test at 0.7 FLOPs: 86.75% vs 89.2%);
  per-position distributions (rank >= 3, the teacher's last axis non-negative and summing to 1,
  e.g. a text recogniser's ``[N, T, classes]`` softmax): the mean over positions of
  ``KL(t || s)`` on the last axis (the normalised MSE of such a map is dominated by its few
  large probabilities and hardly moves the rest of each distribution);
  other outputs: normalised MSE ``mean((s - t)^2) / mean(t^2)``;
- plus cross-entropy on the first classifier output (through ``log p`` for ``probs``) when
  labels are given;
- plus ``feature_weight`` (``--feature-distill``, default :data:`FEATURE_WEIGHT` = 1) times
  :func:`feature_loss` on the *stage outputs* (:func:`feature_taps`: what each block that
  lowers the resolution reads), student against teacher on the same (mixed) batch. The output loss alone
  says only where the pruned network ends up; the stage outputs say where each stage should
  hand over, which a small calibration set cannot teach through the logits alone. Measured on
  the bench models at 0.5 FLOPs, 4096 images, 2 + 6 epochs, five seeds: VGG 90.90% against
  90.55% without (every seed higher, the lowest 90.72 above the highest 90.70 without),
  ResNet-20 91.50% against 91.32% (every seed higher, by 0.04 to 0.25); three seeds,
  MobileNetV2 90.36% against 90.19%; at 0.3, ResNet-20 90.99% against 90.87%, VGG 90.01%
  against 89.79%. Compress takes about 12% longer (one more teacher forward per step).
"""
from __future__ import annotations

import contextlib

import numpy as np
import onnx
import torch
from torch.nn import functional as F

from ..errors import DataError
from ..selection.taps import feature_taps
from . import distributed
from .batches import make_batch
from .settings import TrainSettings

__all__ = ["output_kinds", "check_labels", "distill_loss", "task_loss", "batch_loss", "backward_batch", "attach_feature_taps",
           "feature_loss", "feature_taps"]


DISTRIBUTION_TOLERANCE = 1e-3  # |sum - 1| over the last axis of a per-position distribution
_LOG_FLOOR = 1e-12  # log(0) of a student probability that underflowed


CLASSIFIER = ("logits", "probs")  # the kinds of a rank-2 classifier output


def output_kinds(outputs: tuple[torch.Tensor, ...]) -> list[str]:
    """Per output: ``probs`` (``[N, C]``, C > 1, every row a probability distribution: the
    model ends in a Softmax), ``logits`` (any other ``[N, C]``, C > 1), ``distribution`` (rank
    >= 3 whose last axis is a probability distribution at every position), else ``dense``."""
    return [_kind(o) for o in outputs]


def _sums_to_one(o: torch.Tensor) -> bool:
    if o.numel() == 0 or not o.is_floating_point():
        return False
    t = o.detach().double()
    return bool(torch.isfinite(t).all()) and float(t.min()) >= 0 and \
        float((t.sum(-1) - 1).abs().max()) <= DISTRIBUTION_TOLERANCE


def _kind(o: torch.Tensor) -> str:
    if o.ndim < 2 or o.shape[-1] < 2:
        return "dense"
    if o.ndim == 2:
        return "probs" if _sums_to_one(o) else "logits"
    return "distribution" if _sums_to_one(o) else "dense"


def first_classifier(kinds: list[str]) -> int | None:
    """Index of the first classifier output, or None."""
    return next((i for i, k in enumerate(kinds) if k in CLASSIFIER), None)


def _logits(x: torch.Tensor, kind: str) -> torch.Tensor:
    """A classifier output as logits: ``log p`` for ``probs`` (exact up to a per-row constant)."""
    return x.clamp_min(_LOG_FLOOR).log() if kind == "probs" else x


def check_labels(labels: np.ndarray | None, teacher: list[torch.Tensor]) -> None:
    """Labels index the classifier output's logits: raise :class:`DataError` before any training
    when one is out of range (cross-entropy would fail deep inside the first step)."""
    first = first_classifier(output_kinds(tuple(t[:1] for t in teacher)))
    if labels is None or len(labels) == 0 or first is None:
        return
    classes = int(teacher[first].shape[1])
    if int(labels.max()) >= classes:
        raise DataError(f"labels go up to {int(labels.max())}, but the model's classifier output has {classes} "
                        f"classes (labels must be 0..{classes - 1}); give labels that index the model's output, "
                        "or leave them out (distillation needs none)")


def distill_loss(student, teacher, kinds: list[str], temperature: float = 1.0) -> torch.Tensor:
    """KL at ``temperature`` (times T^2, so gradients keep their scale) for classifiers, KL per
    position for distributions, normalised MSE for other outputs."""
    loss = student[0].new_zeros(())
    T = float(temperature)
    for s, t, kind in zip(student, teacher, kinds):
        s = s.float()
        if kind in CLASSIFIER:
            s, t = _logits(s, kind), _logits(t.float(), kind)
            loss = loss + T * T * F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean",
                                           log_target=True)
        elif kind == "distribution":
            positions = max(1, t.numel() // t.shape[-1])
            loss = loss + F.kl_div(s.clamp_min(_LOG_FLOOR).log(), t.float().clamp_min(_LOG_FLOOR).log(),
                                   reduction="sum", log_target=True) / positions
        else:
            loss = loss + ((s - t) ** 2).mean() / (distributed.global_mean(t ** 2) + 1e-8)
    return loss


def task_loss(student, teacher, kinds, labels: torch.Tensor | None, temperature: float = 1.0) -> torch.Tensor:
    """Distillation on every sample; cross-entropy on the first ``len(labels)`` (the clean ones)."""
    loss = distill_loss(student, teacher, kinds, temperature)
    first = first_classifier(kinds)
    if labels is not None and first is not None:
        loss = loss + F.cross_entropy(_logits(student[first][:len(labels)].float(), kinds[first]), labels)
    return loss


def batch_loss(module, feeds, labels, teacher_module, gen, kinds, settings, runner=None, runtime=None,
               teacher=None, idx=None):
    """The training loss of one batch: distillation (+ cross-entropy with labels) on mixed inputs,
    plus ``feature_weight`` times :func:`feature_loss` when the modules tap features. ``runner``:
    what runs the forward pass (``module`` in DistributedDataParallel under torchrun)."""
    feeds, target_out, labels, target_taps = make_batch(feeds, labels, teacher_module, gen, settings.mix, runtime,
                                                        teacher, idx)
    auto = runtime.autocast() if runtime is not None else contextlib.nullcontext()
    with auto:
        out = (runner or module)(*feeds)
    loss = task_loss(out, target_out, kinds, labels, settings.temperature)
    if target_taps:
        loss = loss + settings.feature_weight * feature_loss(module.tapped, target_taps)
    return loss


def backward_batch(module, feeds, labels, teacher_module, gen, kinds, settings: TrainSettings,
                   split: int = 1, runner=None, runtime=None, scaler=None, teacher=None, idx=None) -> float:
    """The loss of the batch (``feeds``, ``labels``) and its gradients (``backward``, through
    ``scaler`` under float16 autocast); in ``split`` micro-batches
    (:class:`smof_onnx.learn.memory.MemoryGuard`) whose losses, weighted by their share of the
    batch, add up to the batch's loss, and so do the gradients (mixes pair samples within a
    micro-batch). Under DistributedDataParallel the gradients are exchanged at the last
    micro-batch only. ``teacher`` / ``idx``: precomputed targets, without ``teacher_module``
    (:func:`make_batch`). Returns the loss."""
    n = len(feeds[0])
    parts = np.array_split(np.arange(n), min(max(1, split), n))
    total = 0.0
    for k, part in enumerate(parts):
        sel = torch.as_tensor(part, device=feeds[0].device)
        f = feeds if len(parts) == 1 else [x[sel] for x in feeds]
        lab = labels if len(parts) == 1 or labels is None else labels[sel.to(labels.device)]
        sync = runner is not None and hasattr(runner, "no_sync") and k < len(parts) - 1
        with runner.no_sync() if sync else contextlib.nullcontext():
            loss = batch_loss(module, f, lab, teacher_module, gen, kinds, settings, runner, runtime, teacher,
                              None if idx is None else np.asarray(idx)[part]) * (len(part) / n)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.item()
    return total


def attach_feature_taps(student, teacher_module, model: onnx.ModelProto, settings: TrainSettings) -> list[str]:
    """Tap :func:`feature_taps` of ``model`` (the student's graph) in both modules when
    ``settings.feature_weight`` is above 0, leaving out a tap the teacher's graph does not
    compute (a teacher that is another graph); returns the taps."""
    if not settings.feature_weight or teacher_module is None:
        return []
    taps = [t for t in feature_taps(model) if t in teacher_module.node_outputs]
    student.set_taps(taps)
    teacher_module.set_taps(taps)
    return taps


def feature_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over the taps of ``mean((s - t)^2) / mean(t^2)``. A channel the gates removed reads 0
    in the student: its term is constant, so it pulls on nothing."""
    terms = [((student[k].float() - t.float()) ** 2).mean() / (distributed.global_mean(t.float().pow(2)) + 1e-8)
             for k, t in teacher.items()]
    return torch.stack(terms).mean()
