"""Training-free channel pruning by pivoted QR and least squares (CHaPR, arXiv 1908.03266).

``run(model, data, QRConfig(target_flops=0.5)) -> MethodResult``: decides which input channels
of which layers to drop, zeroes them, and rewrites the kept weights so each layer still
produces its original outputs as well as possible; the cut (``smof_onnx.passes.pipeline.cut``) then
removes the zeroed input slices and the producer filters that became unused. No torch.

Steps:

1. **Canonical form and units.** The model is canonicalized (``smof_onnx.passes.pipeline.canonicalize``:
   BN folded, weights as initializers, explicit pads; equivalent to the input) and analysed
   (``analyze_channels``). Each unfrozen channel group whose every reader is a ``group=1`` Conv
   or a Gemm is a *unit* (:mod:`.qr_units`); its readers are its *members*. Dropping a slot
   zeroes its columns in every member; then no output depends on it and the cut removes it
   together with its producers' filters. That is the only way a saving arises, so units are
   exactly the groups the analysis says can go.
2. **Features** (:mod:`smof_onnx.features`): one ONNX Runtime pass over the calibration data
   accumulates ``X^T X`` of every member's sampled im2col patches (bounded positions per batch).
3. **Selection** (:mod:`.qr_select`): per unit, column-pivoted QR (LAPACK geqp3) of the
   matrix whose column ``i`` is slot ``i``'s contribution ``X_i W_i^T`` to every member's
   output (each member normalised by its output energy), factored exactly through its Gram
   matrix. The pivot order ranks the slots; the triangle gives the residual curve.
4. **Allocation** (:mod:`.qr_alloc`): per-unit counts from the global FLOPs target, greedy on
   the increase of the members' least-squares error (for the QR pivot order) per FLOP saved;
   then the masked model is cut and counted (``count_cost``) and the budget tightened until
   the *cut* model meets the target.
5. **Reconstruction**: per member, ridge least squares of the kept columns' weights against
   the member's original outputs. ``reconstruct="sequential"`` (default) re-collects each
   unit's inputs from the model already pruned upstream (same images, same positions), so a
   layer also corrects the error of the layers before it (as in CP / ThiNet);
   ``"parallel"`` uses the first pass only (one ORT pass in all; for large models).

Residual networks (``residual="on"``, the default)
--------------------------------------------------
A residual stream is a channel group whose slots are summed from several producers (the
branch convs and the shortcut, through the Adds); its readers are every block's first conv,
the projection shortcuts and the head. Two rules make it prunable without retraining:

* *Internal channels of each branch* (the output of a block's first conv, read only by its
  second conv) are ordinary units: QR on the second conv picks the block-internal channels,
  least squares refits the second conv, and the cut removes the first conv's filters.
* *A residual stream is one selection over all of its readers*: slot ``c`` can go only if
  every reader drops it, so its column in the QR matrix stacks its contributions to *every*
  reader (each reader's rows scaled by 1/sqrt of its output energy, so a wide head does not
  outvote a block). One pivot order is chosen for the whole stream, and every reader is
  refitted by least squares on the kept slots. The cut then removes slot ``c`` from every
  producer (all branch-final convs, the stem or shortcut) and every reader at once.
* *A stream slot is charged for every reader*: the allocation cost of a unit is the sum of its
  readers' relative least-squares errors, so a stream channel (read by every block of a
  stage) is dearer than a branch-internal one with the same per-layer error, and streams are
  thinned only where their channels are really redundant. (Charging the mean instead, an
  earlier version thinned ResNet-20's streams to about half their width already at 0.5 FLOPs,
  and at 0.3 FLOPs kept 81.9% accuracy on 5000 test images against 89.0% with the sum.)
  The sequential reconstruction then refits every reader, in order, on the pruned stream.

``residual="off"`` skips stream groups (reason recorded), pruning only branch-internal and
plain channels, which is what a per-layer method without the stream rule can do.

Depthwise groups: a group that passes through a depthwise (or grouped) conv is a unit like
any other; the depthwise conv drops the channel with its producer's filter and is not refitted
(:mod:`.qr_units`). A cut over the target is an error naming what limited it
(:func:`_miss_reason`), unless ``allow_miss`` (what ``compress`` sets: it checks the target itself).

``finetune_epochs > 0`` hands the result to the learning stage (needs torch); see
:func:`finetune`. It distils the original's outputs and, with ``feature_distill`` (default
1.0), its stage outputs, as smof does: on the bench ResNet-20 at 0.5 FLOPs (8 epochs, seeds
0-2) 91.22% against 91.13% with the outputs alone.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from smof_onnx.passes import pipeline
from smof_onnx.passes.analysis.channels import analyze_channels
from smof_onnx.passes.analysis.flops import count_cost
from smof_onnx.passes.graph import to_graph, to_model

from ..batching import fixed_batch
from ..data import as_calibration
from ..errors import DataError, UsageError, VerificationError
from ..features import collect
from . import FEATURE_DISTILL, CompressConfig, MethodResult
from .qr_alloc import LayerFlops, allocate, modelled_flops
from .qr_recon import reconstruct
from .qr_select import consumer_gram, ls_curve, pivoted_order
from .qr_units import Unit, find_units, masked

__all__ = ["QRConfig", "MethodResult", "run", "finetune"]


@dataclasses.dataclass(frozen=True)
class QRConfig:
    """Settings of the QR method. ``target_flops`` is the fraction of the original FLOPs to keep."""

    target_flops: float
    max_positions: int = 4096        # sampled output positions per layer, over the whole data set
    batch_size: int = 64
    ridge: float = 1e-3              # relative to the mean diagonal of X_J^T X_J
    seed: int = 0
    residual: str = "on"             # "on": residual streams are units; "off": they are skipped
    reconstruct: str = "sequential"  # or "parallel"
    min_keep: float = 0.1            # each unit keeps at least this fraction (and >= 1 channel)
    threads: int = 1                 # ONNX Runtime intra-op threads for the feature passes
    channel_multiple: int = 1        # kept counts are multiples of this (or the full width)
    activation_mb: int = 256         # fetched activations per batch; caps batch_size for large inputs
    finetune_epochs: int = 0
    feature_distill: float = FEATURE_DISTILL  # fine-tune's stage-output loss weight (0: outputs only); README Methods
    lr: float | None = None          # fine-tune learning rate (None: the trainer's default)
    train_threads: int | None = None  # PyTorch threads of the fine-tune (None: PyTorch's default)
    val_split: float = 0.0           # held out of selection / fine-tune to measure ``quality`` (0: none)
    progress_bars: bool = True
    allow_miss: bool = False         # False: a cut model over the target is a VerificationError

    def __post_init__(self):
        if not 0 < self.target_flops <= 1:
            raise UsageError(f"qr: target_flops must be in (0, 1], got {self.target_flops}")
        if self.residual not in ("on", "off"):
            raise UsageError(f"qr: residual must be 'on' or 'off', got {self.residual!r}")
        if self.reconstruct not in ("sequential", "parallel"):
            raise UsageError(f"qr: reconstruct must be 'sequential' or 'parallel', got {self.reconstruct!r}")
        if self.channel_multiple < 1:
            raise UsageError(f"qr: channel_multiple must be >= 1, got {self.channel_multiple}")
        if not self.feature_distill >= 0:
            raise UsageError(f"qr: feature_distill must be >= 0, got {self.feature_distill}")
        if not 0 <= self.val_split < 1:
            raise UsageError(f"qr: val_split must be in [0, 1), got {self.val_split}")
        if self.max_positions < 1 or self.batch_size < 1 or self.ridge < 0 or not 0 <= self.min_keep <= 1:
            raise UsageError("qr: max_positions and batch_size must be >= 1, ridge >= 0, min_keep in [0, 1]")

    @classmethod
    def from_compress(cls, config: CompressConfig) -> "QRConfig":
        """The QR settings of a registry :class:`CompressConfig` (what ``smof-onnx compress`` passes;
        the options qr cannot use were refused by :func:`smof_onnx.methods.check_options`).

        A miss is allowed here: ``compress`` checks the cut model against the target itself (and
        honours ``--allow-miss``), quoting ``settings["miss_reason"]``."""
        distill = cls.feature_distill if config.feature_distill is None else config.feature_distill
        return cls(target_flops=config.target_flops, batch_size=config.batch_size, seed=config.seed,
                   finetune_epochs=config.finetune_epochs or 0, channel_multiple=config.channel_multiple,
                   feature_distill=distill, lr=config.lr, train_threads=config.threads,
                   val_split=config.val_split, progress_bars=config.progress_bars, allow_miss=True)


def finetune(model: onnx.ModelProto, data: Mapping[str, np.ndarray], epochs: int, **kwargs) -> onnx.ModelProto:
    """Fine-tune ``model`` with its zeros fixed (:func:`smof_onnx.learn.train.finetune_fixed`:
    distillation from the model as it is, plus cross-entropy with labels); needs torch."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UsageError("qr: finetune_epochs > 0 needs PyTorch (pip install 'smof-onnx[torch]'); "
                         "the qr method itself runs without it") from None
    from ..learn.train import finetune_fixed

    return finetune_fixed(model, data, epochs, **kwargs)


