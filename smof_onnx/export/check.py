"""Verification of an exported artifact against ONNX Runtime fp32 on the input model.

Feeds: ``n_random`` random batches (standard normal floats, batch 2 or the model's fixed batch,
:func:`smof_onnx.verify.random_feeds`) and, with ``--data``, its first ``check_samples``
samples in batches of 32 (or the fixed batch). The reference runs the input model under ONNX
Runtime on the CPU with graph optimisations off; the artifact runs on its own runtime.

- fp32 artifacts (ONNX, ORT format, OpenVINO f32, TFLite fp32): on every feed and output,
  ``max|a - b| / max(max|a|, floor) <= fp32_tol`` (1e-4; the floor is 1 for outputs of
  Sigmoid / Softmax / HardSigmoid, see :func:`smof_onnx.verify.output_scale_floors`). Runtimes
  reorder float sums (fusions, Winograd, blocked layouts), which the 1e-5 gate of the cut does
  not allow for; measured errors are <= 1e-6 on the zoo.
- int8 artifacts, on the data feeds: a classifier (one output, shaped [N, C], C >= 2) needs
  top-1 agreement with the reference >= ``min_agreement`` (0.98; ORT int8 of the default
  ResNet-20 agrees on 99.4-99.6 %); any other model needs, per output, the relative RMS error
  ``||a - b||_2 / ||a||_2 <= max_rel_rms`` (0.10). The random feeds must still run and give
  finite outputs of the reference's shapes (random noise lies outside the calibrated ranges,
  so their values are not compared).
When the data has labels, the accuracy of both is reported (not a gate).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from .. import verify as ver
from .base import Runner

DATA_BATCH = 32


def make_feeds(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None, data: Any,
               n_random: int, check_samples: int) -> tuple[list[dict], list[dict], np.ndarray | None]:
    """(random feeds, data feeds, labels of the data feeds or None)."""
    fixed = fixed_batch(model)
    rand = [ver.random_feeds(model, shapes, seed=i, batch=fixed or 2) for i in range(n_random)]
    if data is None:
        return rand, [], None
    n = min(len(data), check_samples)
    step = fixed or DATA_BATCH
    feeds, labels = [], []
    for start in range(0, n - step + 1 if fixed else n, step):
        stop = min(start + step, n)
        feeds.append({k: v[start:stop] for k, v in data.inputs.items()})
        if data.labels is not None:
            labels.append(data.labels[start:stop])
    return rand, feeds, (np.concatenate(labels) if labels else None)


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The static batch (axis 0) of the first graph input, None when symbolic."""
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if inp.name not in inits and dims:
            return int(dims[0].dim_value) if dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    return None


def run_all(runner: Runner, feeds: list[dict]) -> list[list[np.ndarray]]:
    return [runner(f) for f in feeds]


def is_classifier(model: onnx.ModelProto) -> bool:
    outs = model.graph.output
    if len(outs) != 1:
        return False
    dims = outs[0].type.tensor_type.shape.dim
    return len(dims) == 2 and (not dims[1].HasField("dim_value") or dims[1].dim_value >= 2)


def check_fp32(model: onnx.ModelProto, ref: list[list[np.ndarray]], cand: list[list[np.ndarray]],
               tol: float) -> dict[str, Any]:
    names = [o.name for o in model.graph.output]
    floors = ver.output_scale_floors(model)
    per_output = {n: 0.0 for n in names}
    for a_outs, b_outs in zip(ref, cand):
        for n, a, b in zip(names, a_outs, b_outs):
            per_output[n] = max(per_output[n], ver.rel_err(a, b, floors.get(n, 0.0)))
    worst = max(per_output.values(), default=0.0)
    return {"kind": "fp32", "max_rel_err": worst, "tol": tol, "per_output": per_output, "inputs": len(ref),
            "ok": bool(worst <= tol)}


def check_int8(model: onnx.ModelProto, ref_rand, cand_rand, ref_data, cand_data, min_agreement: float,
               max_rel_rms: float) -> dict[str, Any]:
    names = [o.name for o in model.graph.output]
    problems = [f"output '{n}' has shape {list(b.shape)} instead of {list(a.shape)}"
                for outs_a, outs_b in zip(ref_rand + ref_data, cand_rand + cand_data)
                for n, a, b in zip(names, outs_a, outs_b) if a.shape != b.shape]
    problems += [f"output '{n}' is not finite on the random inputs" for outs in cand_rand
                 for n, b in zip(names, outs) if np.issubdtype(b.dtype, np.floating) and not np.isfinite(b).all()]
    out: dict[str, Any] = {"kind": "int8", "inputs": len(ref_rand) + len(ref_data), "problems": problems[:5]}
    if problems:
        return {**out, "ok": False}
    a = [np.concatenate([o[i] for o in ref_data]) for i in range(len(names))]
    b = [np.concatenate([o[i] for o in cand_data]) for i in range(len(names))]
    out["rel_rms"] = {n: _rel_rms(x, y) for n, x, y in zip(names, a, b)}
    out["samples"] = int(len(a[0]))
    if is_classifier(model):
        agreement = float(np.mean(a[0].argmax(1) == b[0].argmax(1)))
        return {**out, "agreement": agreement, "min_agreement": min_agreement, "ok": agreement >= min_agreement}
    worst = max(out["rel_rms"].values())
    return {**out, "max_rel_rms": max_rel_rms, "ok": bool(worst <= max_rel_rms)}


def accuracy(model: onnx.ModelProto, outs: list[list[np.ndarray]], labels: np.ndarray | None) -> float | None:
    if labels is None or not outs or not is_classifier(model):
        return None
    logits = np.concatenate([o[0] for o in outs])
    return float(np.mean(logits.argmax(1) == labels[:len(logits)]))


def _rel_rms(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norm = float(np.linalg.norm(a64))
    return float(np.linalg.norm(a64 - b64) / norm) if norm else float(np.linalg.norm(b64) > 0)


def describe_failure(result: dict[str, Any]) -> str:
    if result.get("problems"):
        return "; ".join(result["problems"])
    if result["kind"] == "fp32":
        worst = max(result["per_output"], key=result["per_output"].get)
        return (f"max relative error {result['max_rel_err']:.3g} > {result['tol']:g} against ONNX Runtime fp32 "
                f"(output '{worst}', {result['inputs']} input batches)")
    if "agreement" in result:
        return (f"top-1 agreement with ONNX Runtime fp32 {result['agreement']:.4f} < {result['min_agreement']:g} "
                f"on {result['samples']} samples of --data")
    return (f"relative RMS error {max(result['rel_rms'].values()):.3g} > {result['max_rel_rms']:g} "
            f"on {result['samples']} samples of --data")
