"""Compression methods: each decides *what* to zero; the cut (:mod:`smof_onnx.passes.pipeline`) removes it.

``METHODS[name](model, data=None, config=None, **options) -> MethodResult``

- ``model``: the input ``onnx.ModelProto`` (a private copy; a method may edit it).
- ``data``: None, a path, a dict of arrays keyed by input name, or
  :class:`smof_onnx.data.CalibrationData` (validated against the model before any training).
- ``config``: a :class:`CompressConfig`; or leave it out and pass the options as keywords
  (``target_flops=0.5, seed=0, input_shapes=..., epochs=...``), which is how
  :func:`smof_onnx.api.compress` calls a method. An unknown option is a :class:`UsageError`, and
  so is an option the method does not read in that run (:data:`METHOD_OPTIONS`,
  :func:`check_options`: e.g. ``--epochs`` with ``l2``, ``--no-kernel`` with ``qr``, a fine-tune
  option of ``l2`` without data), naming the option and the method.

Registered: ``smof`` (learned kernel + channel gates, :mod:`.smof`), ``l2`` (data-free filter
L2 norm and kernel-border energy, :mod:`.l2`), ``qr`` (CHaPR pivoted QR, :mod:`.qr`), ``3d`` (depth, width and resolution planned together,
:mod:`.three_d`). Methods
are imported when first called, so importing this package never imports torch (``l2`` and
``qr`` run without it).
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import numbers
from typing import Any, Callable, Mapping, Sequence

import onnx

from ..errors import UsageError
from ..selection.defaults import FEATURE_DISTILL  # --feature-distill's default, shared with the trainer

__all__ = ["METHODS", "MethodResult", "CompressConfig", "config_from_options", "check_options", "METHOD_OPTIONS"]


@dataclasses.dataclass(frozen=True)
class MethodResult:
    """What a method returns: the zeroed model (the cut removes the zeros) and what it decided.

    ``settings``: the method's effective options (JSON-ready). ``choices``: one row per layer,
    ``{"name", "op", "kernel_before", "kernel_after", "out_before", "out_after"}``.
    ``quality``: accuracy or agreement on held-out data, None without data.
    """

    model: onnx.ModelProto
    settings: dict
    choices: list[dict]
    quality: dict | None = None


_INT_FIELDS = ("epochs", "finetune_epochs", "batch_size", "seed", "channel_multiple", "bench_batch", "threads",
               "plan_steps")
_FLOAT_FIELDS = ("target_flops", "target_latency", "lr", "val_split", "feature_distill", "min_resolution")
PLAN_DIMS = ("depth", "width", "resolution")  # --method 3d's dimensions (smof_onnx.selection.plan_space.DIMS)


@dataclasses.dataclass(frozen=True)
class CompressConfig:
    """Every option of ``smof-onnx compress``; None means "the method's default".

    ``epochs`` / ``finetune_epochs``: passes over the training split for the gate search and
    for the fine-tune with masks fixed (default: as many as make about 300 optimiser steps of
    search and 600 of fine-tune, so small calibration sets still train and large ones stay fast).
    ``channel_multiple``: kept channel counts of every slot family are multiples of this
    (or the full count); 0 is the per-family rule of :func:`smof_onnx.selection.gates.family_multiple`
    (16 for families of >= 32 channels, else 8; ``qr`` takes one multiple and uses 8), the
    default: on the default model at 0.5 FLOPs it ran 1.69x faster than the original where a
    multiple of 8 everywhere ran 1.27x, at the same accuracy (see ``family_multiple``). ``target_latency`` / ``bench_batch``: the latency-aware budget.
    ``threads``: PyTorch's intra-op threads while a method trains (None: PyTorch's default, one
    per core). On this 2-core machine, with another process busy, training with the default's
    2 threads slowed from 5 to 0.25 steps/s (spin-waiting threads); ``threads=1`` avoids that.
    ``max_memory``: the learning stage's memory budget, bytes or a size such as ``"4G"`` (None: half
    the available memory; :mod:`smof_onnx.learn.memory`); the batch is lowered to fit it.
    ``no_latency``: smof scores gates by the FLOPs they save instead of the time the measured
    latency table predicts they save (the default, :mod:`smof_onnx.methods.latency`).
    ``feature_distill``: weight of the stage-output distillation (each stage's output matched
    to the original's, :func:`smof_onnx.selection.taps.feature_taps`; None: :data:`FEATURE_DISTILL`, 0: off) in the
    training of smof and in the fine-tune of ``l2`` and ``qr`` with data.
    ``device``: where PyTorch trains (smof, and l2's fine-tune): ``auto`` / None (CUDA when
    available), ``cpu``, ``cuda``, ``cuda:N``; ``amp``: CUDA autocast (:mod:`smof_onnx.learn.device`).
    ``latency_runtime``: the runtime the latency table and the timings run on (``ort``,
    ``openvino``; :mod:`smof_onnx.export.runtimes`).
    ``dims`` / ``min_resolution`` / ``plan_steps``: ``3d`` only: the dimensions it may plan (a
    subset of depth, width, resolution, or a comma-separated string; None: all three), the
    smallest input scale (None: 0.5) and the fine-tune steps of each plan sample (None: 120).
    """

    target_flops: float = 0.5
    target_latency: float | None = None
    epochs: int | None = None
    finetune_epochs: int | None = None
    lr: float | None = None
    batch_size: int = 64
    seed: int = 0
    val_split: float = 0.1
    kernel: bool = True
    channel: bool = True
    channel_multiple: int = 0
    bench_batch: int = 32
    threads: int | None = None
    feature_distill: float | None = None
    input_shapes: Mapping[str, Sequence[int]] | None = None
    progress_bars: bool = True
    max_memory: int | str | None = None
    no_latency: bool = False
    device: str | None = None
    amp: bool = False
    dims: Sequence[str] | None = None
    min_resolution: float | None = None
    plan_steps: int | None = None
    latency_runtime: str = "ort"

    def __post_init__(self):
        # Types first (API callers pass anything; a NaN epoch count would pass every comparison below).
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral)):
                raise UsageError(f"--{name.replace('_', '-')} {v!r}: must be a whole number")
        for name in _FLOAT_FIELDS:
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
                raise UsageError(f"--{name.replace('_', '-')} {v!r}: must be a number")
        if not 0 < self.target_flops <= 1:
            raise UsageError(f"--target-flops {self.target_flops}: must be in (0, 1]")
        if self.target_latency is not None and not 0 < self.target_latency <= 1:
            raise UsageError(f"--target-latency {self.target_latency}: must be in (0, 1]")
        for name in ("epochs", "finetune_epochs"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise UsageError(f"--{name.replace('_', '-')} {v}: must be >= 0")
        if self.batch_size < 1 or self.bench_batch < 1:
            raise UsageError("--batch-size and --bench-batch must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads {self.threads}: must be >= 1")
        if self.channel_multiple < 0:
            raise UsageError(f"--channel-multiple {self.channel_multiple}: must be >= 1, or 0 for the per-layer rule")
        if not 0 <= self.val_split < 1:
            raise UsageError(f"--val-split {self.val_split}: must be in [0, 1)")
        # NaN fails every comparison, so each float check is written to fail for NaN too, and
        # the unbounded ones ask for a finite number (inf would train to NaN weights).
        if self.feature_distill is not None and not (self.feature_distill >= 0 and math.isfinite(self.feature_distill)):
            raise UsageError(f"--feature-distill {self.feature_distill}: must be a finite number >= 0 "
                             "(0 turns it off, 1 is the default)")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr {self.lr}: must be a finite number > 0 (e.g. 1e-3; leave it out for the "
                             "method's default)")
        if self.max_memory is not None:
            from ..learn.memory import parse_memory  # torch-free

            parse_memory(self.max_memory)  # a clear --max-memory error before any work
        if self.no_latency and self.target_latency is not None:
            raise UsageError("--no-latency and --target-latency contradict each other: a latency target needs the "
                             "measured latency table; leave one of them out")
        if self.device is not None or self.amp:
            from ..learn.device import parse_device  # torch-free spelling check; availability when training

            parse_device(self.device)
        if not isinstance(self.amp, bool):
            raise UsageError(f"--amp {self.amp!r}: must be true or false")
        if self.latency_runtime != "ort":
            from ..export.runtimes import check_runtime  # torch-free; a missing runtime names its extra

            check_runtime(self.latency_runtime)
        if self.dims is not None:
            dims = (self.dims.split(",") if isinstance(self.dims, str) else list(self.dims))
            bad = [d for d in dims if d not in PLAN_DIMS]
            if bad or not dims or len(set(dims)) != len(dims):
                raise UsageError(f"--dims {','.join(map(str, dims))}: give one or more of {','.join(PLAN_DIMS)}, "
                                 "comma-separated, each once")
            object.__setattr__(self, "dims", tuple(d for d in PLAN_DIMS if d in dims))
        if self.min_resolution is not None and not 0 < self.min_resolution <= 1:
            raise UsageError(f"--min-resolution {self.min_resolution}: must be in (0, 1] (the smallest fraction of "
                             "the input size --method 3d may compute at, e.g. 0.5)")
        if self.plan_steps is not None and self.plan_steps < 1:
            raise UsageError(f"--plan-steps {self.plan_steps}: must be >= 1")
        if not (self.kernel or self.channel):
            raise UsageError("--no-kernel together with --no-channel leaves nothing to compress")

    def settings(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_shapes"] = {k: list(v) for k, v in (self.input_shapes or {}).items()} or None
        d["dims"] = None if self.dims is None else list(self.dims)
        d.pop("progress_bars")
        return d


_FIELDS = {f.name for f in dataclasses.fields(CompressConfig)}


def config_from_options(config: CompressConfig | None = None, **options: Any) -> CompressConfig:
    """``config`` updated with the options that are not None; unknown names are a UsageError."""
    unknown = sorted(set(options) - _FIELDS)
    if unknown:
        raise UsageError(f"unknown method option(s) {unknown}; known: {sorted(_FIELDS)}")
    given = {k: v for k, v in options.items() if v is not None}
    if "input_shapes" in given and given["input_shapes"] is not None:
        given["input_shapes"] = {k: tuple(int(d) for d in v) for k, v in dict(given["input_shapes"]).items()}
    return dataclasses.replace(config or CompressConfig(), **given)


# What each method reads (design: one configuration, refused where unused). An option outside
# its method's set is a UsageError naming both, never silently dropped. ``_ALWAYS``: every method.
_ALWAYS = frozenset({"target_flops", "seed", "input_shapes", "progress_bars"})
_SELECTION = frozenset({"kernel", "channel", "channel_multiple"})
_LATENCY = frozenset({"target_latency", "bench_batch", "latency_runtime"})
_TRAINING = frozenset({"finetune_epochs", "lr", "batch_size", "val_split", "threads", "feature_distill", "max_memory",
                       "device", "amp"})
_QR_FINETUNE = frozenset({"lr", "feature_distill", "max_memory"})  # read only when qr fine-tunes
_PLAN = frozenset({"dims", "min_resolution", "plan_steps"})
METHOD_OPTIONS: dict[str, dict[str, frozenset[str]]] = {
    # "data" / "no_data": the options read with and without calibration data
    "smof": {"data": _SELECTION | _LATENCY | _TRAINING | {"epochs", "no_latency"},
             "no_data": _SELECTION | _LATENCY | _TRAINING | {"epochs", "no_latency"}},  # smof refuses to run without data
    "l2": {"data": _SELECTION | _LATENCY | _TRAINING, "no_data": _SELECTION | _LATENCY},
    "qr": {"data": frozenset({"channel_multiple", "batch_size", "val_split", "threads", "finetune_epochs"}) | _QR_FINETUNE},
}
METHOD_OPTIONS["3d"] = {"data": _SELECTION | _TRAINING | _PLAN | {"epochs", "no_latency", "bench_batch",
                                                                   "latency_runtime"}}
METHOD_OPTIONS["3d"]["no_data"] = METHOD_OPTIONS["3d"]["data"]  # 3d refuses to run without data (its own error)
METHOD_OPTIONS["qr"]["no_data"] = METHOD_OPTIONS["qr"]["data"]  # qr refuses to run without data (its own error)
_WHY_NOT = {
    "kernel": "it never cuts kernel borders",
    "channel": "it only cuts channels, so --no-channel would leave it nothing to do",
    "target_latency": "it meets a FLOPs target only (--target-flops)",
    "epochs": "it has no gate search (epochs are smof's search; use --finetune-epochs)",
    "no_latency": "its scores never read the latency table (only smof's and 3d's width step do)",
    "dims": "only --method 3d plans depth, width and resolution",
    "min_resolution": "only --method 3d changes the resolution",
    "plan_steps": "only --method 3d fine-tunes plan samples",
}


def option_flag(field: str) -> str:
    """The command-line spelling of a :class:`CompressConfig` field."""
    return {"kernel": "--no-kernel", "channel": "--no-channel", "input_shapes": "--input-shape"}.get(
        field, "--" + field.replace("_", "-"))


def check_options(method: str, config: CompressConfig, given: set[str], has_data: bool) -> None:
    """Refuse (UsageError naming the option and the method) every option in ``given`` that
    ``method`` does not read in this run; ``given``: the options the caller set (the fields of a
    passed config that differ from the defaults, and every explicit keyword)."""
    table = METHOD_OPTIONS.get(method)
    if table is None:
        return
    reads = _ALWAYS | table["data" if has_data else "no_data"]
    for field in sorted(given):
        flag = option_flag(field)
        if field not in reads:
            why = _WHY_NOT.get(field)
            if why is None and not has_data and field in table["data"]:
                why = "without --data it does not train (give --data, or leave the option out)"
            raise UsageError(f"{flag} is not used by --method {method}: {why or 'it does not read this option'}; "
                             f"leave it out (--method {method} reads: "
                             f"{', '.join(sorted(option_flag(f) for f in reads - _ALWAYS)) or 'no method options'})")
        timed = method in ("smof", "3d")  # their default scoring times a latency table at --bench-batch
        if field in ("bench_batch", "latency_runtime") and config.target_latency is None and (
                not timed or config.no_latency):
            raise UsageError(f"{flag} is read only with --target-latency (--method {method}"
                             f"{', or without --no-latency' if timed else ''}); add "
                             "--target-latency or leave it out")
        if method == "qr" and field in _QR_FINETUNE and not config.finetune_epochs:
            raise UsageError(f"{flag} is read by --method qr only when it fine-tunes; add --finetune-epochs N "
                             "(N > 0) or leave it out")


def _given(config: CompressConfig | None, options: Mapping[str, Any]) -> set[str]:
    default = CompressConfig()
    given = {k for k, v in options.items() if v is not None and not (isinstance(v, bool) and v == getattr(default, k))}
    if config is not None:
        given |= {f.name for f in dataclasses.fields(CompressConfig)
                  if getattr(config, f.name) != getattr(default, f.name)}
    return given


def _lazy(method: str, module: str | None = None) -> Callable[..., MethodResult]:
    module = module or method

    def run(model: onnx.ModelProto, data: Any = None, config: CompressConfig | None = None,
            **options: Any) -> MethodResult:
        cfg = config_from_options(config, **options)
        check_options(method, cfg, _given(config, options), data is not None)
        if module == "qr" and cfg.channel_multiple == 0:
            cfg = dataclasses.replace(cfg, channel_multiple=8)  # qr allocates with one multiple
        return importlib.import_module(f"{__name__}.{module}").run(model, data, cfg)

    run.__name__ = f"{module}_run"
    run.__doc__ = f"Run :mod:`smof_onnx.methods.{module}` (imported on first use)."
    return run


METHODS: dict[str, Callable[..., MethodResult]] = {name: _lazy(name) for name in ("smof", "l2", "qr")}
METHODS["3d"] = _lazy("3d", "three_d")
