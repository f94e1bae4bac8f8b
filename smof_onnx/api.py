"""What the CLI calls and users import: ``inspect``, ``cut``, ``compress``.

Every entry accepts a path or an ``onnx.ModelProto`` (a proto is copied, never
modified; a file is only read). Inputs whose dims are symbolic other than the batch
axis need ``input_shapes`` (``{"x": [1, 3, 224, 224]}`` or specs like
``["x=1x3x224x224"]``); without them a :class:`ModelError` names the input.

``cut`` and ``compress`` end the same way (:func:`cut_and_verify`): the cut
pipeline (:mod:`smof_onnx.passes.pipeline`), ``onnx.checker`` (full check), the interface
check (graph input / output names, dtypes, shapes unchanged) and the ONNX Runtime
gate (:func:`smof_onnx.verify.verify_equivalent`, max rel err <= 1e-5) against
the model the cut started from; for ``compress``, the target too: a cut keeping more than
``target_flops + 0.01`` of the FLOPs (or timed over a ``target_latency`` the method measured)
is a :class:`VerificationError` unless ``allow_miss=True``, and the report says ``target_met``.
Only when all pass is anything written (:func:`smof_onnx.commit.commit`: the model and the JSON
report, both or neither, SIGINT / SIGTERM deferred until both are complete). Otherwise a
:class:`VerificationError` says what failed and nothing is written.

Before any work (exit 2): the output paths against every file the run reads
(:func:`smof_onnx.paths.check_outputs`), ``--input-shape`` against the model's fixed dims, the
memory the gate needs at those shapes, the input's weights (NaN / inf refused, naming the
tensor) and, for ``compress``, that the model has FLOPs to cut (:mod:`smof_onnx.checks`). What
bad files make libraries raise while the model or the data is read becomes a
:class:`ModelError` / :class:`DataError` naming the file (:func:`smof_onnx.checks.reading`).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from smof_onnx.passes import graph as pgraph
from smof_onnx.passes import pipeline
from smof_onnx.passes.analysis.flops import count_cost
from smof_onnx.passes.pipeline import CutConfig

from . import checks
from . import commit as cm
from . import paths
from . import report as rep
from . import verify as ver
from .errors import DataError, ModelError, UsageError, VerificationError

ModelLike = "str | os.PathLike | onnx.ModelProto"
Progress = Callable[[str], None]
ShapesLike = Mapping[str, Sequence[int]] | Sequence[str] | None

__all__ = ["inspect", "cut", "compress", "plan", "export", "cut_and_verify", "load", "resolve_shapes"]


# --- shared helpers ----------------------------------------------------------------------------

def load(model: Any) -> tuple[Path | None, onnx.ModelProto]:
    """(path or None, a private copy of the model, its unnamed nodes named: :func:`report.name_nodes`)."""
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        rep.name_nodes(copy)
        return None, copy
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        with checks.reading(f"{path}", ModelError):
            copy = pgraph.load_model(path)
        rep.name_nodes(copy)
        return path, copy
    raise UsageError(f"model must be a path or an onnx.ModelProto, not {type(model).__name__}")


def resolve_shapes(model: onnx.ModelProto, input_shapes: ShapesLike) -> dict[str, list[int]] | None:
    """``input_shapes`` as a dict; checks that every non-batch dim is then known (else ModelError)."""
    if input_shapes is None or (not isinstance(input_shapes, Mapping) and not list(input_shapes)):
        shapes = None
    elif isinstance(input_shapes, Mapping):
        shapes = {k: [int(d) for d in v] for k, v in input_shapes.items()}
        names = _input_names(model)
        unknown = sorted(set(shapes) - set(names))
        if unknown:
            raise ModelError(f"input shapes given for {unknown}, but the model's inputs are {names}")
    else:
        shapes = pgraph.parse_shape_spec(list(input_shapes), _input_names(model))
    if shapes is not None:
        checks.check_shape_specs(model, input_shapes, shapes)
    pgraph.graph_input_shapes(model, shapes, default_dim=1)  # raises ModelError naming a symbolic input
    return shapes


def _input_names(model: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _calibration(data: Any, model: onnx.ModelProto, shapes: dict[str, list[int]] | None = None,
                 options: Any = None) -> Any:
    """None, a dict of arrays, an object with ``.inputs``, or a path read by ``smof_onnx.data``;
    ``options``: :class:`smof_onnx.data.DataOptions` (or a dict of its fields), checked first."""
    from .data import as_calibration, data_options, load_data

    opts = data_options(options)
    if data is None:
        if opts.image_options() or opts.max_samples is not None:
            raise UsageError("data options (--image-size, --mean, --std, --max-samples, ...) need --data")
        return None
    if isinstance(data, Mapping) or hasattr(data, "inputs"):
        return data if options is None else as_calibration(data, model, shapes, opts)
    if isinstance(data, (str, os.PathLike)):
        with checks.reading(f"--data {data}", DataError):
            return load_data(data, model, shapes, opts)
    if isinstance(data, np.ndarray):
        names = _input_names(model)
        if len(names) != 1:
            raise DataError(f"a single array of data needs a single-input model; inputs are {names}")
        return {names[0]: data}
    raise UsageError(f"data must be a path, a dict of arrays or CalibrationData, not {type(data).__name__}")


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def _check_model(model: onnx.ModelProto) -> None:
    """onnx.checker with full_check (through a file for models over the protobuf limit)."""
    if pgraph.model_size(model) <= pgraph.PROTOBUF_LIMIT - (64 << 20):
        onnx.checker.check_model(model, full_check=True)
        return
    tmpdir = tempfile.mkdtemp(prefix="smof-check-")
    try:
        path = pgraph.save_model(model, Path(tmpdir) / "model.onnx", external_data=True)
        onnx.checker.check_model(str(path), full_check=True)
    finally:
        import shutil
        shutil.rmtree(tmpdir, ignore_errors=True)


# --- inspect -----------------------------------------------------------------------------------

def inspect(model: Any, input_shapes: ShapesLike = None) -> dict[str, Any]:
    """Per-layer cost (op, kernel, channels, FLOPs, params), the channel groups and the residual
    blocks (what ``--method 3d``'s depth can remove) of ``model``.

    The cost is counted on the model as given; the groups come from
    :func:`smof_onnx.passes.analysis.channels.analyze_channels` on its canonical form, with the reason
    every frozen group is frozen. Returns a JSON-ready dict (see :func:`report.format_inspect`).
    """
    path, m = load(model)
    shapes = resolve_shapes(m, input_shapes)
    cost = count_cost(m, shapes)
    canon = pipeline.canonicalize(pgraph.to_graph(m), _concrete(m, shapes))
    from smof_onnx.passes.analysis.channels import analyze_channels

    concrete = _concrete(m, shapes)
    groups = describe_groups(analyze_channels(canon.graph, concrete))
    frozen = [{"where": f["where"], "reason": f["reason"]} for f in canon.frozen()]
    frozen += [{"where": f"group {g['id']}", "reason": g["reason"]} for g in groups if not g["gateable"]]
    from smof_onnx.passes.analysis.residual_blocks import find_residual_blocks

    blocks = find_residual_blocks(canon.graph, concrete)
    return {
        "model": str(path) if path else None,
        "opset": next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None),
        "inputs": _signature(m, m.graph.input), "outputs": _signature(m, m.graph.output),
        "flops": cost.flops, "params": cost.params,
        "layers": [lc.to_dict() for lc in cost.layers],
        "channel_groups": groups, "frozen": frozen,
        "residual_blocks": [{"id": b.id, "shortcut": b.shortcut, "nodes": len(b.nodes), "flops": b.flops,
                             "params": b.params} for b in blocks.blocks],
        "warnings": [f"NaN/inf in {kind} '{name}': cut and compress refuse this model"
                     for kind, name in checks.non_finite_tensors(m)],
    }


def describe_groups(analysis: Any) -> list[dict[str, Any]]:
    """JSON rows for the channel groups of a ChannelAnalysis (:func:`smof_onnx.groups.describe_groups`)."""
    from .groups import describe_groups as rows

    return rows(analysis)


def _signature(model: onnx.ModelProto, values) -> list[dict[str, Any]]:
    inits = {i.name for i in model.graph.initializer}
    return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
             if v.type.tensor_type.elem_type else "?",
             "shape": [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                       for d in v.type.tensor_type.shape.dim]}
            for v in values if v.name not in inits]


def _concrete(model: onnx.ModelProto, shapes: dict[str, list[int]] | None) -> dict[str, list[int]]:
    return pgraph.graph_input_shapes(model, shapes, default_dim=1)


# --- cut ---------------------------------------------------------------------------------------

def cut(model: Any, output: Any = None, input_shapes: ShapesLike = None, data: Any = None,
        report_path: Any = None, *, config: CutConfig = CutConfig(),
        progress: Progress | None = None, data_options: Any = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Cut the zeros out of ``model`` exactly; returns (cut model, report).

    ``data`` (path, dict of arrays or CalibrationData) adds its first batches to the gate's
    random inputs (``data_options``: :class:`smof_onnx.data.DataOptions`, how it is read).
    ``output`` / ``report_path`` are written only when the gate passes; a
    failed gate raises :class:`VerificationError` and writes nothing.
    """
    src, m, shapes, calib = _prepare(model, output, report_path, input_shapes, data, data_options)
    return cut_and_verify(m, m, output=output, input_shapes=shapes, data=calib, report_path=report_path,
                          config=config, progress=progress, extra={"model": str(src) if src else None})


def cut_and_verify(original: onnx.ModelProto, start: onnx.ModelProto, *, output: Any = None,
                   input_shapes: dict[str, list[int]] | None = None, data: Any = None, report_path: Any = None,
                   config: CutConfig = CutConfig(), progress: Progress | None = None, quality: dict | None = None,
                   method: dict | None = None, extra: dict | None = None, target: float | None = None,
                   allow_miss: bool = False) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Cut ``start`` (the model whose zeros are cut), gate it against ``start``, report against
    ``original`` (FLOPs before), check ``target`` (:func:`_check_target`), then write. The path
    shared by ``cut`` and ``compress``."""
    paths.check_outputs([], output, report_path)  # also for direct callers: before the cut, not after it
    concrete = _concrete(start, input_shapes)
    _say(progress, "cutting")
    work = onnx.ModelProto()
    work.CopyFrom(start)
    result = pipeline.cut(pgraph.to_graph(work), concrete, config)
    cut_model = pgraph.to_model(result.graph)

    _say(progress, "verifying")
    try:
        _check_model(cut_model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise VerificationError(f"the cut model fails onnx.checker: {str(exc).splitlines()[0]}; "
                                "nothing was written (please report this)") from exc
    changes = ver.interface_changes(start, cut_model)
    if changes:
        raise VerificationError("the cut changed the model's interface: " + "; ".join(changes))
    checked = ver.verify_equivalent(start, cut_model, input_shapes, data=data)
    if not checked.ok:
        worst = max(checked.per_output, key=checked.per_output.get)
        raise VerificationError(
            f"verification failed: max relative error {checked.max_rel_err:.3g} > {checked.tol:g} "
            f"(output '{worst}', {checked.inputs} inputs); nothing was written", checked)

    report = rep.build_report(count_cost(original, concrete), count_cost(cut_model, concrete), pipeline=result,
                              verify=checked, quality=quality, method=method,
                              extra={**(extra or {}), "output": str(output) if output else None,
                                     "input_shapes": concrete})
    if target is not None:
        _check_target(report, target, allow_miss)
    cm.commit(cut_model, output, report, report_path, progress)
    return cut_model, report


def _prepare(model: Any, output: Any, report_path: Any, input_shapes: ShapesLike,
             data: Any, data_options: Any = None) -> tuple[Path | None, onnx.ModelProto, dict[str, list[int]] | None, Any]:
    """What ``cut`` and ``compress`` check before any work (module docstring); returns
    (path, model, shapes, calibration data)."""
    name = Path(model).name if isinstance(model, (str, os.PathLike)) else "model.onnx"
    paths.check_outputs(paths.run_reads(model, data), output, report_path, name)
    src, m = load(model)
    checks.refuse_non_finite(m, str(src) if src else None)
    shapes = resolve_shapes(m, input_shapes)
    checks.check_memory(m, _concrete(m, shapes), what="--input-shape" if shapes else "the model's input shape")
    calib = _calibration(data, m, shapes, data_options)
    return src, m, shapes, calib


FLOPS_SLACK = 0.01  # a cut may keep this much more than target_flops: channel multiples are coarse


def _check_target(report: dict, target: float, allow_miss: bool) -> None:
    """The cut meets the FLOPs target (and the latency target the method timed), else
    VerificationError -- or, with ``allow_miss``, ``target_met: false`` in the report."""
    ratio = report["flops"]["ratio"]
    missed = []
    if ratio > target + FLOPS_SLACK:
        missed.append(f"the cut keeps {ratio:.3f} of the FLOPs, the target was {target:g}")
    method = report.get("method") or {}
    latency = method.get("latency") if isinstance(method.get("latency"), dict) else None
    if latency and latency.get("target") is not None and latency.get("measured_ratio") is not None:
        noise = max(0.02, abs(1 - float(latency.get("self_ratio") or 1)))  # the machine's timing noise
        if latency["measured_ratio"] > latency["target"] + noise:
            missed.append(f"the cut model was timed at {latency['measured_ratio']:.3f} of the latency, the target "
                          f"was {latency['target']:g}")
    method.pop("target_met", None)  # one answer, at the top level
    report["target_met"] = not missed
    if allow_miss:
        report["allow_miss"] = True
    if missed and not allow_miss:
        frozen = len(report.get("frozen") or [])
        why = (f"{method['miss_reason']}: " if method.get("miss_reason") else  # the method's own account
               f"The method could not remove more ({frozen} part(s) of the model are frozen: see `smof-onnx inspect`): ")
        raise VerificationError(
            f"target missed: {'; '.join(missed)} (method {method.get('name', '?')}); nothing was written. {why}"
            "try another --method, --channel-multiple 1, a higher target, or --allow-miss to write the best effort")


# --- compress ----------------------------------------------------------------------------------

def compress(model: Any, output: Any = None, *, data: Any = None, target_flops: float = 0.5, method: str = "smof",
             input_shapes: ShapesLike = None, report_path: Any = None, seed: int = 0,
             progress: Progress | None = None, allow_miss: bool = False, data_options: Any = None,
             **method_options: Any) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Decide what to zero with ``method`` (``smof_onnx.methods.METHODS``), then cut, verify, write.

    The method is called as ``METHODS[method](model, data=..., target_flops=..., input_shapes=...,
    seed=..., **method_options)`` and returns the zeroed ``onnx.ModelProto``, or
    ``(model, info)`` / an object with ``.model``, where ``info`` / the object may carry
    ``quality`` (dict) and ``settings`` (dict). The gate compares the cut model with the
    zeroed one (the cut is exact); FLOPs before are the input model's. A cut that misses the
    target raises :class:`VerificationError` (nothing written) unless ``allow_miss``.
    ``data_options`` (:class:`smof_onnx.data.DataOptions` or a dict of its fields: image
    preprocessing, ``max_samples``, ``workers``) says how ``data`` is read.
    """
    if not (0 < float(target_flops) <= 1):
        raise UsageError(f"--target-flops {target_flops}: the fraction of FLOPs to keep must be in (0, 1]")
    src, m, shapes, calib = _prepare(model, output, report_path, input_shapes, data, data_options)
    if count_cost(m, _concrete(m, shapes)).flops <= 0:
        raise UsageError("nothing to compress: the model has no Conv, ConvTranspose, Gemm or MatMul FLOPs, so "
                         "there is no FLOPs target to meet (see `smof-onnx inspect` for what the model holds)")
    try:
        from .methods import METHODS
    except ImportError as exc:
        raise UsageError(f"no compression methods are available ({exc})") from exc
    if method not in METHODS:
        raise UsageError(f"--method {method}: unknown; available: {sorted(METHODS)}")
    _say(progress, f"method {method}: choosing what to zero (target {target_flops:g} of the FLOPs)")
    work = onnx.ModelProto()
    work.CopyFrom(m)
    returned = METHODS[method](work, data=calib, target_flops=float(target_flops), input_shapes=shapes, seed=seed,
                               **method_options)
    zeroed, quality, settings, choices = _unpack(returned, method)
    from .learn.distributed import is_worker

    if is_worker():  # a torchrun rank other than 0: it trained its shard; rank 0 cuts, verifies and writes
        return zeroed, {"rank": int(os.environ.get("RANK", "0")), "written": False}
    _check_finite(m, zeroed, method)
    method_info = {"name": method, "target_flops": float(target_flops), "seed": seed,
                   **{k: v for k, v in method_options.items() if k != "progress_bars"}, **(settings or {})}
    if choices:
        method_info["choices"] = choices
    return cut_and_verify(m, zeroed, output=output, input_shapes=shapes, data=calib, report_path=report_path,
                          progress=progress, quality=quality, method=method_info,
                          extra={"model": str(src) if src else None}, target=float(target_flops),
                          allow_miss=allow_miss)


def _check_finite(original: onnx.ModelProto, zeroed: onnx.ModelProto, method: str) -> None:
    """A method that trains can diverge; the gate would pass a NaN model (NaN sits in the same
    places before and after the cut), so non-finite weights the input did not have stop here."""
    def bad(model: onnx.ModelProto) -> set[str]:
        out = set()
        for init in model.graph.initializer:
            if init.data_type in _FLOAT_TYPES:
                if not np.isfinite(onnx.numpy_helper.to_array(init)).all():
                    out.add(init.name)
        return out

    new = sorted(bad(zeroed) - bad(original))
    if new:
        raise VerificationError(f"method {method} produced non-finite weights (NaN or inf) in {len(new)} tensor(s), "
                                f"e.g. '{new[0]}', where the input's are finite: training diverged; nothing was "
                                "written. Lower --lr, or try another --seed")


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def _unpack(returned: Any, method: str) -> tuple[onnx.ModelProto, dict | None, dict | None, list | None]:
    """(zeroed model, quality, settings, per-layer choices) from what a method returned."""
    if isinstance(returned, onnx.ModelProto):
        return returned, None, None, None
    if isinstance(returned, tuple) and len(returned) == 2 and isinstance(returned[0], onnx.ModelProto):
        info = returned[1] or {}
        return returned[0], info.get("quality"), info.get("settings"), info.get("choices")
    if isinstance(getattr(returned, "model", None), onnx.ModelProto):
        return (returned.model, getattr(returned, "quality", None), getattr(returned, "settings", None),
                getattr(returned, "choices", None))
    raise TypeError(f"method '{method}' returned {type(returned).__name__}, not an ONNX model")


# --- plan --------------------------------------------------------------------------------------

def plan(model: Any, data: Any, target_flops: float = 0.5, *, input_shapes: ShapesLike = None, seed: int = 0,
         output: Any = None, png: Any = None, progress: Progress | None = None, data_options: Any = None,
         **options: Any) -> dict[str, Any]:
    """Plan depth, width and resolution for ``target_flops`` (steps 1-4 of
    :mod:`smof_onnx.methods.three_d`: samples, fit, solution) without pruning; returns the plan
    (the report's ``method.plan``). ``output``: write it as JSON; ``png``: draw the fitted quality
    over depth and resolution (:mod:`smof_onnx.methods.plan_figure`, needs matplotlib). ``options``:
    the :class:`smof_onnx.methods.CompressConfig` fields 3d reads (``dims``, ``min_resolution``,
    ``plan_steps``, ``batch_size``...). Files are written only when the plan is complete."""
    import json

    from .methods import check_options, config_from_options

    if data is None:
        raise UsageError("plan learns from data: give --data (a .npz, .npy or image folder)")
    if not (0 < float(target_flops) <= 1):
        raise UsageError(f"--target-flops {target_flops}: the fraction of FLOPs to keep must be in (0, 1]")
    reads = paths.run_reads(model, data)
    for flag, target in (("-o", output), ("--png", png)):
        if target is not None:
            paths.check_outputs(reads, None, target, report_flag=flag)
    if png is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--png needs matplotlib (pip install 'smof-onnx[docs]'); leave --png out") from None
    src, m, shapes, calib = _prepare(model, None, None, input_shapes, data, data_options)
    cfg = config_from_options(None, target_flops=float(target_flops), input_shapes=shapes, seed=seed, **options)
    check_options("3d", cfg, {k for k, v in options.items() if v is not None} - {"progress_bars"}, True)
    from .methods import three_d

    _say(progress, f"planning depth, width and resolution (target {target_flops:g} of the FLOPs)")
    made, _ = three_d.make_plan(m, calib, cfg)
    out = {**made.to_dict(), "model": str(src) if src else None, "seed": seed}
    _say(progress, "writing")
    staged = []
    for target in (output, png):
        if target is not None:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
    try:
        if png is not None and made.fit is not None:
            from .methods.plan_figure import draw

            tmp = Path(png).with_name(f".{Path(png).name}.{os.getpid()}.tmp.png")
            draw(made, tmp, three_d.W_MIN if "width" in made.space.dims else 1.0)
            staged.append((tmp, Path(png)))
        elif png is not None:
            out["warnings"] = list(out["warnings"]) + ["no picture: with width alone there is nothing to plan"]
        if output is not None:
            tmp = Path(output).with_name(f".{Path(output).name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(out, indent=2, default=float))
            staged.append((tmp, Path(output)))
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _final in staged:
            tmp.unlink(missing_ok=True)
    return out


# --- export ------------------------------------------------------------------------------------

def export(model: Any, output: Any, to: str = "onnx", *, quantize: str | None = None, data: Any = None,
           input_shapes: ShapesLike = None, report_path: Any = None, tflite_python: Any = None,
           progress: Progress | None = None, **options: Any) -> dict[str, Any]:
    """Write ``model`` for runtime ``to`` (onnx | ort | openvino | tflite), optionally int8, verified
    against ONNX Runtime fp32 before anything is placed; returns the report. ``options`` are
    :class:`smof_onnx.export.ExportConfig` fields (thresholds, ``bench_seconds``, ``threads``...).
    See :mod:`smof_onnx.export`."""
    import dataclasses

    from .export import ExportConfig
    from .export import export as export_artifact

    known = {f.name for f in dataclasses.fields(ExportConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"export: unknown option(s) {unknown}; known: {sorted(known)}")
    return export_artifact(model, output, to, quantize=quantize, data=data, input_shapes=input_shapes,
                           report_path=report_path, tflite_python=tflite_python, config=ExportConfig(**options),
                           progress=progress)
