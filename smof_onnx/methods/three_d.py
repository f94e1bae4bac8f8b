"""``--method 3d``: depth, width and resolution planned together (arXiv 2010.04879; design 5b).

1. **Space** (:func:`smof_onnx.selection.plan_space.plan_space`): the residual blocks depth can
   remove, the resolutions the graph runs at, the counted cost of every (d, w, r). A dimension the
   model cannot use (no residual block; a head tied to the input size) is left out with its reason
   in ``settings.plan.space.unavailable`` and a warning; a target the cheapest plan cannot reach is
   a :class:`UsageError` before any training.
2. **Block order** (DBP's criterion, measured, not learned): each block is switched off alone
   (its branch zeroed) and the relative change of the outputs on up to :data:`RANK_SAMPLES`
   training samples is measured; depth removes the blocks that change the outputs least first.
   Measured rather than scored by the gate search because it needs no training and the search's
   gates (kernel borders, channels) have no block-sized analogue to compare against.
3. **Samples**: the original (quality measured, no training) and, from the original's weights
   each time (never from scratch), three levels per dimension (:data:`LEVELS`) and four mixed
   points of the middle levels, each pruned (depth: the ordered blocks; resolution: the in-graph
   resize; width: ``qr`` at the width share, training-free and close to the final width method's
   quality, ``l2``'s scores where qr cannot prune the model: :func:`_width`; the share it
   reached is the sample's w) then fine-tuned with the zeros fixed for ``plan_steps`` optimiser
   steps (default :data:`PLAN_STEPS`), distilled from the original's outputs; quality on the held-out split: accuracy with labels, else top-1
   agreement, mask IoU, or 1 - relative RMS error.
4. **Fit** (:func:`smof_onnx.selection.plan_fit.fit_quality`): the monotone degree-2 polynomial
   over the dimensions in use; **solve** (:func:`smof_onnx.selection.plan_solve.solve_plan`):
   max F subject to counted cost <= ``target_flops``, d discrete, r continuous (the cost
   interpolated between grid sizes); then re-solved on the points the model can take: every
   depth level and grid resolution with the width share that spends the target there
   (w = target / C(d, r)), the best by the fit (:func:`_on_grid`).
5. **Prune** to (d*, r*) and run ``smof`` on that model at the width share w* with the original as
   its teacher (stage-output distillation only when r* = 1: the stage maps differ in size
   otherwise); at w* = 1 the model is fine-tuned with the zeros fixed instead.
The settings carry the plan (space, samples, fit, solution), the removed blocks, the resolution,
and the predicted and measured quality. Needs torch and data; one process (not under torchrun).
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import onnx

from ..data import as_calibration
from ..errors import DataError, UsageError
from . import CompressConfig, MethodResult

LEVELS = {"depth": (0.75, 0.5, 0.25), "width": (0.7, 0.5, 0.3), "resolution": (1 / 3, 2 / 3, 1.0)}
RANK_SAMPLES = 256
QR_SAMPLES = 512    # calibration samples qr reads for a plan sample's width
PLAN_STEPS = 120
W_MIN = 0.15        # the smallest width share the solver considers
FULL_WIDTH = 0.995  # a width share above this is no width cut
AXES = {"depth": 0, "width": 1, "resolution": 2}


@dataclasses.dataclass(frozen=True)
class Plan:
    """What :func:`make_plan` decided; ``to_dict`` is the report's ``method.plan``."""

    space: object               # PlanSpace
    order_scores: dict          # block id -> relative output change when switched off alone
    samples: list               # {"d", "w", "r", "quality", "cost", "seconds"}
    fit: object                 # QualityFit or None (one dimension: nothing to plan)
    solution: object            # PlanSolution or None
    point: dict                 # the (d, w, r) pruned to: snapped, with its counted cost
    target: float
    metric: str
    warnings: tuple = ()

    def to_dict(self) -> dict:
        return {"space": self.space.to_dict(), "block_order_scores": self.order_scores, "samples": self.samples,
                "fit": None if self.fit is None else self.fit.to_dict(),
                "solution": None if self.solution is None else self.solution.to_dict(),
                "point": self.point, "target": self.target, "metric": self.metric, "warnings": list(self.warnings)}


