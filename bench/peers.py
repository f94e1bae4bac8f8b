"""The peer methods the benchmark measures smof against, each hitting a FLOPs target the same way.

The FLOPs ratio of every peer is the one our product reports: :func:`smof_onnx.passes.analysis.flops.count_cost`
of the peer's ONNX model over that of the original (2 x MACs of Conv / Gemm / MatMul, batch 1).
Each peer has one knob (a pruning ratio or a sparsity) under which those FLOPs fall monotonically,
and :func:`bisect_knob` finds the *smallest* knob whose model has ``ratio <= target`` (so the peer
keeps as much as the budget allows), to within ``KNOB_TOL``. A target the knob cannot reach returns the model at the knob's
maximum with ``settings["reached"] = False``: the table shows its real ratio instead of hiding it.

- :func:`torch_pruning` -- Torch-Pruning 1.6 (DepGraph): ``MetaPruner`` with
  ``GroupMagnitudeImportance(p=2)`` (group L2 norm), a uniform per-layer ``pruning_ratio``
  (``global_pruning=False``, Torch-Pruning's default), the classifier Linear left whole, optional
  ``round_to``; then :func:`finetune` with the same epochs and data as smof gets, then the
  torchscript export of :mod:`bench.fmnist_models`.
- :func:`onnxsim_structured` -- onnxsim 0.8.1 ``onnxsim.pruning.apply_structured_pruning(model,
  sparsity, importance_norm, global_sparsity)``: ONNX-side, data-free, filter-norm ranking.
- :func:`onnxsim_wanda` -- ``apply_structured_wanda_pruning(model, calibration_data=[{input: batch}],
  sparsity=..., importance_norm=..., global_sparsity=...)``: ranks filters by
  ``||W_row||_2 * ||X||_2`` with activation norms measured by ONNX Runtime on calibration batches.

Each returns ``(onnx.ModelProto, settings)``; ``settings`` is JSON-ready and records the knob,
the ratio reached, the bisection steps and the fine-tune recipe.
"""
from __future__ import annotations

import copy
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from smof_onnx.passes.analysis.flops import count_cost  # noqa: E402

KNOB_TOL = 1e-3    # bisection stops once the knob interval is this narrow
MAX_STEPS = 16


def flops_of(model: onnx.ModelProto, input_shapes=None) -> int:
    return count_cost(model, input_shapes).flops


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    c = onnx.ModelProto()
    c.CopyFrom(model)
    return c


def bisect_knob(make: Callable[[float], Any], ratio_of: Callable[[Any], float], target: float,
                lo: float = 0.0, hi: float = 0.95, grid: int = 8) -> tuple[Any, float, float, list[dict], bool]:
    """Smallest knob in [lo, hi] whose product has ``ratio_of(product) <= target``.

    A coarse scan of ``grid`` knobs finds the first one at or under the target, then bisection
    narrows the bracket below it to ``KNOB_TOL``. The scan is there because a peer's FLOPs are
    monotone only where the knob is sane: near the top, Torch-Pruning leaves alone a group it
    would have to empty, so the FLOPs rise again. When no scanned knob reaches the target the
    product with the lowest ratio comes back with ``reached = False``.
    Returns (product, knob, ratio, trace, reached).
    """
    trace: list[dict] = []

    def probe(k: float):
        product = make(k)
        r = ratio_of(product)
        trace.append({"knob": round(k, 6), "ratio": round(r, 6)})
        return product, r

    below = lo
    found = None
    for i in range(1, grid + 1):
        k = lo + (hi - lo) * i / grid
        product, r = probe(k)
        if r <= target:
            found = (product, k, r)
            break
        below = k
    if found is None:
        best = min(range(len(trace)), key=lambda i: trace[i]["ratio"])
        k = trace[best]["knob"]
        product, r = probe(k)  # rebuild it: products are not all kept in memory
        return product, k, r, trace, False
    best, best_k, best_r = found
    lo, hi = below, best_k
    while len(trace) < MAX_STEPS + grid and hi - lo > KNOB_TOL:
        mid = (lo + hi) / 2
        product, r = probe(mid)
        if r <= target:
            hi, best, best_k, best_r = mid, product, mid, r
        else:
            lo = mid
    return best, best_k, best_r, trace, True


