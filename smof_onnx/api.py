"""What the CLI calls and users import: ``inspect``, ``cut``, ``compress``.

Every entry accepts a path or an ``onnx.ModelProto`` (a proto is copied, never
modified; a file is only read). Inputs whose dims are symbolic other than the batch
axis need ``input_shapes`` (``{"x": [1, 3, 224, 224]}`` or specs like
``["x=1x3x224x224"]``); without them a :class:`ModelError` names the input.

``cut`` and ``compress`` end the same way (:func:`cut_and_verify`): the cut
pipeline (:mod:`smof_onnx.passes.pipeline`), ``onnx.checker`` (full check), the interface
check (graph input / output names, dtypes, shapes unchanged) and the ONNX Runtime
gate (:func:`smof_onnx.verify.verify_equivalent`, max rel err <= 1e-5) against
the model the cut started from. Only when all pass is anything written: the model
atomically (:func:`smof_onnx.passes.graph.save_model`), then the JSON report, both or neither
(a failed write removes what the run placed). Otherwise a :class:`VerificationError`
says what failed and nothing is written. The output paths are checked before any work
(:class:`UsageError`): not the input model nor its external-data files, not a directory
nor under a file, the report not the model's own path nor its ``OUT.data``.
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

from . import report as rep
from . import verify as ver
from .errors import DataError, ModelError, UsageError, VerificationError

ModelLike = "str | os.PathLike | onnx.ModelProto"
Progress = Callable[[str], None]
ShapesLike = Mapping[str, Sequence[int]] | Sequence[str] | None

__all__ = ["inspect", "cut", "compress", "cut_and_verify", "load", "resolve_shapes"]


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
        copy = pgraph.load_model(path)
        rep.name_nodes(copy)
        return path, copy
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
    """Refuse, before any work, destinations that cannot be written or would destroy the input or
    each other (UsageError naming the path and what to do instead)."""
    _check_destinations(output, report_path, src.name if src is not None else "model.onnx")
    if src is None:
        return
    targets = [(what, Path(t)) for what, t in (("-o", output), ("--report", report_path)) if t is not None]
    if output is not None:  # written too when the cut model is over 2 GB
        targets.append((f"-o {output} (its external data)", _data_file(output)))
    for what, t in targets:
        if _same_file(t, src):
            raise UsageError(f"{what} {t} is the input model; the input file is never modified, "
                             "choose another output path")
    # The input just loaded from its external-data files, so a target can only be one of them if it
    # exists: only then is the input parsed again (without its weights) to read their names.
    if not any(t.exists() for _, t in targets):
        return
    for data in _external_data_files(src):
        for what, t in targets:
            if _same_file(t, data):
                raise UsageError(f"{what} {t} holds the weights of the input model {src} (its external data); "
                                 "the input is never modified, choose another output path")


def _check_destinations(output: Any, report_path: Any, model_name: str = "model.onnx") -> None:
    """-o / --report must name files that can be written, and different ones: the report replacing
    the model (or the model's external data), or a path found unwritable only after the method ran
    for an hour, loses the run."""
    for what, target, example in (("-o", output, model_name), ("--report", report_path, "report.json")):
        if target is None:
            continue
        t = Path(target)
        if t.is_dir() or os.fspath(target).endswith(("/", os.sep)):
            kind = "is a directory" if t.is_dir() else "names a directory (ends with a slash)"
            raise UsageError(f"{what} {target} {kind}; give the file to write, e.g. {what} {t / example}")
        existing = next(p for p in (t.parent, *t.parent.parents) if p.exists() or p == p.parent)
        if not existing.is_dir():
            raise UsageError(f"{what} {target}: {existing} is a file, not a directory, so nothing can be "
                             "written under it; choose a path in a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UsageError(f"{what} {target}: no permission to write in {existing}; choose a writable directory")
    if output is None or report_path is None:
        return
    other = Path(output).with_suffix(".report.json")
    if _same_file(Path(report_path), Path(output)):
        raise UsageError(f"--report {report_path} is the -o model path: the report would replace the model; "
                         f"give the report its own name, e.g. --report {other}")
    if _same_file(Path(report_path), _data_file(output)):
        raise UsageError(f"--report {report_path} is where the weights of -o {output} go when it is written with "
                         f"external data (models over 2 GB); give the report another name, e.g. --report {other}")


def _data_file(output: Any) -> Path:
    """The external-data file of a model saved at ``output`` (``OUT.data``, passes.graph.save_model's name)."""
    path = Path(output)
    return path.parent / (path.name + ".data")


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


def _external_data_files(src: Path) -> set[Path]:
    """The files the tensors of the model at ``src`` keep their data in, relative to its folder."""
    raw = onnx.load(str(src), load_external_data=False)
    files: set[Path] = set()

    def visit(graph: onnx.GraphProto) -> None:
        tensors = [*graph.initializer, *(t for s in graph.sparse_initializer for t in (s.values, s.indices))]
        for node in graph.node:
            for attr in node.attribute:
                tensors += ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    visit(sub)
        for tensor in tensors:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                location = next((e.value for e in tensor.external_data if e.key == "location"), None)
                if location:
                    files.add(src.parent / location)

    visit(raw.graph)
    return files


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
    :func:`smof_onnx.passes.analysis.channels.analyze_channels` on its canonical form, with the reason
    every frozen group is frozen. Returns a JSON-ready dict (see :func:`report.format_inspect`).
    """
    path, m = load(model)
    shapes = resolve_shapes(m, input_shapes)
    cost = count_cost(m, shapes)
    canon = pipeline.canonicalize(pgraph.to_graph(m), _concrete(m, shapes))
    from smof_onnx.passes.analysis.channels import analyze_channels

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
    _check_destinations(output, report_path)  # also for direct callers: before the cut, not after it
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
    _write(cut_model, output, report, report_path, progress)
    return cut_model, report


def _write(model: onnx.ModelProto, output: Any, report: dict, report_path: Any, progress: Progress | None) -> None:
    """The model and its report, or neither: the report is staged first (a report that cannot be
    serialised stops the run before any write), the model written atomically, then the report
    renamed into place; a failure on the way removes what this run placed (files and folders)."""
    if output is None and report_path is None:
        return
    targets = [Path(t) for t in (output, report_path) if t is not None]
    new_dirs = {d for t in targets for d in _missing_dirs(t)}
    data = _data_file(output) if output is not None else None
    data_before = _identity(data)
    staged = model_placed = None
    writing = f"--report {report_path}"
    try:
        if report_path is not None:
            staged = rep.stage_report(report, report_path)
        if output is not None:
            _say(progress, f"writing {output}")
            writing = f"-o {output}"
            model_placed = pgraph.save_model(model, output)
        if staged is not None:
            writing = f"--report {report_path}"
            os.replace(staged, report_path)
            staged = None
    except BaseException as exc:
        if model_placed is not None:
            model_placed.unlink(missing_ok=True)
        if data is not None and _identity(data) not in (None, data_before):  # save_model placed OUT.data
            data.unlink(missing_ok=True)
        if staged is not None:
            staged.unlink(missing_ok=True)
        for d in sorted(new_dirs, key=lambda p: len(p.parts), reverse=True):  # deepest first; only if empty
            try:
                d.rmdir()
            except OSError:
                pass
        if isinstance(exc, OSError):  # a full disk or a path changed since the checks: not our bug
            raise UsageError(f"{writing}: could not write ({exc.strerror or exc}); nothing from this run was kept "
                             "(check the path, its permissions and the free space, then run again)") from exc
        raise


def _missing_dirs(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet (writing creates them)."""
    return [p for p in (path.parent, *path.parent.parents) if not p.exists()]


def _identity(path: Path | None) -> tuple[int, int, int] | None:
    """(device, inode, mtime) of an existing file, else None: tells a file replaced by this run."""
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns) if st is not None else None


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
    _check_finite(m, zeroed, method)
    method_info = {"name": method, "target_flops": float(target_flops), "seed": seed,
                   **{k: v for k, v in method_options.items()}, **(settings or {})}
    if choices:
        method_info["choices"] = choices
    return cut_and_verify(m, zeroed, output=output, input_shapes=shapes, data=calib, report_path=report_path,
                          progress=progress, quality=quality, method=method_info,
                          extra={"model": str(src) if src else None})


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
