"""The learning stage (design 4): search the gates under the FLOPs budget, then fine-tune.

Losses (per graph output o, student s = the gated model, teacher t = the original):
- classifier outputs (rank 2, more than one column): ``T^2 KL(softmax(t/T) || softmax(s/T))``
  with ``temperature`` T = 1 by default (T = 4 measured 91.90% on the default model at 0.5
  FLOPs from 4096 images, but 2.4 points worse than T = 1 on the short 6 + 6 epoch schedule
  of the 512-image test at 0.7 FLOPs: 86.75% vs 89.2%);
  other outputs: normalised MSE ``mean((s - t)^2) / mean(t^2)``;
- plus cross-entropy on the first classifier output when labels are given;
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
Each batch is extended by convex mixes of its own samples whose targets the teacher computes
(:func:`make_batch`): distillation needs no labels, so this multiplies a small calibration
set without domain-specific augmentation (measured on the default model at 0.5 FLOPs from
461 images: 91.4% test accuracy with mixing, 90.2% without). With 4096 images it still pays,
though less: bench models at 0.5 FLOPs, 2 + 6 epochs, seeds 0-2, ResNet-20 91.39% with mixing
against 91.18% without, VGG 90.48% against 90.45%; a run without mixing takes 57% of the time.

Search (``epochs`` passes over the training split), with the weights training all along:
1. *Prior*: a few batches (no weight update) of a random projection ``sum_o <r_o, s_o>``
   (``r`` ~ N(0, 1), seeded): its squared gradient w.r.t. each gate is the output's
   sensitivity to that gate, which the distillation loss (0 at the start) cannot give.
2. *Importance* of gate i: an EMA of ``grad_i^2 / mean_j grad_j^2`` of the loss w.r.t. the gate
   value (the gates are leaf tensors of the forward pass, so this is free with ``backward``);
   a Fisher-style (second-order) estimate of the loss increase when the gate goes. (Its square
   root, the first-order estimate, favoured big units such as rings and measured 1.6 points
   worse on the default model.) The textbook Fisher sums *per-sample* squared gradients; that
   was tried for the channel gates (a per-sample gate matrix in the hooks; rings, which act on
   shared weights, as ``batch * grad^2``) on the bench models at 0.5 FLOPs, 2 + 6 epochs: it
   changed the selection (VGG then keeps both 28x28 convs whole and cuts the 14x14 / 7x7 ones)
   but not the accuracy beyond the seed noise: over five seeds VGG 90.66% against 90.55%,
   ResNet-20 91.32% against 91.32%. So the batch gradient, which costs nothing extra, stays.
3. *Cost* of gate i: ``d ratio / d g_i`` of the differentiable budget (:mod:`.budget`) at all
   gates kept: the FLOPs fraction dropping it saves (an inner ring includes the rings outside it),
   channel gates' scaled by ``channel_cost``. With a latency target, the predicted-latency
   saving instead (:meth:`.latency_budget.LatencyBudget.costs`), and the latency target ramps
   down with the FLOPs one.
   Dividing by ``cost ** 0.5`` instead was tried (2026-11-23) against the bias towards
   cutting expensive high-resolution layers (on the bench VGG at 0.5, ``importance / cost``
   halves both 28x28 convs to 8 channels). With 4096 images, 1 + 3 epochs, power 0.5 against
   1: ResNet-20 at 0.5 over seeds 0/1/2 91.33/91.21/91.21 vs 91.45/91.31/91.03 (equal means);
   VGG at 0.5 90.39/90.45 vs 89.89/90.56 (seeds 0/1); MobileNetV2 at 0.5 90.38 vs 90.42 (seed
   1), at 0.3 88.66 vs 87.28 (seed 0, one run). No clear gain, and a power below 1 depends on
   a unit's granularity: a ring (one gate of large cost) scores higher than the channels of
   the same layer at equal importance per FLOP, so smof stopped cutting kernels (its choices
   equalled channel-only on all three models at 0.5). So the score stays ``importance / cost``.
4. Every few steps the gates are re-selected greedily by ``importance / cost``
   (:func:`.select.select` without the cut check) for a target that decreases linearly from
   1 to the final target over the first ``ramp`` (40%) of the steps, so the weights adapt while
   channels and rings go, and a dropped gate can come back when its importance grows. (On the
   bench ResNet-20 at 0.5 FLOPs from 4096 images, ramp 0.4 against 0.7: 91.06% / 90.92% with
   2 + 2 epochs, 91.37% / 91.13% with 1 + 3; the rest of the search trains at the final budget.)
Then the final selection (with the real cut counted) and a fine-tune with masks fixed
(``finetune_epochs``, cosine learning rate). Everything is seeded: same seed, same bytes.

Batch normalisation (``batchnorm``, on by default): the canonical graph has its BN folded into
the convs, so search and fine-tune run with a train-mode BN re-inserted after every conv
(:mod:`.batchnorm`), recalibrated with the final gates and folded back before export. Measured
on the default model at 0.5 FLOPs from 4096 images: 92.10% test accuracy (drop 0.31 points)
against 91.64% (0.77) on the folded weights, same schedule.

:func:`finetune_fixed` is the same fine-tune for any zeroed ONNX model (no gates: the zeros
are the mask), for methods that decide the zeros themselves (``qr``, ``l2``), with the same
stage-output loss where the teacher computes the student's stage outputs (``feature_distill``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from typing import Any

import numpy as np
import onnx
import torch
from torch.nn import functional as F

from smof_onnx.passes.graph import node_attributes

from ..batching import Batching, free_batch
from ..data import CalibrationData
from ..errors import DataError, UnsupportedModelError
from ..methods import FEATURE_DISTILL
from .masking import Masks
from .select import Problem, fit_budget

__all__ = ["TrainSettings", "torch_threads", "attach_batchnorm", "fold_batchnorm", "output_kinds",
           "teacher_outputs", "search", "finetune", "evaluate", "gate_costs", "finetune_fixed",
           "feature_taps", "attach_feature_taps", "feature_loss"]

BN_SAMPLES = 4096  # calibration samples whose statistics set (and recalibrate) the train-mode BN
FEATURE_WEIGHT = FEATURE_DISTILL  # default weight of the stage-output distillation (module docstring)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    search_epochs: int
    finetune_epochs: int
    lr: float
    batch_size: int
    seed: int
    progress: bool = True
    prior_batches: int = 8
    reselect_every: int = 4
    ema: float = 0.9
    ramp: float = 0.4
    mix: bool = True
    channel_cost: float = 1.0
    temperature: float = 1.0
    batchnorm: bool = True
    feature_weight: float = 0.0
    whole_batches: bool = False


def batched(settings: TrainSettings, batching: Batching) -> TrainSettings:
    """``settings`` for a model whose batch :func:`smof_onnx.batching.free_batch` could not
    free: its own batch size, every batch whole, no mixing (a mixed batch is twice as long)."""
    if batching.free:
        return settings
    return dataclasses.replace(settings, batch_size=batching.fixed, mix=False, whole_batches=True)


def attach_batchnorm(module, data: CalibrationData, settings: TrainSettings):
    """Train-mode BN after every folded conv of ``module`` (:mod:`.batchnorm`), its statistics
    from (at most :data:`BN_SAMPLES` of) ``data``; None when ``settings.batchnorm`` is off.

    Measured on the default model at 0.5 FLOPs from 4096 images: see the README's smof table."""
    if not settings.batchnorm:
        return None
    from .batchnorm import TrainBatchNorm

    return TrainBatchNorm(module, _plain_batches(module, data, settings.batch_size))


