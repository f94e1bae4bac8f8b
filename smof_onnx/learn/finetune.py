"""Fine-tune with the zeros fixed: smof's gates after the search, or any zeroed model (qr, l2).

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

import dataclasses
import math

import numpy as np
import onnx
import torch

from ..batching import free_batch
from ..data import CalibrationData
from ..errors import UnsupportedModelError, UsageError
from ..selection.select import Problem
from . import distributed
from .batches import plain_batches, steps_per_epoch, teacher_probe, train_batches
from .losses import attach_feature_taps, backward_batch, check_labels, output_kinds
from . import memory
from .masking import Masks
from .memory import MemoryGuard, MemoryPlan
from .settings import Progress, TrainSettings, batched, torch_threads

__all__ = ["check_trainable", "attach_batchnorm", "fold_batchnorm", "finetune", "fit", "finetune_fixed", "memory_plan",
           "HALF_TYPES"]


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


def attach_batchnorm(module, data: CalibrationData, settings: TrainSettings):
    """Train-mode BN after every folded conv of ``module`` (:mod:`.batchnorm`), its statistics
    from (at most :data:`BN_SAMPLES` of) ``data``; None when ``settings.batchnorm`` is off.

    Measured on the default model at 0.5 FLOPs from 4096 images: see the README's smof table."""
    if not settings.batchnorm:
        return None
    from .batchnorm import TrainBatchNorm

    return TrainBatchNorm(module, plain_batches(module, data, settings.batch_size, shard=True))


def fold_batchnorm(bn, module, data: CalibrationData, settings: TrainSettings) -> None:
    """Recalibrate the running statistics on ``data`` with the final weights and fold them."""
    if bn is None:
        return
    bn.recalibrate(plain_batches(module, data, settings.batch_size, shard=True))
    bn.fold()
    module.eval()


def finetune(problem: Problem, module, data: CalibrationData, teacher: list[torch.Tensor], h: np.ndarray,
             settings: TrainSettings, teacher_module=None, bn=None, guard=None) -> None:
    """Train the weights with the binary gates ``h`` fixed (distillation + CE), cosine lr; then
    fold ``bn`` (:func:`attach_batchnorm`), recalibrated with the gates still in place (the
    statistics must be those of the pruned network). ``guard``: a
    :class:`smof_onnx.learn.memory.MemoryGuard` read after every step."""
    masks = Masks(problem.space, module, h)
    ratio = float(problem.budget.ratio(problem.space.effective(h)))
    fit(module, data, teacher, settings, teacher_module, "smof fine-tune", {"flops": ratio}, guard=guard)
    fold_batchnorm(bn, module, data, settings)
    masks.remove()


