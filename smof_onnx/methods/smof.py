"""``--method smof``: learned kernel-size + channel pruning (SMOF, design 4).

1. :func:`smof_onnx.selection.select.prepare`: canonical form, channel analysis, gates, budget.
2. The calibration data is validated against the model (before any training) and split
   (``val_split`` held out, seeded); the batch is the largest of at most ``batch_size`` whose
   estimated peak memory fits ``max_memory`` (:mod:`smof_onnx.learn.memory`, checked while
   training too; the report's ``settings.memory``).
3. :func:`smof_onnx.learn.search.search` learns per-gate scores (importance / cost) while the
   weights train under a decreasing FLOPs budget, with distillation from the original model.
4. :func:`smof_onnx.selection.select.select`: binarize, trim / restore by score until the *cut*
   model's counted FLOPs meet the target.
5. :func:`smof_onnx.learn.finetune.finetune` with the masks fixed, then the zeroed canonical graph
   (:meth:`GateSpace.apply` on :meth:`OnnxModule.state_to_onnx`) is returned with the settings,
   the per-layer choices and the quality on the held-out split.
By default (not ``no_latency``) the per-layer ONNX Runtime table of the canonical model is
measured at ``bench_batch`` (cached; :func:`smof_onnx.methods.latency.scoring_latency`) and the
gate costs of search and selection are predicted-time savings (FLOPs where no table can be
measured; ``method.latency.source`` says which); channel counts the table predicts run slower
than a larger count are left out (:func:`.latency.use_runtime_counts`,
``method.latency.skipped_counts``); the per-layer choices carry the predicted
milliseconds before and after. With ``target_latency`` the selection also meets the predicted latency, corrected by
timing the cut model (:func:`.latency.correct_by_measurement`, which confirms the chosen
selection by a second timing); the settings report the predicted and the measured ratio of the
cut model (timed again after the fine-tune, independent of the timings that chose it) and each
timed selection round.
The learning stage runs on ``device`` (``--device``, :mod:`smof_onnx.learn.device`, with
``--amp``), reads the data a batch at a time (:mod:`smof_onnx.learn.batches`) and, under
``torchrun``, data-parallel (:mod:`smof_onnx.learn.distributed`: every rank selects the same
gates; the settings' ``distributed`` says how many processes trained).
Needs torch and data; ``--method l2`` is the data-free, torch-free baseline.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import onnx

from ..batching import free_batch
from ..data import as_calibration
from ..errors import DataError, UnsupportedModelError, UsageError
from . import CompressConfig, MethodResult
from .latency import correct_by_measurement, latency_report, scoring_latency, use_runtime_counts


def run(model: onnx.ModelProto, data, config: CompressConfig, teacher: onnx.ModelProto | None = None) -> MethodResult:
    """``teacher``: the model distilled from and measured against (default ``model``; ``3d`` gives
    the original when ``model`` is its depth- and resolution-reduced variant)."""
    if data is None:
        raise DataError("--method smof learns from data: give --data (a .npz, .npy or image folder), "
                        "or use --method l2 (data-free)")
    calib = as_calibration(data, model, config.input_shapes)  # validated before anything trains
    try:
        import torch
    except ImportError:
        raise UsageError("--method smof needs PyTorch (pip install 'smof-onnx[torch]'); "
                         "--method l2 runs without it") from None
    from ..learn import batches, losses, quality, search, settings as train_settings
    from ..learn.executor import OnnxModule
    from ..learn.finetune import attach_batchnorm, check_trainable, finetune, memory_plan
    from ..selection.select import prepare, select

    check_trainable(model)
    from ..learn import distributed
    from ..learn.device import resolve

    runtime = resolve(config.device, config.amp)  # a bad --device / --amp: exit 2 before any work
    distributed.setup(runtime.device)  # under torchrun: join the group (gloo on CPU, nccl on CUDA)

    start = time.perf_counter()
    problem = prepare(model, config.input_shapes, kernel=config.kernel, channel=config.channel,
                      multiple=config.channel_multiple)
    if problem.space.size == 0:
        raise UsageError("nothing to learn: the model has no gateable kernel border or channel "
                         "(see `smof-onnx inspect` for what is frozen and why)")
    latency, latency_source = scoring_latency(problem, config)
    # one timing for every rank (timings differ between processes): rank 0's
    latency, latency_source = distributed.broadcast_object((latency, latency_source))
    families = list(problem.space.families)
    skipped_counts = [] if latency is None else use_runtime_counts(problem, latency)
    extra = [] if config.target_latency is None else [(latency, config.target_latency)]
    # reachable? (else a clear error before any training)
    try:
        select(problem, np.zeros(problem.space.size), config.target_flops, check=False, extra=extra)
    except UnsupportedModelError:
        if not skipped_counts:
            raise
        problem.space.families[:] = families  # the slow counts are needed to reach the target: keep them
        skipped_counts = [{"restored": "the target needs the counts the table predicts slower"}]
        select(problem, np.zeros(problem.space.size), config.target_flops, check=False, extra=extra)
    calib = as_calibration(calib, problem.model, config.input_shapes)
    train_set, val_set = calib.split(config.val_split, config.seed)
    batching = free_batch(problem.model, train_set.inputs)  # most exports fix the batch at 1
    settings = train_settings.batched(train_settings.make_settings(
        dataclasses.replace(config, batch_size=batching.batch_size(config.batch_size)), len(train_set)), batching)
    settings = dataclasses.replace(settings, runtime=runtime)
    planned, plan, guard = memory_plan(batching.model, train_set, settings, config.max_memory)
    if planned.batch_size != settings.batch_size and config.epochs is None and config.finetune_epochs is None:
        # the automatic schedule counts optimiser steps: a smaller batch keeps the steps, not the passes
        planned = dataclasses.replace(train_settings.make_settings(
            dataclasses.replace(config, batch_size=planned.batch_size), len(train_set)), mix=planned.mix,
            whole_batches=planned.whole_batches)
    settings = dataclasses.replace(planned, runtime=runtime)

    with torch.random.fork_rng(devices=[]), train_settings.torch_threads(config.threads):
        torch.manual_seed(config.seed)
        teacher_graph = batching.model if teacher is None else free_batch(teacher, train_set.inputs).model
        teacher_module = OnnxModule(teacher_graph).eval().to(runtime.device)
        # the teacher's outputs on the first samples (kinds, scale, ring calibration); the targets are per batch
        teacher = batches.teacher_probe(teacher_module, train_set, settings.batch_size)
        losses.check_labels(calib.labels, teacher)
        student = OnnxModule(batching.model).eval().to(runtime.device)
        taps = losses.attach_feature_taps(student, teacher_module, problem.model, settings)
        bn = attach_batchnorm(student, train_set, settings)
        scores = search.search(problem, student, train_set, teacher, config.target_flops, settings, teacher_module,
                               latency=latency, latency_target=config.target_latency, guard=guard)
        h, ratios = select(problem, scores, config.target_flops, extra=extra)
        corrections = None
        if config.target_latency is not None:
            correction = correct_by_measurement(problem, latency, scores, h, ratios, config, select)
            h, ratios, corrections = correction.h, correction.ratios, correction.rounds
        h, ratios = distributed.broadcast_object((h, ratios))  # equal by construction; a timed correction is rank 0's
        finetune(problem, student, train_set, teacher, h, settings, teacher_module, bn, guard)
        teacher_module.set_taps(())
        world = distributed.current()
        distributed.finish()  # every rank at a barrier; only rank 0 goes on (api.compress)
        trained = student.state_to_onnx(problem.model)
        zeroed = problem.space.apply(trained, h)
        report_quality = None
        if val_set is not None and not distributed.is_worker():
            final = OnnxModule(zeroed).eval().to(runtime.device)
            before = batches.predict(teacher_module, val_set, settings.batch_size)
            after = batches.predict(final, val_set, settings.batch_size)
            report_quality = quality.evaluate(before, after, val_set.labels, "val",
                                              [o.name for o in problem.model.graph.output])

    settings_out = {**config.settings(), "search_epochs": settings.search_epochs,
                    "finetune_epochs": settings.finetune_epochs, "lr": settings.lr,
                    "train_samples": len(train_set), "val_samples": 0 if val_set is None else len(val_set),
                    "gates": {"kernel": len(problem.space.kernel), "channel": len(problem.space.channel)},
                    "flops_ratio_estimated": ratios["estimated"], "flops_ratio_cut": ratios["cut"],
                    "channel_cost": settings.channel_cost, "feature_distill": settings.feature_weight,
                    "feature_taps": taps}
    settings_out["memory"] = {**plan.report(), **guard.report()}
    settings_out["runtime"] = runtime.report()
    settings_out["distributed"] = world.report()
    if batching.report() is not None:
        settings_out["batching"] = batching.report()
    choices = problem.space.choices(problem.model, h)
    if latency is not None:
        settings_out["latency"] = latency_report(problem, latency, zeroed, h, config, latency_source)
        settings_out["latency"]["skipped_counts"] = skipped_counts
        if config.target_latency is not None:
            settings_out["latency"]["selection_rounds"] = corrections
        before, after = latency.layer_ms(np.ones(problem.space.size)), latency.layer_ms(problem.space.effective(h))
        for row in choices:
            if row["name"] in after:
                row["predicted_ms_before"] = round(before[row["name"]], 4)
                row["predicted_ms_after"] = round(after[row["name"]], 4)
    else:
        settings_out["latency"] = {"source": latency_source}
    settings_out["seconds"] = round(time.perf_counter() - start, 2)
    return MethodResult(zeroed, settings_out, choices, report_quality)