def fold_batchnorm(bn, module, data: CalibrationData, settings: TrainSettings) -> None:
    """Recalibrate the running statistics on ``data`` with the final weights and fold them."""
    if bn is None:
        return
    bn.recalibrate(_plain_batches(module, data, settings.batch_size))
    bn.fold()
    module.eval()


@contextlib.contextmanager
def torch_threads(n: int | None):
    """PyTorch's intra-op thread count set to ``n`` inside the block (None: unchanged)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _chunks(module, n: int, batch: int):
    """Index arrays covering ``range(n)`` in order, ``batch`` at a time; for a module whose model
    takes only its own batch (``model_batch``), that many each, the last one padded by repeating
    its last sample (callers drop what they do not need)."""
    fixed = getattr(module, "model_batch", None)
    batch = fixed or batch
    for i in range(0, n, batch):
        idx = np.arange(i, min(i + batch, n))
        if fixed and len(idx) < fixed:
            idx = np.concatenate([idx, np.full(fixed - len(idx), idx[-1])])
        yield idx


def _plain_batches(module, data: CalibrationData, batch: int):
    """Unmixed batches of the first BN_SAMPLES samples, made one at a time (inputs can be large)."""
    for idx in _chunks(module, min(len(data), BN_SAMPLES), batch):
        yield _feeds(data, module.input_names, idx)


def output_kinds(outputs: tuple[torch.Tensor, ...]) -> list[str]:
    return ["logits" if o.ndim == 2 and o.shape[1] > 1 else "dense" for o in outputs]


def _feeds(data: CalibrationData, names: list[str], idx: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(data.inputs[n][idx])) for n in names]


@torch.no_grad()
def teacher_outputs(module, data: CalibrationData, batch: int) -> list[torch.Tensor]:
    """The original model's outputs on every sample (the module must carry no gates)."""
    outs: list[list[torch.Tensor]] = []
    for idx in _chunks(module, len(data), batch):
        res = module(*_feeds(data, module.input_names, idx))
        outs.append([r.detach().float() for r in res])
    return [torch.cat(col)[:len(data)] for col in zip(*outs)]