def _input_shapes(model: onnx.ModelProto, data: Mapping[str, np.ndarray]) -> dict[str, list[int]]:
    inits = {i.name for i in model.graph.initializer}
    shapes = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        if inp.name not in data:
            raise UsageError(f"qr: calibration data has no array for input '{inp.name}' (has {sorted(data)})")
        shapes[inp.name] = [1, *np.shape(data[inp.name])[1:]]
    return shapes


def _layers(model: onnx.ModelProto, analysis, units: list[Unit], shapes) -> tuple[list[LayerFlops], int]:
    unit_of_slot = {s: i for i, u in enumerate(units) for s in u.slots}
    nodes = {n.name: n for n in model.graph.node}
    cost = count_cost(model, shapes)

    def unit_of(tensor: str) -> int | None:
        if tensor not in analysis.spaces:
            return None
        found = {unit_of_slot.get(int(s)) for s in analysis.slots_of(tensor)}
        return found.pop() if len(found) == 1 else None

    layers = []
    for lay in cost.layers:
        node = nodes.get(lay.name)
        if node is None:
            layers.append(LayerFlops(lay.name, float(lay.flops), None, None))
            continue
        layers.append(LayerFlops(lay.name, float(lay.flops), unit_of(node.input[0]), unit_of(node.output[0])))
    return layers, cost.flops