# ----------------------------------------------------------------------------- Torch-Pruning

@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tune recipe; the defaults are smof's (``smof_onnx.learn.train``): Adam at 1e-3, batch 64,
    KL(teacher || student) on logits at temperature 1 plus cross-entropy when labels are given,
    cosine learning rate to 0. ``optimizer="sgd"`` uses Nesterov momentum instead."""
    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9     # sgd only
    weight_decay: float = 0.0
    kd: bool = True
    temperature: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def finetune(module, teacher, x: np.ndarray, y: np.ndarray | None, cfg: FinetuneConfig, log=None):
    """Train ``module`` in place on (x, y): cross-entropy (when labels are given) plus, with
    ``cfg.kd``, KL divergence to ``teacher``'s logits; cosine learning rate to 0 over all steps.
    Returns the module in eval mode."""
    import torch
    from torch.nn import functional as F

    if cfg.epochs <= 0 or len(x) == 0:
        return module.eval()
    if y is None and not cfg.kd:
        raise ValueError("fine-tuning needs labels or distillation (kd=True)")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    xt = torch.from_numpy(np.ascontiguousarray(x))
    yt = None if y is None else torch.from_numpy(np.asarray(y, dtype=np.int64))
    soft = None
    if cfg.kd:
        teacher.eval()
        with torch.no_grad():
            soft = torch.cat([teacher(xt[i:i + 500]) for i in range(0, len(xt), 500)])
    decay = [p for p in module.parameters() if p.ndim > 1]
    no_decay = [p for p in module.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=cfg.lr)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', not {cfg.optimizer!r}")
    steps = cfg.epochs * ((len(xt) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    t = cfg.temperature
    for epoch in range(cfg.epochs):
        module.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            out = module(xt[idx])
            loss = out.new_zeros(())
            if yt is not None:
                loss = loss + F.cross_entropy(out, yt[idx])
            if soft is not None:
                loss = loss + F.kl_div(F.log_softmax(out / t, 1), F.log_softmax(soft[idx] / t, 1),
                                       reduction="batchmean", log_target=True) * t * t
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if log:
            log(f"    fine-tune epoch {epoch + 1}/{cfg.epochs} loss {total / len(xt):.4f}")
    return module.eval()


def _classifier(module):
    from torch import nn

    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]  # its outputs are the classes: never pruned


def tp_prune(module, ratio: float, example_shape: Sequence[int] = (1, 1, 28, 28), round_to: int | None = None,
             global_pruning: bool = False):
    """A pruned deep copy of ``module``: Torch-Pruning MetaPruner, group L2 magnitude importance."""
    import torch
    import torch_pruning as tp

    pruned = copy.deepcopy(module).eval()
    if ratio <= 0:
        return pruned
    pruner = tp.pruner.MetaPruner(pruned, torch.zeros(*example_shape),
                                  importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, global_pruning=global_pruning,
                                  ignored_layers=_classifier(pruned), round_to=round_to)
    pruner.step()
    return pruned.eval()


def torch_pruning(module, target_flops: float, *, export: Callable[[Any], onnx.ModelProto],
                  x: np.ndarray | None = None, y: np.ndarray | None = None,
                  finetune_cfg: FinetuneConfig = FinetuneConfig(epochs=0), round_to: int | None = None,
                  global_pruning: bool = False, example_shape: Sequence[int] = (1, 1, 28, 28),
                  max_ratio: float = 0.95, log=None) -> tuple[onnx.ModelProto, dict]:
    """Torch-Pruning to ``target_flops`` of the exported model's counted FLOPs, fine-tuned, as ONNX.

    ``export(module) -> onnx.ModelProto`` is the exporter the original was exported with, so the
    FLOPs of both are counted on the same kind of graph.
    """
    import torch_pruning as tp

    start = time.perf_counter()
    base = flops_of(export(copy.deepcopy(module)))

    def make(ratio: float):
        pruned = tp_prune(module, ratio, example_shape, round_to, global_pruning)
        return pruned, export(copy.deepcopy(pruned))

    (pruned, proto), ratio, reached_ratio, trace, reached = bisect_knob(
        make, lambda p: flops_of(p[1]) / base, target_flops, 0.0, max_ratio)
    prune_s = time.perf_counter() - start
    if finetune_cfg.epochs > 0:
        if x is None:
            raise ValueError("torch_pruning: fine-tuning needs calibration images")
        finetune(pruned, module, x, y, finetune_cfg, log)
        proto = export(copy.deepcopy(pruned))
    settings = {"peer": "torch_pruning", "version": tp.__version__, "importance": "GroupMagnitudeImportance(p=2)",
                "pruner": "MetaPruner", "global_pruning": global_pruning, "round_to": round_to,
                "pruning_ratio": ratio, "flops_ratio": flops_of(proto) / base, "reached": reached,
                "bisection": trace, "prune_seconds": round(prune_s, 2),
                "finetune": finetune_cfg.to_dict() | {"images": 0 if x is None else len(x),
                                                      "labels": y is not None}}
    return proto, settings


# ----------------------------------------------------------------------------- onnxsim

def _onnxsim_version() -> str:
    try:
        from importlib.metadata import version
        return version("onnxsim")
    except Exception:  # the version is informative only
        return "?"


def onnxsim_structured(model: onnx.ModelProto, target_flops: float, *, importance_norm: str = "l2",
                       global_sparsity: bool = False, max_sparsity: float = 0.99) -> tuple[onnx.ModelProto, dict]:
    """onnxsim's data-free ``apply_structured_pruning`` at the sparsity that reaches ``target_flops``."""
    from onnxsim.pruning import apply_structured_pruning

    base = flops_of(model)

    def make(s: float) -> onnx.ModelProto:
        return _copy(model) if s <= 0 else apply_structured_pruning(
            _copy(model), sparsity=s, importance_norm=importance_norm, global_sparsity=global_sparsity)

    pruned, s, r, trace, reached = bisect_knob(make, lambda m: flops_of(m) / base, target_flops, 0.0, max_sparsity)
    return pruned, {"peer": "onnxsim.apply_structured_pruning", "version": _onnxsim_version(),
                    "importance_norm": importance_norm, "global_sparsity": global_sparsity, "sparsity": s,
                    "flops_ratio": r, "reached": reached, "bisection": trace, "data": "none"}