HALF_TYPES = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}


def check_trainable(model: onnx.ModelProto) -> None:
    """Training runs Adam on the model's own weights: in float16 its epsilon rounds to 0 and the
    weights turn NaN (measured on a tiny fp16 CNN), so half-precision weights are refused up front."""
    half = sorted({HALF_TYPES[i.data_type] for i in model.graph.initializer if i.data_type in HALF_TYPES})
    if half:
        raise UnsupportedModelError(
            f"the model keeps weights in {' and '.join(half)}; training (--method smof, and fine-tuning with "
            "--data) needs float32 weights: convert the model to float32, compress it, then convert the result "
            "back, or use --method l2 without --data (data-free, works on half-precision models)")


def check_labels(labels: np.ndarray | None, teacher: list[torch.Tensor]) -> None:
    """Labels index the classifier output's logits: raise :class:`DataError` before any training
    when one is out of range (cross-entropy would fail deep inside the first step)."""
    kinds = output_kinds(tuple(t[:1] for t in teacher))
    if labels is None or len(labels) == 0 or "logits" not in kinds:
        return
    classes = int(teacher[kinds.index("logits")].shape[1])
    if int(labels.max()) >= classes:
        raise DataError(f"labels go up to {int(labels.max())}, but the model's classifier output has {classes} "
                        f"classes (labels must be 0..{classes - 1}); give labels that index the model's output, "
                        "or leave them out (distillation needs none)")


def distill_loss(student, teacher, kinds: list[str], temperature: float = 1.0) -> torch.Tensor:
    """KL at ``temperature`` (times T^2, so gradients keep their scale) for logits, normalised
    MSE for other outputs."""
    loss = student[0].new_zeros(())
    T = float(temperature)
    for s, t, kind in zip(student, teacher, kinds):
        s = s.float()
        if kind == "logits":
            loss = loss + T * T * F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean",
                                           log_target=True)
        else:
            loss = loss + ((s - t) ** 2).mean() / ((t ** 2).mean() + 1e-8)
    return loss


def task_loss(student, teacher, kinds, labels: torch.Tensor | None, temperature: float = 1.0) -> torch.Tensor:
    """Distillation on every sample; cross-entropy on the first ``len(labels)`` (the clean ones)."""
    loss = distill_loss(student, teacher, kinds, temperature)
    if labels is not None and "logits" in kinds:
        loss = loss + F.cross_entropy(student[kinds.index("logits")][:len(labels)].float(), labels)
    return loss


def _batch_loss(module, data, batch, teacher, teacher_module, gen, kinds, settings):
    """The training loss of one batch: distillation (+ cross-entropy with labels) on mixed inputs,
    plus ``feature_weight`` times :func:`feature_loss` when the modules tap features."""
    feeds, target_out, labels, target_taps = make_batch(module, data, batch, teacher, teacher_module, gen,
                                                        settings.mix)
    loss = task_loss(module(*feeds), target_out, kinds, labels, settings.temperature)
    if target_taps:
        loss = loss + settings.feature_weight * feature_loss(module.tapped, target_taps)
    return loss