def score(quality: dict) -> tuple[float, str]:
    """One number (higher is better) from :func:`smof_onnx.learn.quality.evaluate`, and its name."""
    if quality.get("metric") == "accuracy":
        return float(quality["accuracy_after"]), "accuracy"
    if "top1_agreement" in quality:
        return float(quality["top1_agreement"]), "top1_agreement"
    if "mask_iou" in quality:
        return float(quality["mask_iou"]), "mask_iou"
    return 1.0 - float(quality["relative_rms_error"]), "1 - relative_rms_error"


def _sample_points(space) -> list[tuple[float, float, float]]:
    """(d, w, r) of the samples: three levels per dimension in use, the middle ones mixed."""
    lv = {"depth": [space.depth_level(x) for x in LEVELS["depth"]] if "depth" in space.dims else [],
          "width": list(LEVELS["width"]) if "width" in space.dims else [],
          "resolution": [space.snap(1 - t * (1 - space.r_min)) for t in LEVELS["resolution"]]
          if "resolution" in space.dims else []}
    pts = []
    for dim, values in lv.items():
        for v in values:
            p = [1.0, 1.0, 1.0]
            p[AXES[dim]] = v
            pts.append(tuple(p))
    mid = {dim: values[1] for dim, values in lv.items() if values}
    if len(mid) >= 2:
        pairs = [(a, b) for i, a in enumerate(mid) for b in list(mid)[i + 1:]] + ([tuple(mid)] if len(mid) == 3 else [])
        for combo in pairs:
            p = [1.0, 1.0, 1.0]
            for dim in combo:
                p[AXES[dim]] = mid[dim]
            pts.append(tuple(p))
    return list(dict.fromkeys(p for p in pts if p != (1.0, 1.0, 1.0)))


class _Context:
    """What every step of the planner shares: the canonical model, data splits, the teacher."""

    def __init__(self, model: onnx.ModelProto, calib, config: CompressConfig):
        import torch  # noqa: F401 -- checked by the caller

        from ..learn import batches
        from ..learn.executor import OnnxModule
        from ..learn.finetune import check_trainable
        from ..passes import graph as pgraph
        from ..passes import pipeline

        check_trainable(model)
        self.config = config
        self.shapes = pgraph.graph_input_shapes(model, config.input_shapes, default_dim=1)
        self.canon = pgraph.to_model(pipeline.canonicalize(pgraph.to_graph(model), self.shapes).graph)
        calib = as_calibration(calib, self.canon, config.input_shapes)
        self.calib = calib
        self.train, self.val = calib.split(config.val_split, config.seed)
        self.eval_set = self.val if self.val is not None else self.train.subset(np.arange(min(len(self.train), 512)))
        self.batch = config.batch_size
        self.names = [o.name for o in self.canon.graph.output]
        self.reference = batches.predict(OnnxModule(self.canon).eval(), self.eval_set, self.batch)

    def quality(self, model: onnx.ModelProto | None = None) -> dict:
        """Quality of ``model`` against the original on the evaluation split (None: the original's own)."""
        from ..learn import batches, quality
        from ..learn.executor import OnnxModule

        after = self.reference if model is None else batches.predict(OnnxModule(model).eval(), self.eval_set,
                                                                     self.batch)
        return quality.evaluate(self.reference, after, self.eval_set.labels, "val" if self.val is not None else "train",
                                self.names)

    def finetune(self, model: onnx.ModelProto, steps: int, feature_distill: float = 0.0) -> onnx.ModelProto:
        from ..learn.finetune import finetune_fixed

        per_epoch = max(1, math.ceil(len(self.train) / self.batch))
        c = self.config
        return finetune_fixed(model, self.train, max(1, math.ceil(steps / per_epoch)), lr=c.lr, batch_size=self.batch,
                              seed=c.seed, progress_bars=False, teacher=self.canon, threads=c.threads,
                              feature_distill=feature_distill, max_memory=c.max_memory, device=c.device,
                              amp=c.amp)


def rank_blocks(ctx: _Context, blocks) -> dict[str, float]:
    """Block id -> relative change of the outputs (sum over outputs of ||y' - y||^2 / ||y||^2) on
    up to :data:`RANK_SAMPLES` training samples when that block alone is switched off."""
    from ..learn import batches
    from ..learn.executor import OnnxModule
    from ..passes.analysis.residual_blocks import zero_branches

    subset = ctx.train.subset(np.arange(min(len(ctx.train), RANK_SAMPLES)))
    ref = batches.predict(OnnxModule(ctx.canon).eval(), subset, ctx.batch)
    out = {}
    for b in blocks:
        got = batches.predict(OnnxModule(zero_branches(ctx.canon, [b], ctx.shapes)).eval(), subset, ctx.batch)
        out[b] = float(sum(((g.double() - r.double()).norm() / (r.double().norm() + 1e-12)) ** 2
                           for g, r in zip(got, ref)))
    return out