def calibration_batches(x: np.ndarray, input_name: str = "input", batch: int = 64,
                        max_batches: int | None = None) -> list[dict[str, np.ndarray]]:
    out = [{input_name: np.ascontiguousarray(x[i:i + batch])} for i in range(0, len(x), batch)]
    return out if max_batches is None else out[:max_batches]


def onnxsim_wanda(model: onnx.ModelProto, target_flops: float, x: np.ndarray, *, importance_norm: str = "l2",
                  global_sparsity: bool = False, batch: int = 64, max_sparsity: float = 0.99,
                  input_name: str | None = None) -> tuple[onnx.ModelProto, dict]:
    """onnxsim's calibrated ``apply_structured_wanda_pruning`` (activation norms from ``x``)."""
    from onnxsim.pruning import apply_structured_wanda_pruning

    inits = {i.name for i in model.graph.initializer}
    name = input_name or next(i.name for i in model.graph.input if i.name not in inits)
    calib = calibration_batches(x, name, batch)
    base = flops_of(model)

    def make(s: float) -> onnx.ModelProto:
        return _copy(model) if s <= 0 else apply_structured_wanda_pruning(
            _copy(model), calibration_data=calib, sparsity=s, importance_norm=importance_norm,
            global_sparsity=global_sparsity, providers=["CPUExecutionProvider"])

    pruned, s, r, trace, reached = bisect_knob(make, lambda m: flops_of(m) / base, target_flops, 0.0, max_sparsity)
    return pruned, {"peer": "onnxsim.apply_structured_wanda_pruning", "version": _onnxsim_version(),
                    "importance_norm": importance_norm, "global_sparsity": global_sparsity, "sparsity": s,
                    "flops_ratio": r, "reached": reached, "bisection": trace,
                    "data": f"{len(x)} calibration images in batches of {batch}"}
