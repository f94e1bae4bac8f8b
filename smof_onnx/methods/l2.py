"""``--method l2``: the data-free baseline (filter L2 norm + kernel-border energy). No torch.

Scores (higher = keep), comparable across layers because both are "share of the layer's
weight energy removed / share of the layer's FLOPs removed":
- channel slot: the mean over its producers of ``||W_c||^2 / mean_c' ||W_c'||^2`` (filter +
  bias, or BN scale^2 + shift^2): 1 for an average filter of its layer;
- ring level j of axis a of a Conv with kernel k_a: the energy of the slices levels 1..j
  remove (an inner ring drops the outer ones with it) over the kernel's energy, divided by
  ``2 j / k_a``, the fraction of the layer's FLOPs they carry: 1 for a uniform kernel, less
  for the usual trained kernel whose centre holds most of the energy.
Without data the selection is conservative with the kernel borders of depthwise and grouped
convs: they hold a few % of the FLOPs but every output channel of such a conv reads one input
channel through its kernel alone, so a ring removed there is not compensated by other
channels, and with no data nothing can be refitted or measured. A ring level that would leave
such a kernel below :data:`MIN_GROUPED_KERNEL` (3) on an axis gets the score
:data:`LAST_RESORT` (trimmed only if nothing else meets the target), and the other levels'
scores are multiplied by :data:`GROUPED_RING_WEIGHT`.
After the selection, the data-free result is checked against the original on random inputs
(ONNX Runtime, :func:`output_change`): an output whose relative RMS change exceeds
:data:`WARN_CHANGE` adds a line to ``settings["warnings"]`` (the report's ``method.warnings``),
since l2 without data can neither correct nor measure that change.
The gates are then chosen by :func:`smof_onnx.selection.select.select` (trim / restore by score,
the real cut counted) so the cut model meets ``target_flops``. With data (and torch
installed), the weights are fine-tuned with the zeros fixed
(:func:`smof_onnx.learn.train.finetune_fixed`, distilled from the original's outputs and, as
smof does, its stage outputs, weight ``feature_distill``) and the quality is measured on the
held-out split; without data the zeroed weights are returned as they are. The stage outputs
measured on the bench ResNet-20 at 0.5 FLOPs (4096 images, 8 epochs, seeds 0-2): 89.71%
against 89.20% with the outputs alone, every seed higher.
"""
from __future__ import annotations

import time

import numpy as np
import onnx
from onnx import numpy_helper

from ..data import as_calibration
from ..errors import UsageError
from ..selection.gates import GateSpace
from ..selection.select import check_has_flops, prepare, select
from . import CompressConfig, MethodResult
from .latency import latency_budget, latency_report, use_runtime_counts


MIN_GROUPED_KERNEL = 3     # without data, a depthwise / grouped kernel keeps at least this per axis
LAST_RESORT = 1e6          # the score of a ring that only a target out of other reach may take
GROUPED_RING_WEIGHT = 10.0  # without data, a depthwise / grouped ring counts this much more
WARN_CHANGE = 0.5          # relative RMS change of an output (random inputs) that warrants a warning


def scores(model: onnx.ModelProto, space: GateSpace, conservative: bool = False) -> np.ndarray:
    """Per-gate keep score (see the module docstring); ``conservative``: the data-free rule for
    the kernel borders of depthwise and grouped convs."""
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    grouped = {n.input[1] for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 1
               and any(a.name == "group" and a.i > 1 for a in n.attribute)}
    s = np.ones(space.size)
    for (weight, a), idx in space.axes.items():
        w2 = inits[weight] ** 2
        total = w2.sum() or 1.0
        k = w2.shape[2 + a]
        along = w2.sum(axis=tuple(d for d in range(w2.ndim) if d != 2 + a))
        for i in idx:
            j = space.kernel[i].level
            removed = along[:j].sum() + along[k - j:].sum()
            s[i] = (removed / total) / (2 * j / k)
            if conservative and weight in grouped:
                s[i] = LAST_RESORT if k - 2 * j < MIN_GROUPED_KERNEL else s[i] * GROUPED_RING_WEIGHT
    energy: dict[str, np.ndarray] = {}
    for gate in space.channel:
        vals = []
        for node_name, op, c in gate.producers:
            if node_name not in energy:
                energy[node_name] = _filter_energy(nodes[node_name], op, inits)
            e = energy[node_name]
            vals.append(e[c] / (e.mean() or 1.0))
        s[gate.index] = float(np.mean(vals))
    return s


