"""What the CLI calls and users import: ``inspect``, ``cut``, ``compress``.

Every entry accepts a path or an ``onnx.ModelProto`` (a proto is copied, never
modified; a file is only read). Inputs whose dims are symbolic other than the batch
axis need ``input_shapes`` (``{"x": [1, 3, 224, 224]}`` or specs like
``["x=1x3x224x224"]``); without them a :class:`ModelError` names the input.

``cut`` and ``compress`` end the same way (:func:`cut_and_verify`): the cut
pipeline (:mod:`passes.pipeline`), ``onnx.checker`` (full check), the interface
check (graph input / output names, dtypes, shapes unchanged) and the ONNX Runtime
gate (:func:`smof_onnx.verify.verify_equivalent`, max rel err <= 1e-5) against
the model the cut started from. Only when all pass is anything written: the model
atomically (:func:`passes.graph.save_model`), then the JSON report. Otherwise a
:class:`VerificationError` says what failed and nothing is written.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from passes import graph as pgraph
from passes import pipeline
from passes.analysis.flops import count_cost
from passes.pipeline import CutConfig

from . import report as rep
from . import verify as ver
from .errors import DataError, ModelError, UsageError, VerificationError

ModelLike = "str | os.PathLike | onnx.ModelProto"
Progress = Callable[[str], None]
ShapesLike = Mapping[str, Sequence[int]] | Sequence[str] | None

__all__ = ["inspect", "cut", "compress", "cut_and_verify", "load", "resolve_shapes"]


# --- shared helpers ----------------------------------------------------------------------------

def load(model: Any) -> tuple[Path | None, onnx.ModelProto]:
    """(path or None, a private copy of the model)."""
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return None, copy
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        return path, pgraph.load_model(path)
    raise UsageError(f"model must be a path or an onnx.ModelProto, not {type(model).__name__}")


def resolve_shapes(model: onnx.ModelProto, input_shapes: ShapesLike) -> dict[str, list[int]] | None:
    """``input_shapes`` as a dict; checks that every non-batch dim is then known (else ModelError)."""
    if input_shapes is None:
        shapes = None
    elif isinstance(input_shapes, Mapping):
        shapes = {k: [int(d) for d in v] for k, v in input_shapes.items()}
        names = _input_names(model)
        unknown = sorted(set(shapes) - set(names))
        if unknown:
            raise ModelError(f"input shapes given for {unknown}, but the model's inputs are {names}")
    else:
        shapes = pgraph.parse_shape_spec(list(input_shapes), _input_names(model))
    pgraph.graph_input_shapes(model, shapes, default_dim=1)  # raises ModelError naming a symbolic input
    return shapes


def _input_names(model: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _calibration(data: Any, model: onnx.ModelProto, shapes: dict[str, list[int]] | None = None) -> Any:
    """None, a dict of arrays, an object with ``.inputs``, or a path read by ``smof_onnx.data``."""
    if data is None or isinstance(data, Mapping) or hasattr(data, "inputs"):
        return data
    if isinstance(data, (str, os.PathLike)):
        from .data import load_data

        try:
            return load_data(data, model, shapes)
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"--data {data}: {exc}") from exc
    if isinstance(data, np.ndarray):
        names = _input_names(model)
        if len(names) != 1:
            raise DataError(f"a single array of data needs a single-input model; inputs are {names}")
        return {names[0]: data}
    raise UsageError(f"data must be a path, a dict of arrays or CalibrationData, not {type(data).__name__}")


def _check_outputs(src: Path | None, output: Any, report_path: Any) -> None:
    for what, target in (("-o", output), ("--report", report_path)):
        if target is None or src is None:
            continue
        t = Path(target)
        if t.resolve() == src.resolve() or (t.exists() and src.exists() and os.path.samefile(t, src)):
            raise UsageError(f"{what} {target} is the input model; the input file is never modified, "
                             "choose another output path")


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
    """Per-layer cost (op, kernel, channels, FLOPs, params) and the channel groups of ``model``.

    The cost is counted on the model as given; the groups come from
    :func:`passes.analysis.channels.analyze_channels` on its canonical form, with the reason
    every frozen group is frozen. Returns a JSON-ready dict (see :func:`report.format_inspect`).
    """
    path, m = load(model)
    shapes = resolve_shapes(m, input_shapes)
    cost = count_cost(m, shapes)
    canon = pipeline.canonicalize(pgraph.to_graph(m), _concrete(m, shapes))
    from passes.analysis.channels import analyze_channels

    groups = describe_groups(analyze_channels(canon.graph))
    frozen = [{"where": f["where"], "reason": f["reason"]} for f in canon.frozen()]
    frozen += [{"where": f"group {g['id']}", "reason": g["reason"]} for g in groups if g["frozen"]]
    return {
        "model": str(path) if path else None,
        "opset": next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None),
        "inputs": _signature(m, m.graph.input), "outputs": _signature(m, m.graph.output),
        "flops": cost.flops, "params": cost.params,
        "layers": [lc.to_dict() for lc in cost.layers],
        "channel_groups": groups, "frozen": frozen,
    }


def describe_groups(analysis: Any) -> list[dict[str, Any]]:
    """JSON rows for the channel groups of a ChannelAnalysis: id, size, members, frozen, reason."""
    groups = getattr(analysis, "groups", None) or []
    items = groups.items() if isinstance(groups, Mapping) else enumerate(groups)
    rows = []
    for key, g in items:
        frozen = getattr(g, "frozen", None)
        reason = getattr(g, "reason", None) or getattr(g, "frozen_reason", None)
        if isinstance(frozen, str):
            reason, frozen = reason or frozen, True
        elif isinstance(frozen, (list, tuple)):
            reason, frozen = reason or "; ".join(map(str, frozen)), bool(frozen)
        members = next((getattr(g, a) for a in ("tensors", "spaces", "members") if hasattr(g, a)), [])
        size = getattr(g, "size", None)
        if size is None:
            size = getattr(g, "channels", None)
        rows.append({"id": str(getattr(g, "id", key)), "size": size, "frozen": bool(frozen),
                     "reason": str(reason) if frozen else None,
                     "members": [getattr(t, "name", str(t)) for t in members][:50]})
    return rows


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
        progress: Progress | None = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Cut the zeros out of ``model`` exactly; returns (cut model, report).

    ``data`` (path, dict of arrays or CalibrationData) adds its first batches to the gate's
    random inputs. ``output`` / ``report_path`` are written only when the gate passes; a
    failed gate raises :class:`VerificationError` and writes nothing.
    """
    src, m = load(model)
    _check_outputs(src, output, report_path)
    shapes = resolve_shapes(m, input_shapes)
    calib = _calibration(data, m, shapes)
    return cut_and_verify(m, m, output=output, input_shapes=shapes, data=calib, report_path=report_path,
                          config=config, progress=progress, extra={"model": str(src) if src else None})