def make_batch(module, data: CalibrationData, idx: np.ndarray, teacher: list[torch.Tensor], teacher_module,
               gen: torch.Generator, mix: bool):
    """(feeds, teacher outputs, labels, teacher taps) of one step. With ``mix``, the batch is
    extended by as many convex mixes of its own samples (per-sample weight ~ U(0, 1)), whose
    targets the teacher computes: distillation needs no labels, so interpolated inputs multiply a
    small calibration set without assuming anything about the domain (no flips or crops).
    Teacher taps: the values of ``teacher_module.taps`` on the whole (extended) batch, ``{}``
    when it taps nothing (:func:`attach_feature_taps`)."""
    feeds = _feeds(data, module.input_names, idx)
    target = [t[idx] for t in teacher]
    labels = _labels(data, idx)
    tapped: dict[str, torch.Tensor] = {}
    if teacher_module is not None and teacher_module.taps:
        with torch.no_grad():
            teacher_module(*feeds)
        tapped = dict(teacher_module.tapped)
    if not mix or teacher_module is None or len(idx) < 2 or not all(f.is_floating_point() for f in feeds):
        return feeds, target, labels, tapped
    n = len(idx)
    perm = torch.randperm(n, generator=gen)
    lam = torch.rand(n, generator=gen)
    mixed = [f * lam.view(-1, *[1] * (f.ndim - 1)) + f[perm] * (1 - lam.view(-1, *[1] * (f.ndim - 1)))
             for f in feeds]
    with torch.no_grad():
        mixed_t = [t.detach().float() for t in teacher_module(*mixed)]
    tapped = {k: torch.cat([v, teacher_module.tapped[k]]) for k, v in tapped.items()}
    return ([torch.cat([f, m]) for f, m in zip(feeds, mixed)], [torch.cat([t, m]) for t, m in zip(target, mixed_t)],
            labels, tapped)


DOWNSAMPLING = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Elu", "Selu", "Gelu",
                         "Mish", "Tanh", "PRelu"})


def feature_taps(model: onnx.ModelProto) -> list[str]:
    """The tensors feature distillation compares: the *stage outputs*, what the block that
    lowers the resolution reads. That is the data input of every node that lowers it (a Conv
    with a stride above 1, a pooling), or, where that input is the activation of a pointwise
    (1x1, stride 1, ungrouped) Conv, the input of that Conv: an inverted residual expands the
    stage output before its strided depthwise conv, and the expanded channels are the block's
    inner channels. Only tensors that a node makes (not graph inputs). Matching stage outputs
    leaves each stage free in how it gets there (inner channels may go), unlike matching
    every layer."""
    producer = {o: node for node in model.graph.node for o in node.output if o}
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    taps: list[str] = []
    for node in model.graph.node:
        strides = node_attributes(node).get("strides", [])
        lowers = node.op_type in DOWNSAMPLING or (node.op_type == "Conv" and any(s > 1 for s in strides))
        if not lowers or not node.input:
            continue
        tap = _block_input(node.input[0], producer, weights)
        if tap in producer and tap not in taps:
            taps.append(tap)
    return taps


def _block_input(x: str, producer: dict, weights: dict) -> str:
    act = producer.get(x)
    conv = producer.get(act.input[0]) if act is not None and act.op_type in ACTIVATIONS else None
    if conv is None or conv.op_type != "Conv" or len(conv.input) < 2 or conv.input[1] not in weights:
        return x
    attrs = node_attributes(conv)
    pointwise = (all(k == 1 for k in weights[conv.input[1]][2:]) and all(s == 1 for s in attrs.get("strides", []))
                 and attrs.get("group", 1) == 1)
    return conv.input[0] if pointwise else x


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
    terms = [((student[k].float() - t.float()) ** 2).mean() / (t.float().pow(2).mean() + 1e-8)
             for k, t in teacher.items()]
    return torch.stack(terms).mean()


def gate_costs(problem: Problem, channel_cost: float = 1.0) -> np.ndarray:
    """``d ratio / d g`` at every gate kept (the differentiable budget's gradient), channel gates'
    scaled by ``channel_cost``: the share of a FLOPs saving that ONNX Runtime turns into speed
    for a channel cut relative to a kernel cut (below 1, rings go first at equal importance)."""
    g = torch.ones(problem.space.size, dtype=torch.float64, requires_grad=True)
    ratio = problem.budget.ratio(g)
    if not isinstance(ratio, torch.Tensor) or not ratio.requires_grad:
        return np.zeros(problem.space.size)
    (grad,) = torch.autograd.grad(ratio, g)
    out = grad.numpy().copy()
    out[len(problem.space.kernel):] *= channel_cost
    return out