def _width(space, model: onnx.ModelProto, share: float, config: CompressConfig, calib) -> tuple[onnx.ModelProto, str]:
    """``model`` cut to ``share`` of its FLOPs in width, the samples' width operator: ``qr``
    (pivoted QR channel selection with least-squares refit, no training; on up to
    :data:`QR_SAMPLES` training samples), else, where qr cannot prune the model, ``l2``'s
    filter-norm and kernel-border scores. Returns (zeroed model, operator)."""
    from ..errors import SmofError
    from ..selection.select import prepare, select
    from .l2 import scores
    from .qr import QRConfig
    from .qr import run as qr_run

    try:
        subset = calib.subset(np.arange(min(len(calib), QR_SAMPLES)))
        result = qr_run(model, subset, QRConfig(target_flops=float(share), seed=config.seed, channel_multiple=8,
                                                batch_size=config.batch_size, progress_bars=False, allow_miss=True))
        return result.model, "qr"
    except SmofError:
        problem = prepare(model, space.shapes, kernel=config.kernel, channel=config.channel,
                          multiple=config.channel_multiple)
        h, _ = select(problem, scores(problem.model, problem.space), share, threshold=-np.inf)
        return problem.space.apply(problem.model, h), "l2"


def _share(space, variant: onnx.ModelProto, zeroed: onnx.ModelProto) -> float:
    """The FLOPs share ``zeroed`` keeps of ``variant`` once cut (what the width operator reached)."""
    from ..passes import graph as pgraph
    from ..passes import pipeline
    from ..passes.analysis.flops import count_cost

    cut = pgraph.to_model(pipeline.cut(pgraph.to_graph(zeroed), space.shapes).graph)
    return count_cost(cut, space.shapes).flops / count_cost(variant, space.shapes).flops


def _on_grid(space, fit, target: float, w_min: float) -> dict:
    """The best point the model can be pruned to: every depth level and grid resolution, each
    with the width share that spends the target there (``w = min(1, target / C(d, r))``, at least
    ``w_min``; the fit is monotone in w, so spending the budget is best), the one the fit predicts
    best (ties: the one that spends more). The continuous solution interpolates the cost between
    grid sizes; this is its discrete re-solve."""
    options = []
    for d in space.depths:
        for r in space.scales:
            c = space.counted(d, r)
            w = min(1.0, target / c)
            if w >= w_min - 1e-9:
                options.append((round(float(fit(d, w, r)), 12), w * c, d, r, w))
    _, _, d, r, w = max(options)
    return {"d": d, "w": w, "r": r}


