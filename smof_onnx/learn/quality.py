"""How close the compressed model stays to the original on held-out data (the report's ``quality``)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .losses import CLASSIFIER, first_classifier, output_kinds

__all__ = ["evaluate", "MASK_THRESHOLD", "MIN_SAMPLES"]


MIN_SAMPLES = 32  # below this many held-out samples, quality carries a warning


def evaluate(before: list[torch.Tensor], after: list[torch.Tensor], labels: np.ndarray | None,
             split: str, names: list[str] | None = None) -> dict[str, Any]:
    """Accuracy (labels) or agreement with the original, per output and overall.

    Classifier outputs (``[N, C]``, C > 1): top-1 agreement, and accuracy before / after with
    labels. Per-position distributions (``[N, T, ..., C]``, e.g. a CTC recogniser's softmax):
    ``top1_agreement`` over all positions and ``sequence_agreement``, the share of samples whose
    best class is unchanged at every position (then a greedy CTC decoding reads the same string). Every output: ``relative_error``, the largest absolute difference over the largest
    absolute original value (worst case), and ``relative_rms_error``, ``||after - before|| /
    ||before||`` over the whole split (the headline for dense outputs: a max-based error of a
    sigmoid map is about 1 as soon as one pixel flips, whatever the rest does). Dense outputs
    whose original values all lie in [0, 1] (probability maps) also get ``mask_iou``: the
    intersection over union of the maps thresholded at ``MASK_THRESHOLD``.
    ``outputs``: these numbers for every output, keyed by ``names`` (the graph's output names;
    default ``output_0``, ...); the top-level numbers are the worst over the outputs (the first
    classifier output for agreement and accuracy). With fewer than :data:`MIN_SAMPLES` samples,
    ``warnings`` says how many the numbers rest on."""
    kinds = output_kinds(tuple(b[:1] for b in before))
    names = list(names) if names is not None and len(names) == len(before) else \
        [f"output_{i}" for i in range(len(before))]
    n = int(before[0].shape[0])
    out: dict[str, Any] = {"split": split, "samples": n}
    per: dict[str, dict[str, Any]] = {}
    for name, b, a, kind in zip(names, before, after, kinds):
        b, a = b.double(), a.double()
        row: dict[str, Any] = {"kind": "classifier" if kind in CLASSIFIER else kind}
        if kind in CLASSIFIER:
            pb, pa = b.argmax(1).numpy(), a.argmax(1).numpy()
            row["top1_agreement"] = float((pb == pa).mean())
            if labels is not None:
                row["accuracy_before"] = float((pb == labels).mean())
                row["accuracy_after"] = float((pa == labels).mean())
        elif kind == "distribution":
            same = b.argmax(-1) == a.argmax(-1)
            row["top1_agreement"] = float(same.double().mean())
            row["sequence_agreement"] = float(same.reshape(same.shape[0], -1).all(1).double().mean())
        row["relative_error"] = float((a - b).abs().max() / (b.abs().max() + 1e-12))
        row["relative_rms_error"] = float((a - b).norm() / (b.norm() + 1e-12))
        if kind == "dense" and _is_probability(b):
            row["mask_iou"], row["mask_threshold"] = _mask_iou(a, b), MASK_THRESHOLD
        per[name] = row
    rows = list(per.values())
    if first_classifier(kinds) is not None:
        first = rows[first_classifier(kinds)]
        out["top1_agreement"] = first["top1_agreement"]
        if labels is not None:
            out["metric"] = "accuracy"
            out["accuracy_before"], out["accuracy_after"] = first["accuracy_before"], first["accuracy_after"]
        else:
            out["metric"] = "top1_agreement"
    elif "distribution" in kinds:
        first = rows[kinds.index("distribution")]
        out["metric"] = "sequence_agreement"
        out["top1_agreement"], out["sequence_agreement"] = first["top1_agreement"], first["sequence_agreement"]
    else:
        out["metric"] = "relative_rms_error"
    out["relative_error"] = max(r["relative_error"] for r in rows)
    out["relative_rms_error"] = max(r["relative_rms_error"] for r in rows)
    ious = [r["mask_iou"] for r in rows if "mask_iou" in r]
    if ious:
        out["mask_iou"], out["mask_threshold"] = min(ious), MASK_THRESHOLD
    out["outputs"] = per
    if n < MIN_SAMPLES:
        out["warnings"] = [f"the {split} split holds only {n} sample(s): these numbers rest on them and may be far "
                           f"off; give more data (at least {MIN_SAMPLES} held out: more images, or a larger "
                           "--val-split)"]
    return out


MASK_THRESHOLD = 0.5


def _is_probability(t: torch.Tensor) -> bool:
    return t.numel() > 0 and float(t.min()) >= 0.0 and float(t.max()) <= 1.0


def _mask_iou(after: torch.Tensor, before: torch.Tensor) -> float:
    a, b = after > MASK_THRESHOLD, before > MASK_THRESHOLD
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union