def cut_and_verify(original: onnx.ModelProto, start: onnx.ModelProto, *, output: Any = None,
                   input_shapes: dict[str, list[int]] | None = None, data: Any = None, report_path: Any = None,
                   config: CutConfig = CutConfig(), progress: Progress | None = None, quality: dict | None = None,
                   method: dict | None = None, extra: dict | None = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Cut ``start`` (the model whose zeros are cut), gate it against ``start``, report against
    ``original`` (FLOPs before), then write. The path shared by ``cut`` and ``compress``."""
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
    if output is not None:
        _say(progress, f"writing {output}")
        pgraph.save_model(cut_model, output)
    if report_path is not None:
        rep.write_report(report, report_path)
    return cut_model, report


# --- compress ----------------------------------------------------------------------------------

def compress(model: Any, output: Any = None, *, data: Any = None, target_flops: float = 0.5, method: str = "smof",
             input_shapes: ShapesLike = None, report_path: Any = None, seed: int = 0,
             progress: Progress | None = None, **method_options: Any) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Decide what to zero with ``method`` (``smof_onnx.methods.METHODS``), then cut, verify, write.

    The method is called as ``METHODS[method](model, data=..., target_flops=..., input_shapes=...,
    seed=..., **method_options)`` and returns the zeroed ``onnx.ModelProto``, or
    ``(model, info)`` / an object with ``.model``, where ``info`` / the object may carry
    ``quality`` (dict) and ``settings`` (dict). The gate compares the cut model with the
    zeroed one (the cut is exact); FLOPs before are the input model's.
    """
    if not (0 < float(target_flops) <= 1):
        raise UsageError(f"--target-flops {target_flops}: the fraction of FLOPs to keep must be in (0, 1]")
    src, m = load(model)
    _check_outputs(src, output, report_path)
    shapes = resolve_shapes(m, input_shapes)
    calib = _calibration(data, m, shapes)
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
    method_info = {"name": method, "target_flops": float(target_flops), "seed": seed,
                   **{k: v for k, v in method_options.items()}, **(settings or {})}
    if choices:
        method_info["choices"] = choices
    return cut_and_verify(m, zeroed, output=output, input_shapes=shapes, data=calib, report_path=report_path,
                          progress=progress, quality=quality, method=method_info,
                          extra={"model": str(src) if src else None})


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