class _Bar:
    """tqdm when asked for (stderr), else nothing."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        if enabled and total > 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=True, dynamic_ncols=True)

    def update(self, **post) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in post.items()},
                                 refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _epochs(data: CalibrationData, settings: TrainSettings):
    """Shuffled index batches, epoch after epoch; with ``whole_batches`` (a model that takes only
    its own batch size) the last batch of an epoch is filled from the start of the same order."""
    n, bs = len(data), settings.batch_size
    for epoch in range(10**9):
        order = np.random.default_rng([settings.seed, epoch]).permutation(n)
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            if settings.whole_batches and len(idx) < bs:
                idx = np.concatenate([idx, np.resize(order, bs - len(idx))])
            yield idx


def _labels(data: CalibrationData, idx: np.ndarray) -> torch.Tensor | None:
    return None if data.labels is None else torch.from_numpy(data.labels[idx])


def search(problem: Problem, module, data: CalibrationData, teacher: list[torch.Tensor], target: float,
           settings: TrainSettings, teacher_module=None, *, latency=None, latency_target: float | None = None
           ) -> np.ndarray:
    """Train the gated module under a decreasing budget; returns the per-gate scores.

    With ``latency`` (a :class:`.latency_budget.LatencyBudget`) and ``latency_target``, the
    predicted latency ramps down too and the gate costs are its savings, not FLOPs."""
    space = problem.space
    masks = Masks(space, module)
    steps_per_epoch = math.ceil(len(data) / settings.batch_size)
    steps = settings.search_epochs * steps_per_epoch
    use_latency = latency is not None and latency_target is not None
    cost = latency.costs(space) if use_latency else gate_costs(problem, settings.channel_cost)
    cost = np.maximum(cost, 1e-9)
    module.train()  # only train-mode normalisers (:mod:`.batchnorm`) care
    opt = torch.optim.Adam(list(module.parameters()), lr=settings.lr)
    kinds = output_kinds(tuple(t[:1] for t in teacher))
    batches = _epochs(data, settings)

    imp = np.zeros(space.size)
    gen = torch.Generator().manual_seed(settings.seed)
    n_prior = min(settings.prior_batches, steps_per_epoch)
    masks.set(np.ones(space.size), requires_grad=True)
    for _ in range(n_prior):
        idx = next(batches)
        outs = module(*_feeds(data, module.input_names, idx))
        proj = sum((torch.randn(o.shape, generator=gen) * o.float()).sum() / (t.float().pow(2).mean().sqrt() + 1e-8)
                   for o, t in zip(outs, teacher))
        proj.backward()
        imp += _normalised(masks.grad) / n_prior
        module.zero_grad(set_to_none=True)
    h = np.ones(space.size)
    bar = _Bar(steps, "smof search", settings.progress)
    ratio = 1.0
    for step in range(steps):
        if step % settings.reselect_every == 0:
            frac = min(1.0, (step + 1) / max(1, settings.ramp * steps))
            tau = 1 - (1 - target) * frac
            extra = [(latency, 1 - (1 - latency_target) * frac)] if use_latency else []
            score = imp / cost
            h = fit_budget(problem, np.ones(space.size), score, tau, extra)
            ratio = float(problem.budget.ratio(space.effective(h)))
        masks.set(h, requires_grad=True)
        loss = _batch_loss(module, data, next(batches), teacher, teacher_module, gen, kinds, settings)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        imp = settings.ema * imp + (1 - settings.ema) * _normalised(masks.grad)
        bar.update(loss=loss.item(), flops=ratio)
    bar.close()
    masks.remove()
    return imp / cost


def _normalised(grad: np.ndarray | None) -> np.ndarray:
    if grad is None:
        return 0.0
    sq = grad ** 2
    mean = sq.mean()
    return sq / mean if mean > 0 else sq


def finetune(problem: Problem, module, data: CalibrationData, teacher: list[torch.Tensor], h: np.ndarray,
             settings: TrainSettings, teacher_module=None, bn=None) -> None:
    """Train the weights with the binary gates ``h`` fixed (distillation + CE), cosine lr; then
    fold ``bn`` (:func:`attach_batchnorm`), recalibrated with the gates still in place (the
    statistics must be those of the pruned network)."""
    masks = Masks(problem.space, module, h)
    ratio = float(problem.budget.ratio(problem.space.effective(h)))
    _fit(module, data, teacher, settings, teacher_module, "smof fine-tune", {"flops": ratio})
    fold_batchnorm(bn, module, data, settings)
    masks.remove()


def _fit(module, data: CalibrationData, teacher: list[torch.Tensor], settings: TrainSettings, teacher_module,
         desc: str, post: dict, after_step=None) -> None:
    """``finetune_epochs`` passes of Adam with a cosine learning rate on the task loss."""
    steps = settings.finetune_epochs * math.ceil(len(data) / settings.batch_size)
    if steps == 0:
        return
    module.train()  # only train-mode normalisers (:mod:`.batchnorm`) care
    opt = torch.optim.Adam(list(module.parameters()), lr=settings.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    kinds = output_kinds(tuple(t[:1] for t in teacher))
    batches = _epochs(data, dataclasses.replace(settings, seed=settings.seed + 1))
    bar = _Bar(steps, desc, settings.progress)
    gen = torch.Generator().manual_seed(settings.seed + 1)
    for _ in range(steps):
        loss = _batch_loss(module, data, next(batches), teacher, teacher_module, gen, kinds, settings)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if after_step is not None:
            after_step("grad")
        opt.step()
        sched.step()
        if after_step is not None:
            after_step("step")
        bar.update(loss=loss.item(), **post)
    bar.close()


def finetune_fixed(model: onnx.ModelProto, data, epochs: int, *, lr: float | None = None, batch_size: int = 64,
                   seed: int = 0, progress_bars: bool = True, teacher: onnx.ModelProto | None = None,
                   input_shapes=None, threads: int | None = None, feature_distill: float = 0.0) -> onnx.ModelProto:
    """Fine-tune every weighted parameter of ``model`` (Conv / ConvTranspose / Gemm / MatMul / BN
    affine / PRelu, see :class:`OnnxModule`) keeping every weight that is exactly 0 at 0.

    For methods that zero weights themselves (``qr``, ``l2``): the zero pattern is the mask, so
    the cut removes the same things afterwards. Like smof's fine-tune, it trains with a
    train-mode BN after every conv that has a bias (:func:`attach_batchnorm`), folded back at the
    end: zeros inside a filter stay 0 (the fold scales whole filters), a dead channel (filter
    and bias 0) keeps its BN shift at 0 and so stays dead, and the bias of a live channel may
    move off 0. Loss: distillation from ``teacher``'s outputs
    (default: ``model`` itself, as it is before training) with the batch mixing of
    :func:`make_batch`, plus cross-entropy when ``data`` has labels, plus ``feature_distill``
    times the stage-output loss (:func:`feature_taps` of ``model`` that ``teacher`` computes
    too, :func:`feature_loss`; 0: off); Adam, cosine lr (default
    1e-3), ``epochs`` passes, ``threads`` PyTorch threads (:func:`torch_threads`). Zeros are
    kept by masking the gradients (Adam then never moves them: its moments stay 0) and
    re-zeroing after each step. ``data``: anything
    :func:`smof_onnx.data.as_calibration` takes. Seeded: same seed, same bytes.
    """
    from ..data import as_calibration
    from .executor import OnnxModule

    calib = as_calibration(data, model, input_shapes)
    if calib is not None and epochs > 0:
        check_trainable(model)
    if calib is None or epochs <= 0:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    settings = TrainSettings(search_epochs=0, finetune_epochs=int(epochs), lr=lr or 1e-3, batch_size=batch_size,
                             seed=seed, progress=progress_bars, feature_weight=float(feature_distill))
    teacher = model if teacher is None else teacher
    freed = [free_batch(m, calib.inputs) for m in ((model,) if teacher is model else (model, teacher))]
    batching = next((b for b in freed if not b.free), freed[0])  # both train freed, or both as given
    settings = batched(settings, batching)
    run_student, run_teacher = (freed[0].model, freed[-1].model) if batching.free else (model, teacher)
    with torch.random.fork_rng(devices=[]), torch_threads(threads):
        torch.manual_seed(seed)
        teacher_module = OnnxModule(run_teacher).eval()
        targets = teacher_outputs(teacher_module, calib, settings.batch_size)
        check_labels(calib.labels, targets)
        student = OnnxModule(run_student).eval()
        attach_feature_taps(student, teacher_module, model, settings)
        params = [p for _, p in student.named_onnx_parameters()]
        keep = [(p, (p.detach() != 0).to(p.dtype)) for p in params if p.is_floating_point()]
        bn = attach_batchnorm(student, calib, settings)
        if bn is not None:
            keep += bn.dead_channel_masks()

        def mask(when: str) -> None:
            with torch.no_grad():
                for p, m in keep:
                    if when == "grad" and p.grad is not None:
                        p.grad.mul_(m)
                    elif when == "step":
                        p.mul_(m)

        _fit(student, calib, targets, settings, teacher_module, "fine-tune (zeros fixed)", {}, mask)
        fold_batchnorm(bn, student, calib, settings)
        return student.state_to_onnx(model)  # the trained weights in the user's graph, batch as it was


@torch.no_grad()
def predict(module, data: CalibrationData, batch: int) -> list[torch.Tensor]:
    return teacher_outputs(module, data, batch)


def evaluate(before: list[torch.Tensor], after: list[torch.Tensor], labels: np.ndarray | None,
             split: str) -> dict[str, Any]:
    """Accuracy (labels) or agreement with the original.

    Classifier outputs (``[N, C]``, C > 1): top-1 agreement, and accuracy before / after with
    labels. Every output: ``relative_error``, the largest absolute difference over the largest
    absolute original value (worst case), and ``relative_rms_error``, ``||after - before|| /
    ||before||`` over the whole split (the headline for dense outputs: a max-based error of a
    sigmoid map is about 1 as soon as one pixel flips, whatever the rest does). Dense outputs
    whose original values all lie in [0, 1] (probability maps) also get ``mask_iou``: the
    intersection over union of the maps thresholded at ``MASK_THRESHOLD``. With several outputs
    each number is the worst over them."""
    kinds = output_kinds(tuple(b[:1] for b in before))
    n = int(before[0].shape[0])
    out: dict[str, Any] = {"split": split, "samples": n}
    if "logits" in kinds:
        k = kinds.index("logits")
        pb, pa = before[k].argmax(1).numpy(), after[k].argmax(1).numpy()
        out["top1_agreement"] = float((pb == pa).mean())
        if labels is not None:
            out["metric"] = "accuracy"
            out["accuracy_before"] = float((pb == labels).mean())
            out["accuracy_after"] = float((pa == labels).mean())
        else:
            out["metric"] = "top1_agreement"
    else:
        out["metric"] = "relative_rms_error"
    pairs = [(a.double(), b.double()) for a, b in zip(after, before)]
    out["relative_error"] = max(float((a - b).abs().max() / (b.abs().max() + 1e-12)) for a, b in pairs)
    out["relative_rms_error"] = max(float((a - b).norm() / (b.norm() + 1e-12)) for a, b in pairs)
    ious = [_mask_iou(a, b) for (a, b), kind in zip(pairs, kinds) if kind == "dense" and _is_probability(b)]
    if ious:
        out["mask_iou"], out["mask_threshold"] = min(ious), MASK_THRESHOLD
    return out


MASK_THRESHOLD = 0.5


def _is_probability(t: torch.Tensor) -> bool:
    return t.numel() > 0 and float(t.min()) >= 0.0 and float(t.max()) <= 1.0


def _mask_iou(after: torch.Tensor, before: torch.Tensor) -> float:
    a, b = after > MASK_THRESHOLD, before > MASK_THRESHOLD
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def make_settings(config, n_samples: int, default_lr: float = 1e-3, target_steps: int = 300,
                  finetune_steps: int = 600) -> TrainSettings:
    """Epoch defaults: enough passes for about ``target_steps`` optimiser steps of search and
    ``finetune_steps`` of fine-tune (measured on the default model at 0.5 FLOPs from 4096
    images: 640 fine-tune steps 91.78%, 320 steps 91.70%)."""
    per_epoch = max(1, math.ceil(n_samples / config.batch_size))
    auto = max(1, math.ceil(target_steps / per_epoch))
    auto_ft = max(1, math.ceil(finetune_steps / per_epoch))
    return TrainSettings(search_epochs=auto if config.epochs is None else config.epochs,
                         finetune_epochs=auto_ft if config.finetune_epochs is None else config.finetune_epochs,
                         lr=config.lr or default_lr, batch_size=config.batch_size, seed=config.seed,
                         progress=config.progress_bars,
                         feature_weight=FEATURE_WEIGHT if config.feature_distill is None else config.feature_distill)