def make_plan(model: onnx.ModelProto, data, config: CompressConfig, ctx: _Context | None = None) -> tuple[Plan, _Context]:
    """Steps 1-4 of the module docstring; ``ctx`` is reused by :func:`run`."""
    from ..learn.settings import Progress
    from ..selection.plan_fit import fit_quality
    from ..selection.plan_solve import solve_plan
    from ..selection.plan_space import plan_space

    ctx = ctx or _Context(model, data, config)
    dims = tuple(config.dims or ("depth", "width", "resolution"))
    space = plan_space(ctx.canon, ctx.shapes, dims, config.min_resolution or 0.5)
    warnings = [f"{dim} is not used: {why}" for dim, why in space.unavailable.items()]
    if not space.dims:
        raise UsageError(f"--method 3d has no dimension to plan: {'; '.join(warnings)}")
    w_min = W_MIN if "width" in space.dims else 1.0
    cheapest = min(space.cost(d, w_min, space.r_min) for d in space.depths)
    target = config.target_flops
    if cheapest > target:
        raise UsageError(f"--target-flops {target:g} is out of reach of --method 3d: the cheapest plan over "
                         f"{', '.join(space.dims)} keeps {cheapest:.3f} of the FLOPs (fewest blocks, width share "
                         f"{w_min:g}, resolution {space.r_min:.3g}); raise the target or allow more --dims")
    order = {}
    if "depth" in space.dims:
        order = rank_blocks(ctx, space.blocks)
        space = dataclasses.replace(space, blocks=tuple(sorted(space.blocks, key=lambda b: (order[b], b))))
    q0, metric = score(ctx.quality())  # the predictions it already holds
    samples = [{"d": 1.0, "w": 1.0, "r": 1.0, "quality": q0, "cost": 1.0, "seconds": 0.0}]
    fit = solution = None
    if len(space.dims) == 1 and space.dims == ("width",):
        point = {"d": 1.0, "w": target, "r": 1.0}
    else:
        steps = config.plan_steps if config.plan_steps is not None else PLAN_STEPS
        points = _sample_points(space)
        bar = Progress(len(points), "3d samples", config.progress_bars)
        for d, w, r in points:
            t0 = time.perf_counter()
            v = space.variant(ctx.canon, d, r)
            operator = None
            if w < 1:
                zeroed, operator = _width(space, v, w, config, ctx.train)
                w = min(1.0, _share(space, v, zeroed))  # what the operator reached, not what was asked
                v = zeroed
            q, _ = score(ctx.quality(ctx.finetune(v, steps)))
            samples.append({"d": d, "w": w, "r": r, "quality": q, "cost": round(space.cost(d, w, r), 6),
                            "width_operator": operator, "seconds": round(time.perf_counter() - t0, 2)})
            bar.update(quality=q)
        bar.close()
        axes = tuple(AXES[d] for d in space.dims)
        fit = fit_quality([(s["d"], s["w"], s["r"], s["quality"]) for s in samples], axes=axes)
        solution = solve_plan(fit, space.cost, target, space.depths, w_min=w_min,
                              r_min=space.r_min if "resolution" in space.dims else 1.0)
        point = _on_grid(space, fit, target, w_min)
    point["cost"] = round(space.cost(point["d"], point["w"], point["r"]), 6)
    point["predicted_quality"] = None if fit is None else float(fit(point["d"], point["w"], point["r"]))
    point["removed_blocks"] = list(space.removed(point["d"]))
    point["resolution"] = space.resolution_sizes.get(point["r"])
    return Plan(space, order, samples, fit, solution, point, target, metric, tuple(warnings)), ctx


def run(model: onnx.ModelProto, data, config: CompressConfig) -> MethodResult:
    if data is None:
        raise DataError("--method 3d learns from data: give --data (a .npz, .npy or image folder)")
    calib = as_calibration(data, model, config.input_shapes)  # validated before anything trains
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UsageError("--method 3d needs PyTorch (pip install 'smof-onnx[torch]')") from None
    from ..learn.distributed import world_from_env

    if world_from_env()[0] > 1:
        raise UsageError("--method 3d runs in one process: its plan samples are not sharded across torchrun "
                         "ranks; start it without torchrun (--device cuda trains on one GPU)")
    from . import smof

    start = time.perf_counter()
    plan, ctx = make_plan(model, calib, config)
    d, w, r = plan.point["d"], plan.point["w"], plan.point["r"]
    variant = plan.space.variant(ctx.canon, d, r)
    distill = config.feature_distill if r == 1.0 else 0.0
    if w < FULL_WIDTH:
        width_cfg = dataclasses.replace(config, target_flops=float(w), feature_distill=distill, dims=None,
                                        min_resolution=None, plan_steps=None)
        result = smof.run(variant, ctx.calib, width_cfg, teacher=ctx.canon)
        zeroed, width_settings, choices, quality = result.model, result.settings, result.choices, result.quality
    else:
        from ..learn.settings import make_settings

        steps = make_settings(config, len(ctx.train)).finetune_epochs * max(1, math.ceil(len(ctx.train) / ctx.batch))
        zeroed = ctx.finetune(variant, steps, distill or 0.0)
        width_settings, choices, quality = None, [], ctx.quality(zeroed)
    measured = score(quality)[0] if quality else None
    settings = {**config.settings(), "plan": plan.to_dict(), "width": width_settings,
                "removed_blocks": plan.point["removed_blocks"],
                "resolution": {"scale": r, "sizes": plan.point["resolution"], "interface_changed": False},
                "predicted_quality": plan.point["predicted_quality"], "measured_quality": measured,
                "metric": plan.metric, "warnings": list(plan.warnings),
                "seconds": round(time.perf_counter() - start, 2)}
    return MethodResult(zeroed, settings, choices, quality)