def _filter_energy(node: onnx.NodeProto, op: str, inits: dict[str, np.ndarray]) -> np.ndarray:
    """Energy per output channel of a zeroable producer."""
    ins = list(node.input)
    bias = inits[ins[2]] ** 2 if len(ins) > 2 and ins[2] in inits else None
    if op == "Conv":
        e = (inits[ins[1]] ** 2).reshape(inits[ins[1]].shape[0], -1).sum(1)
    elif op == "ConvTranspose":
        w = inits[ins[1]]
        group = next((a.i for a in node.attribute if a.name == "group"), 1) or 1
        per_in = w.shape[0] // group
        e = np.concatenate([(w[g * per_in:(g + 1) * per_in] ** 2).sum(axis=tuple(d for d in range(w.ndim) if d != 1))
                            for g in range(group)])
    elif op == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        w = inits[ins[1]] ** 2
        e = w.sum(1) if trans_b else w.sum(0)
        bias = bias.reshape(-1, e.size)[-1] if bias is not None and bias.size >= e.size else None
    elif op == "MatMul":
        w = inits[ins[1]] ** 2
        e = w.reshape(-1, w.shape[-1]).sum(0)
    else:  # BatchNormalization / InstanceNormalization: the per-channel affine
        e = inits[ins[1]] ** 2
    return e + (bias.reshape(-1)[:e.size] if bias is not None and bias.size == e.size else 0)


def run(model: onnx.ModelProto, data, config: CompressConfig) -> MethodResult:
    calib = as_calibration(data, model, config.input_shapes)  # validated before anything else
    start = time.perf_counter()
    problem = prepare(model, config.input_shapes, kernel=config.kernel, channel=config.channel,
                      multiple=config.channel_multiple)
    check_has_flops(problem)  # before the latency table is timed (a model without FLOPs has nothing to cut)
    latency = latency_budget(problem, config)
    skipped_counts = [] if latency is None else use_runtime_counts(problem, latency)
    extra = [] if latency is None else [(latency, config.target_latency)]
    s = scores(problem.model, problem.space, conservative=calib is None)
    h, ratios = select(problem, s, config.target_flops, threshold=-np.inf, extra=extra)
    zeroed = problem.space.apply(problem.model, h)
    quality = None
    settings = {**config.settings(), "gates": {"kernel": len(problem.space.kernel),
                                               "channel": len(problem.space.channel)},
                "flops_ratio_estimated": ratios["estimated"], "flops_ratio_cut": ratios["cut"], "finetuned": False}
    if calib is not None:
        zeroed, quality, extra = _finetune(problem, calib, h, config)
        settings.update(extra)
    else:
        change = output_change(problem.model, zeroed, config.input_shapes)
        settings["output_change_random_inputs"] = change
        settings["warnings"] = [
            f"output '{name}' changed by {err:.0%} (relative RMS, random inputs): data-free l2 can neither "
            "correct nor measure this; give --data to fine-tune and measure the quality, or keep more FLOPs"
            for name, err in change.items() if not err <= WARN_CHANGE]
    if latency is not None:
        settings["latency"] = latency_report(problem, latency, zeroed, h, config)
        settings["latency"]["skipped_counts"] = skipped_counts
    settings["seconds"] = round(time.perf_counter() - start, 2)
    return MethodResult(zeroed, settings, problem.space.choices(problem.model, h), quality)


def output_change(original: onnx.ModelProto, changed: onnx.ModelProto, input_shapes=None, batch: int = 2,
                  seed: int = 0) -> dict[str, float]:
    """Relative RMS change ``||changed - original|| / ||original||`` of every output on ``batch``
    standard-normal inputs (ONNX Runtime, one thread); NaN when the models cannot be run."""
    import onnxruntime as ort

    from ..verify import random_feeds

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        feeds = random_feeds(original, input_shapes, seed=seed, batch=batch)
        outs = []
        for m in (original, changed):
            sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            names = [o.name for o in sess.get_outputs()]
            outs.append(dict(zip(names, sess.run(names, feeds))))
    except Exception:  # noqa: BLE001 -- an estimate for a warning; the gate checks the cut itself
        return {o.name: float("nan") for o in original.graph.output}
    change = {}
    for name, a in outs[0].items():
        a64, b64 = np.asarray(a, np.float64), np.asarray(outs[1][name], np.float64)
        change[name] = round(float(np.linalg.norm(b64 - a64) / (np.linalg.norm(a64) + 1e-12)), 6)
    return change


def _finetune(problem, calib, h: np.ndarray, config: CompressConfig):
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UsageError("fine-tuning --method l2 with --data needs PyTorch; leave out --data for the "
                         "data-free result") from None
    from ..learn import train
    from ..learn.executor import OnnxModule

    calib = as_calibration(calib, problem.model, config.input_shapes)
    train_set, val_set = calib.split(config.val_split, config.seed)
    settings = train.make_settings(config, len(train_set))
    zeroed = problem.space.apply(problem.model, h)
    tuned = train.finetune_fixed(zeroed, train_set, settings.finetune_epochs, lr=settings.lr,
                                 batch_size=settings.batch_size, seed=config.seed,
                                 progress_bars=settings.progress, teacher=problem.model,
                                 threads=config.threads, feature_distill=settings.feature_weight,
                                 device=config.device, amp=config.amp)
    quality = None
    if val_set is not None:
        before = train.predict(OnnxModule(problem.model).eval(), val_set, settings.batch_size)
        after = train.predict(OnnxModule(tuned).eval(), val_set, settings.batch_size)
        quality = train.evaluate(before, after, val_set.labels, "val")
    return tuned, quality, {"finetuned": True, "finetune_epochs": settings.finetune_epochs, "lr": settings.lr,
                            "feature_distill": settings.feature_weight,
                            "feature_taps": train.feature_taps(zeroed) if settings.feature_weight else []}