def fit(module, data: CalibrationData, teacher: list[torch.Tensor], settings: TrainSettings, teacher_module,
        desc: str, post: dict, after_step=None, guard=None) -> None:
    """``finetune_epochs`` passes of Adam with a cosine learning rate on the task loss."""
    steps = settings.finetune_epochs * steps_per_epoch(len(data), settings)
    if steps == 0:
        return
    module.train()  # only train-mode normalisers (:mod:`.batchnorm`) care
    opt = torch.optim.Adam(list(module.parameters()), lr=settings.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    kinds = output_kinds(tuple(t[:1] for t in teacher))
    batches = train_batches(module, data, dataclasses.replace(settings, seed=settings.seed + 1))
    runner, runtime = distributed.wrap(module), settings.runtime
    scaler = runtime.scaler() if runtime is not None else None
    bar = Progress(steps, desc, settings.progress)
    gen = torch.Generator().manual_seed(settings.seed + 1)
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        idx, feeds, labels = next(batches)
        loss = backward_batch(module, feeds, labels, teacher_module, gen, kinds, settings,
                              guard.split if guard else 1, runner, runtime, scaler, teacher, idx)
        if scaler is not None:
            scaler.unscale_(opt)
        if after_step is not None:
            after_step("grad")
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched.step()
        if after_step is not None:
            after_step("step")
        bar.update(loss=loss, **post)
        if guard is not None:
            guard.check(1 if settings.whole_batches else len(feeds[0]), step)
    bar.close()


def memory_plan(model: onnx.ModelProto, data: CalibrationData, settings: TrainSettings, max_memory=None
                ) -> tuple[TrainSettings, MemoryPlan, MemoryGuard]:
    """``settings`` with the batch the memory budget allows (:func:`smof_onnx.learn.memory.plan`
    on ``model``, the graph that trains, at ``data``'s sample size), the plan, and the guard
    that watches the budget while training."""
    sample = {name: arr.shape[1:] for name, arr in data.inputs.items()}
    world = distributed.current()
    if world.active and settings.whole_batches:
        raise UsageError("this model takes only its own fixed batch, so it trains in one process: run without "
                         "torchrun, or export the model with a free batch axis")
    if world.active and settings.batch_size % world.size:
        raise UsageError(f"--batch-size {settings.batch_size} is the global batch of {world.size} processes: give "
                         f"a multiple of {world.size}")
    plan = memory.plan(model, sample, settings.batch_size // world.size, max_memory=max_memory, mix=settings.mix,
                       fixed_batch=settings.whole_batches, device=getattr(settings.runtime, "device", None))
    batch = plan.batch_size * world.size  # the budget bounds each process's share of the global batch
    return dataclasses.replace(settings, batch_size=batch), plan, MemoryGuard(plan.budget, device=getattr(
        settings.runtime, "device", None))


def finetune_fixed(model: onnx.ModelProto, data, epochs: int, *, lr: float | None = None, batch_size: int = 64,
                   seed: int = 0, progress_bars: bool = True, teacher: onnx.ModelProto | None = None,
                   input_shapes=None, threads: int | None = None, feature_distill: float = 0.0,
                   max_memory=None, memory_report: dict | None = None, device: str | None = "cpu",
                   amp: bool = False) -> onnx.ModelProto:
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
    1e-3), ``epochs`` passes, ``threads`` PyTorch threads (:func:`torch_threads`), batches of at
    most ``batch_size`` as ``max_memory`` allows (:func:`memory_plan`; what it decided goes into
    ``memory_report`` when given), on ``device`` (:func:`smof_onnx.learn.device.resolve`, with
    ``amp``; data-parallel under torchrun: :mod:`.distributed`). Zeros are
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
    from .device import resolve

    runtime = resolve(device, amp)
    distributed.setup(runtime.device)
    settings = TrainSettings(search_epochs=0, finetune_epochs=int(epochs), lr=lr or 1e-3, batch_size=batch_size,
                             seed=seed, progress=progress_bars, feature_weight=float(feature_distill),
                             runtime=runtime)
    teacher = model if teacher is None else teacher
    freed = [free_batch(m, calib.inputs) for m in ((model,) if teacher is model else (model, teacher))]
    batching = next((b for b in freed if not b.free), freed[0])  # both train freed, or both as given
    settings = batched(settings, batching)
    run_student, run_teacher = (freed[0].model, freed[-1].model) if batching.free else (model, teacher)
    settings, plan, guard = memory_plan(run_student, calib, settings, max_memory)
    with torch.random.fork_rng(devices=[]), torch_threads(threads):
        torch.manual_seed(seed)
        teacher_module = OnnxModule(run_teacher).eval().to(runtime.device)
        targets = teacher_probe(teacher_module, calib, settings.batch_size)
        check_labels(calib.labels, targets)
        student = OnnxModule(run_student).eval().to(runtime.device)
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

        fit(student, calib, targets, settings, teacher_module, "fine-tune (zeros fixed)", {}, mask, guard)
        fold_batchnorm(bn, student, calib, settings)
        if memory_report is not None:
            memory_report.update(plan.report(), **guard.report())
        out = student.state_to_onnx(model)  # the trained weights in the user's graph, batch as it was
    distributed.finish()  # every rank at a barrier; rank 0 goes on to cut and write
    return out
