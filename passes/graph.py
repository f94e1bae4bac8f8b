"""Loading, saving and converting models; small helpers over onnx-graphsurgeon.

Rules:
- ``load_model`` never returns a half-read model: a missing file, a file that is
  not ONNX, a truncated file, or external data that is missing or that onnx refuses
  to read (a location outside the model's folder or absolute, a symlink, a hard-linked
  file) raise :class:`ModelError` with a message saying what is wrong and what to do.
- ``save_model`` is atomic: it writes into a temporary directory beside the
  target and renames into place, so a failure never leaves a partial file.
  Models over 2 GB (protobuf's limit) are written with external data in
  ``<name>.data`` next to the model.
- ``to_graph`` / ``to_model`` round-trip through onnx-graphsurgeon and keep the
  opset imports, IR version, producer and metadata of the original model.
- ``to_model`` writes ``value_info`` that is true or absent: the shapes the passes
  left on tensors (concrete sizes from ``--input-shape``, exporters' stale entries) are
  dropped and replaced by ONNX shape inference from the declared graph inputs, where a
  non-positive input dim (Paddle writes -1) counts as unknown; a dim inference cannot
  tell stays unknown, and nothing is written if inference fails.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from .base import ModelError

PROTOBUF_LIMIT = 2**31 - 1
_MODEL_ATTRS = ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string")


def load_model(path: str | os.PathLike, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Read an ONNX file (external data included) or raise :class:`ModelError`."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path}: is a directory, expected an .onnx file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: the file is empty")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelError(
            f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc}); "
            "is the file complete and really an ONNX ModelProto?"
        ) from exc
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{path}: parsed as protobuf but holds no graph; not an ONNX model or truncated")
    if load_external_data:
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            missing = sorted({loc for loc in _external_locations(model) if not (path.parent / loc).exists()})
            if missing and not os.path.isabs(missing[0]) and ".." not in Path(missing[0]).parts:
                reason = f"{path.parent / missing[0]} is missing"
            raise ModelError(
                f"{path}: its external data could not be read ({reason}); keep every .data file a regular "
                "file (not a link, not hard-linked) inside the model's folder, named relative to it"
            ) from exc
    try:
        onnx.checker.check_model(model if model.ByteSize() < PROTOBUF_LIMIT else str(path))
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{path}: invalid ONNX model: {str(exc).splitlines()[0]}") from exc
    except ValueError:
        pass  # checker cannot handle some >2GB in-memory models; the graph is still usable
    return model


def _external_locations(model: onnx.ModelProto) -> list[str]:
    """The ``location`` of every initializer kept in external data."""
    return [e.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
            for e in t.external_data if e.key == "location"]


def model_size(model: onnx.ModelProto) -> int:
    """Bytes the model would take serialised, counting initializer payloads."""
    total = 0
    for init in model.graph.initializer:
        total += len(init.raw_data) if init.raw_data else init.ByteSize()
    return total + sum(n.ByteSize() for n in model.graph.node)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, external_data: bool | None = None) -> Path:
    """Write ``model`` to ``path`` atomically; external data when over 2 GB or asked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = model_size(model) > PROTOBUF_LIMIT - (64 << 20)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp = tmpdir / path.name
        data_name = path.name + ".data"
        if external_data:
            # onnx rewrites the tensors it externalises in place: save a copy, not the caller's proto.
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            onnx.save_model(copy, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            if (tmpdir / data_name).exists():  # absent when no tensor reached the size threshold
                os.replace(tmpdir / data_name, path.parent / data_name)
        else:
            onnx.save_model(model, str(tmp))
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """Import into onnx-graphsurgeon; the model's header is kept on ``graph._smof_header``."""
    graph = gs.import_onnx(model)
    graph._smof_header = {  # type: ignore[attr-defined]
        "opset_import": [(o.domain, o.version) for o in model.opset_import],
        "metadata": [(p.key, p.value) for p in model.metadata_props],
        **{a: getattr(model, a) for a in _MODEL_ATTRS},
    }
    return graph


def to_model(graph: gs.Graph) -> onnx.ModelProto:
    """Export from onnx-graphsurgeon keeping the original header where known."""
    header = vars(graph).get("_smof_header")  # not getattr: gs.Graph.__getattr__ logs an error for a missing name
    model = gs.export_onnx(graph, do_type_check=False)
    del model.graph.value_info[:]
    model.graph.value_info.extend(_true_value_info(graph, model))
    if header:
        del model.opset_import[:]
        for domain, version in header["opset_import"]:
            model.opset_import.append(onnx.helper.make_opsetid(domain, version))
        for key, value in header["metadata"]:
            model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
        for a in _MODEL_ATTRS:
            setattr(model, a, header[a])
    return model


def _true_value_info(graph: gs.Graph, model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Inferred value_info of ``model``'s intermediate tensors (see the module docstring)."""
    skip = {v.name for v in model.graph.input} | {v.name for v in model.graph.output} | \
        {i.name for i in model.graph.initializer}
    try:
        inferred = infer_graph_shapes(graph, unknown_nonpositive=True)
    except Exception:  # noqa: BLE001 -- no value_info is better than a wrong one
        return []
    out = []
    for vi in inferred.graph.value_info:
        tt = vi.type.tensor_type
        if vi.name in skip or not vi.type.HasField("tensor_type") or not tt.elem_type:
            continue
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value <= 0:
                d.Clear()
        out.append(vi)
    return out


def opset_version(graph: gs.Graph) -> int:
    header = vars(graph).get("_smof_header")  # not getattr: gs.Graph.__getattr__ logs an error for a missing name
    if header:
        for domain, version in header["opset_import"]:
            if domain in ("", "ai.onnx"):
                return version
    return graph.opset


def parse_shape_spec(specs: Sequence[str], input_names: Sequence[str]) -> dict[str, list[int]]:
    """Parse ``1x3x224x224`` (single-input models) or ``NAME=1x3x224x224`` (repeatable)."""
    shapes: dict[str, list[int]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition("=")
        if not sep:
            if len(input_names) != 1:
                raise ModelError(
                    f"--input-shape '{spec}' has no input name but the model has inputs "
                    f"{list(input_names)}; write NAME=1x3x224x224"
                )
            name = input_names[0]
        if name not in input_names:
            raise ModelError(f"--input-shape names '{name}', but the model's inputs are {list(input_names)}")
        try:
            shapes[name] = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            raise ModelError(f"--input-shape '{spec}': dims must be integers joined by 'x', e.g. 1x3x224x224") from None
        if any(d <= 0 for d in shapes[name]):
            raise ModelError(f"--input-shape '{spec}': dims must be positive")
    return shapes


def graph_input_shapes(model: onnx.ModelProto, overrides: Mapping[str, Sequence[int]] | None = None,
                       default_dim: int | None = None) -> dict[str, list[int]]:
    """Concrete shape per graph input: ``overrides`` win; symbolic dims take ``default_dim``.

    Raises :class:`ModelError` naming the input when a dim stays unknown.
    """
    overrides = dict(overrides or {})
    initializer_names = {i.name for i in model.graph.initializer}
    shapes = {}
    for inp in model.graph.input:
        if inp.name in initializer_names:
            continue
        if inp.name in overrides:
            dims = list(overrides[inp.name])
            declared = inp.type.tensor_type.shape.dim
            if declared and len(declared) != len(dims):
                raise ModelError(f"input '{inp.name}' has rank {len(declared)}, but the given shape {dims} has rank {len(dims)}")
            shapes[inp.name] = dims
            continue
        dims = []
        for i, d in enumerate(inp.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(d.dim_value)
            elif default_dim is not None and i == 0:
                dims.append(default_dim)
            else:
                raise ModelError(
                    f"input '{inp.name}' has a symbolic dim {d.dim_param or '?'} at axis {i}; "
                    f"give a concrete shape with --input-shape {inp.name}=1x3x224x224"
                )
        shapes[inp.name] = dims
    return shapes


def with_static_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """A copy of ``model`` whose inputs have ``input_shapes`` and whose value_infos are inferred.

    Used by analyses that need concrete sizes (FLOPs, stride>1 SAME pads). The
    returned model is for reading shapes only; edits go to the original.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        if inp.name in input_shapes:
            tt = inp.type.tensor_type
            del tt.shape.dim[:]
            for d in input_shapes[inp.name]:
                tt.shape.dim.add().dim_value = int(d)
    del m.graph.value_info[:]
    for out in m.graph.output:  # outputs' declared symbolic dims would clash with concrete ones
        out.type.tensor_type.ClearField("shape")
    return onnx.shape_inference.infer_shapes(m, check_type=False, strict_mode=False, data_prop=True)


def infer_graph_shapes(graph: gs.Graph, input_shapes: Mapping[str, Sequence[int]] | None = None,
                       keep: int = 1024, unknown_nonpositive: bool = False) -> onnx.ModelProto:
    """Shape inference over ``graph`` without serialising its weights.

    Constants over ``keep`` elements enter the model as typed graph inputs (same dtype and
    dims, no payload): inference needs only their shapes, and a 100 MB model then infers in
    milliseconds instead of seconds. Small constants (shapes, axes, pads) keep their values
    for data propagation. Stale intermediate shapes are dropped, so every shape is inferred
    from the graph inputs (fixed to ``input_shapes`` where given). The result is for reading
    shapes only. ``unknown_nonpositive``: input dims <= 0 (Paddle's -1) become unknown rather
    than propagate as values.
    """
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    model = onnx.ModelProto()
    header = vars(graph).get("_smof_header")  # not getattr: gs.Graph.__getattr__ logs an error for a missing name
    model.ir_version = header["ir_version"] if header else onnx.IR_VERSION
    opsets = header["opset_import"] if header else [("", graph.opset)]
    model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets)
    g = model.graph
    g.node.extend(OnnxExporter.export_node(n) for n in graph.nodes)
    g.input.extend(OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.inputs)
    g.output.extend(OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.outputs)
    for out in g.output:  # declared symbolic output dims would clash with inferred concrete ones
        out.type.tensor_type.ClearField("shape")
    if unknown_nonpositive:
        for inp in g.input:
            for d in inp.type.tensor_type.shape.dim:
                if d.HasField("dim_value") and d.dim_value <= 0:
                    d.Clear()
    seen = {t.name for t in graph.inputs}
    for name, t in graph.tensors().items():
        if not isinstance(t, gs.Constant) or name in seen or not name:
            continue
        if int(np.prod(t.shape, dtype=np.int64)) <= keep:
            g.initializer.append(OnnxExporter.export_tensor_proto(t))
        else:
            g.input.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)), list(t.shape)))
    if input_shapes:
        for inp in g.input:
            if inp.name in input_shapes:
                del inp.type.tensor_type.shape.dim[:]
                for d in input_shapes[inp.name]:
                    inp.type.tensor_type.shape.dim.add().dim_value = int(d)
    return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)


def node_attributes(node: onnx.NodeProto) -> dict:
    """A NodeProto's attributes as Python values, strings (and string lists) decoded from bytes,
    so callers compare ``auto_pad == "VALID"`` and never against ``b"VALID"``."""
    out: dict = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        out[a.name] = v
    return out


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The array behind a gs.Constant (or an initializer-backed tensor), else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def graph_output_names(graph: gs.Graph) -> set[str]:
    return {t.name for t in graph.outputs}


def unique_name(graph: gs.Graph, base: str) -> str:
    """A tensor/node name not yet used in ``graph`` (stable: base, base_1, base_2...)."""
    taken = set(graph.tensors().keys()) | {n.name for n in graph.nodes}
    if base not in taken:
        return base
    i = 1
    while f"{base}_{i}" in taken:
        i += 1
    return f"{base}_{i}"


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
              "tensor(int8)": np.int8, "tensor(bool)": np.bool_}


def shapes_by_running(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]],
                      names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Concrete shapes of the tensors ``names``, read from one ONNX Runtime run of ``model`` on
    zero inputs of ``input_shapes`` (graph optimisations off, so every name survives).

    For shapes ONNX shape inference cannot tell (e.g. a Reshape whose target is computed
    by Shape -> Cast -> Slice -> Concat). Best effort: a failed run gives ``{}``, and the
    caller names what stays unknown. A shape read this way holds for these input shapes
    only; a caller must not use it for a tensor whose shape depends on input values.
    """
    import onnxruntime as ort  # only needed for models shape inference cannot resolve

    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]  # stale intermediate shapes must not contradict the run
    existing = {o.name for o in m.graph.output}
    for name in names:
        if name not in existing:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        feeds = {inp.name: np.zeros([int(d) for d in input_shapes[inp.name]], _ORT_TYPES.get(inp.type, np.float32))
                 for inp in sess.get_inputs()}
        values = sess.run(list(names), feeds)
    except Exception:  # noqa: BLE001 -- a fallback; the caller names what stays unknown
        return {}
    return {n: tuple(int(d) for d in np.shape(v)) for n, v in zip(names, values)}