def _batch_size(model: onnx.ModelProto, shapes, sites, config: QRConfig) -> int:
    """``config.batch_size``, lowered so one batch of fetched layer inputs stays under ``activation_mb``."""
    from smof_onnx.passes.graph import with_static_shapes

    wanted = {s.input for s in sites}
    per_image = 0
    try:
        inferred = with_static_shapes(model, shapes)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
            if vi.name in wanted:
                wanted.discard(vi.name)
                per_image += 4 * math.prod(max(d.dim_value, 1) for d in vi.type.tensor_type.shape.dim)
    except Exception:  # noqa: BLE001 -- an estimate only; without shapes keep the configured batch
        return config.batch_size
    if not per_image:
        return config.batch_size
    return int(max(1, min(config.batch_size, (config.activation_mb << 20) // per_image)))


def _cut_flops(model: onnx.ModelProto, shapes) -> int:
    return count_cost(to_model(pipeline.cut(to_graph(model), shapes).graph), shapes).flops


def run(model: onnx.ModelProto, data, config: QRConfig | CompressConfig) -> MethodResult:
    """Prune ``model`` to ``config.target_flops`` of its FLOPs with QR selection + least squares.

    ``data``: calibration inputs keyed by graph input name (or anything
    :func:`smof_onnx.data.as_calibration` takes). ``choices`` has one row per selection unit
    (one layer, or every reader of a residual stream). With ``val_split > 0`` that fraction of
    the samples is held out of selection, reconstruction and fine-tune, and ``quality`` compares
    the result with the original on it (needs PyTorch, as l2 and smof do). A cut model over the
    target is a :class:`VerificationError` naming what limited it, unless ``allow_miss`` (then
    ``settings["target_met"]`` is False and ``settings["miss_reason"]`` says why).
    """
    t0 = time.perf_counter()
    if not isinstance(config, QRConfig):
        config = QRConfig.from_compress(config)
    calib = as_calibration(data, model)
    if calib is None:
        raise UsageError("--method qr needs calibration data (--data): it fits each layer to its own outputs")
    train_set, val_set = calib.split(config.val_split, config.seed) if config.val_split > 0 else (calib, None)
    data = dict(train_set.inputs)
    shapes = _input_shapes(model, data)
    canon = to_model(pipeline.canonicalize(to_graph(model), shapes).graph)
    for i, node in enumerate(canon.graph.node):  # units and FLOPs rows are matched by node name
        if not node.name:
            node.name = f"qr_{node.op_type}_{i}"
    analysis = analyze_channels(to_graph(canon), shapes)
    units, skipped = find_units(canon, analysis, residual=config.residual == "on")
    for u in units:
        u.min_keep = max(1, math.ceil(config.min_keep * u.size))
    sites = list({m.site.node: m.site for u in units for m in u.members}.values())
    site_ids = {s.node: i for i, s in enumerate(sites)}
    config = dataclasses.replace(config, batch_size=_batch_size(canon, shapes, sites, config))
    model_batch = fixed_batch(canon)
    if model_batch is not None:  # ONNX Runtime feeds only the declared batch: whole batches of it
        whole = len(next(iter(data.values()))) // model_batch * model_batch
        if whole == 0:
            raise DataError(f"the model takes batches of exactly {model_batch} samples; the data has fewer")
        config = dataclasses.replace(config, batch_size=model_batch)
        data = {k: v[:whole] for k, v in data.items()}
    stats = collect(canon, data, sites, max_positions=config.max_positions, batch_size=config.batch_size,
                    seed=config.seed, keep_outputs=config.reconstruct == "sequential", threads=config.threads)
    t_collect = time.perf_counter()

    orders, curves, costs = [], [], []
    for u in units:
        gram = np.zeros((u.size, u.size))
        for m in u.members:
            g, energy = consumer_gram(stats[m.site.node].xtx, m.site.weight, m.cols)
            if energy > 0:
                gram += g / energy
        perm, res = pivoted_order(gram)
        orders.append(perm)
        curves.append(res)
        # allocation cost: the members' relative least-squares errors, summed (a stream slot
        # disturbs every reader), for each number of kept pivots
        costs.append(sum(ls_curve(stats[m.site.node].xtx, m.site.weight, m.cols, perm, config.ridge)
                         for m in u.members))
    t_select = time.perf_counter()

    layers, base_flops = _layers(canon, analysis, units, shapes)
    target = config.target_flops * base_flops
    budget, keep, cut_flops, attempts = target, None, base_flops, 0
    for attempts in range(1, 9):
        before = None if keep is None else keep.copy()
        keep, _ = allocate(layers, costs, [u.min_keep for u in units], budget, start=keep,
                           multiple=config.channel_multiple)
        kept = [orders[i][:int(k)] for i, k in enumerate(keep)]
        cut_flops = _cut_flops(masked(canon, units, kept), shapes)
        if cut_flops <= target or (before is not None and np.array_equal(before, keep)):
            break  # met, or every unit is at its floor
        # the model missed a saving (e.g. a layer the cut could not shrink): ask for that much more
        budget = budget * target / cut_flops * 0.999
    t_alloc = time.perf_counter()
    miss = None if cut_flops <= target else _miss_reason(canon, layers, units, base_flops, cut_flops, config,
                                                         analysis, skipped)
    if miss is not None and not config.allow_miss:
        raise VerificationError(miss + "; nothing was written")

    kept = [np.sort(orders[i][:int(k)]) for i, k in enumerate(keep)]
    pruned, recon = reconstruct(canon, data, units, kept, stats, site_ids, config)
    t_end = time.perf_counter()
    if config.finetune_epochs > 0:
        # Distil from the unpruned model: the pruned one as its own teacher would give zero loss.
        pruned = finetune(pruned, train_set, config.finetune_epochs, teacher=canon,
                          feature_distill=config.feature_distill, lr=config.lr, batch_size=config.batch_size,
                          seed=config.seed, threads=config.train_threads, progress_bars=config.progress_bars)
    quality, quality_note = _quality(canon, pruned, val_set, config)

    choices = []
    for u, k, res, cost in zip(units, keep, curves, costs):
        choices.append({"name": u.name, "group": u.group, "kept": int(k), "total": u.size,
                        "residual_stream": u.residual, "members": [m.site.node for m in u.members],
                        "producers": u.producers, "depthwise": u.passthrough,
                        "residual_at_kept": round(float(res[int(k)]), 6),
                        "residual_curve": [round(float(res[int(round(f * u.size))]), 4)
                                           for f in (0.25, 0.5, 0.75)],
                        "ls_err_at_kept": round(float(cost[int(k)]) / len(u.members), 6),
                        "recon_rel_err": recon.get(u.name)})
    settings = {**dataclasses.asdict(config), "method": "qr",
                "flops_before": int(base_flops), "flops_after": int(cut_flops),
                "flops_ratio": cut_flops / base_flops if base_flops else 1.0,
                "target_met": miss is None, "allocation_rounds": attempts,
                "units": len(units), "skipped": skipped,
                "train_samples": len(train_set), "val_samples": 0 if val_set is None else len(val_set),
                "seconds": {"collect": round(t_collect - t0, 2), "select": round(t_select - t_collect, 2),
                            "allocate": round(t_alloc - t_select, 2), "reconstruct": round(t_end - t_alloc, 2),
                            "total": round(time.perf_counter() - t0, 2)}}
    if miss is not None:
        settings["miss_reason"] = miss
    if quality_note:
        settings["quality_note"] = quality_note
    return MethodResult(pruned, settings, choices, quality)


def _quality(original: onnx.ModelProto, pruned: onnx.ModelProto, val_set, config: QRConfig):
    """(quality on the held-out split as l2 / smof report it, or None; a note when it was not measured)."""
    if val_set is None:
        return None, None
    try:
        import torch  # noqa: F401
    except ImportError:
        return None, "quality on the held-out split needs PyTorch (pip install 'smof-onnx[torch]')"
    from ..learn import train
    from ..learn.executor import OnnxModule

    with train.torch_threads(config.train_threads):
        before = train.predict(OnnxModule(original).eval(), val_set, config.batch_size)
        after = train.predict(OnnxModule(pruned).eval(), val_set, config.batch_size)
        return train.evaluate(before, after, val_set.labels, "val"), None


def _miss_reason(canon: onnx.ModelProto, layers: list[LayerFlops], units: list[Unit], base_flops: float,
                 cut_flops: float, config: QRConfig, analysis, skipped: list[dict]) -> str:
    """Why the target was missed: the FLOPs of layers no unit touches, by the reason their channel
    groups were skipped (largest first), and the floor of every unit at its ``min_keep``."""
    sizes = np.array([u.size for u in units], np.float64)
    floor = modelled_flops(layers, np.array([u.min_keep for u in units], np.float64), sizes) if units else base_flops
    group_of = {t: g.id for g in analysis.groups for t in g.tensors}
    reason_of = {s["group"]: s["reason"] for s in skipped}
    nodes = {n.name: n for n in canon.graph.node}
    by_reason: dict[str, float] = {}
    fixed = 0.0
    for lay in layers:
        if lay.in_unit is not None or lay.out_unit is not None or not lay.flops:
            continue
        fixed += lay.flops
        node = nodes.get(lay.name)
        tensors = [node.output[0], node.input[0]] if node is not None else []
        reason = next((reason_of[group_of[t]] for t in tensors if group_of.get(t) in reason_of),
                      "its channels are in no selectable group")
        by_reason[reason] = by_reason.get(reason, 0.0) + lay.flops
    top = sorted(by_reason.items(), key=lambda kv: -kv[1])[:3]
    held = "; ".join(f"{flops / base_flops:.0%}: {r}" for r, flops in top)
    return (f"qr cannot reach {config.target_flops:g} of the FLOPs (the cut keeps {cut_flops / base_flops:.3f}): "
            f"{fixed / base_flops:.0%} of the FLOPs are in layers whose input and output channels qr cannot "
            f"select ({held or 'none'}), and every selectable group keeps at least {config.min_keep:.0%} of its "
            f"channels (floor {floor / base_flops:.3f}); see `smof-onnx inspect` for what is frozen and why")
