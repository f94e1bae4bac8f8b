"""Training batches for models exported with a fixed batch size (most exports: batch 1).

The methods that learn (``smof``, and the fine-tune of ``qr`` / ``l2``) feed many samples per
step, but a model whose inputs declare ``[1, C, H, W]`` rejects a batch of 32 (ONNX Runtime
checks the declared dims) and often bakes the batch into its constants (``Reshape`` to
``[1, -1]``). :func:`free_batch` makes a copy that takes any batch, used only to *run* the model
while learning; the returned model keeps the user's interface.

Rules of the rewrite (for a model whose graph inputs all declare the same static batch ``b``):
- every graph input's axis 0, and every graph output's axis 0 that reads ``b``, becomes the
  symbolic ``batch``; ``value_info`` is dropped (it carries the static batch);
- a ``Reshape`` whose target shape (an initializer or ``Constant``) starts with ``b`` and whose
  ``allowzero`` is 0 gets ``0`` there ("copy axis 0 of the input"), which is the batch exactly
  when the reshaped tensor leads with the batch.
Nothing else is rewritten (an ``Expand`` to ``[1, ...]``, a ``Resize`` with ``sizes``, ...).
Whether the copy really computes sample by sample what the original computes is then *checked*,
not assumed: ONNX Runtime runs the copy on ``2 b`` calibration samples at once and the original
on the same samples ``b`` at a time, and the outputs must agree (:data:`TOLERANCE`). When the
rewrite fails that check (or there are fewer than ``2 b`` samples), the methods train at the
model's own batch ``b`` instead (:attr:`Batching.batch_size`), slower but exact; the reason is
kept for the report.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from smof_onnx.passes import graph as pgraph

__all__ = ["Batching", "free_batch", "fixed_batch", "TOLERANCE"]

TOLERANCE = 1e-4  # max |free - original| / max |original| per output (batched convs reorder sums)
BATCH_DIM = "batch"


@dataclasses.dataclass(frozen=True)
class Batching:
    """``model`` runs the batches the methods feed; ``fixed``: the input model's own batch
    (None when its batch axis is already free); ``free``: whether ``model`` takes any batch."""
    model: onnx.ModelProto
    fixed: int | None
    free: bool
    reason: str = ""

    def batch_size(self, wanted: int) -> int:
        """The batch size to train with when ``wanted`` was asked for."""
        return int(wanted) if self.free else int(self.fixed)

    def report(self) -> dict | None:
        """What the report says about it (None for a model whose batch was free already)."""
        if self.fixed is None:
            return None
        return {"model_batch": self.fixed, "freed": self.free, **({"reason": self.reason} if self.reason else {})}


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The static axis-0 size every graph input declares, or None (a symbolic or missing axis
    0 anywhere, or inputs that disagree: then axis 0 is not one shared batch)."""
    sizes = set()
    for inp in _graph_inputs(model):
        dims = inp.type.tensor_type.shape.dim
        if not dims or not dims[0].HasField("dim_value") or dims[0].dim_value <= 0:
            return None
        sizes.add(int(dims[0].dim_value))
    return sizes.pop() if len(sizes) == 1 else None


def _rewrite(model: onnx.ModelProto, b: int) -> tuple[onnx.ModelProto, int]:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for vi in _graph_inputs(out):
        vi.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    for vi in g.output:
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == b:
            dims[0].dim_param = BATCH_DIM
    del g.value_info[:]
    inits = {i.name: i for i in g.initializer}
    constants = {n.output[0]: n for n in g.node if n.op_type == "Constant" and n.output}
    taken = set(inits) | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    reshapes = 0
    for node in g.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        if any(a.name == "allowzero" and a.i == 1 for a in node.attribute):
            continue  # 0 would mean a zero-size axis, not "copy"
        src = node.input[1]
        if src in inits:
            shape = numpy_helper.to_array(inits[src])
        elif src in constants and any(a.name == "value" for a in constants[src].attribute):
            shape = numpy_helper.to_array(next(a.t for a in constants[src].attribute if a.name == "value"))
        else:
            continue
        if shape.ndim != 1 or shape.size == 0 or int(shape[0]) != b:
            continue
        shape = shape.copy()
        shape[0] = 0
        name, k = f"{src}_free_batch", 0
        while name in taken:  # a fresh initializer: the old one may feed other nodes
            k += 1
            name = f"{src}_free_batch_{k}"
        taken.add(name)
        g.initializer.append(numpy_helper.from_array(shape, name))
        node.input[1] = name
        reshapes += 1
    return out, reshapes


def _run(model: onnx.ModelProto, feeds: list[dict]) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    from .verify import session_options

    sess = ort.InferenceSession(model.SerializeToString(), session_options(True, 1),
                                providers=["CPUExecutionProvider"])
    return [sess.run(None, f) for f in feeds]


def free_batch(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> Batching:
    """A copy of ``model`` that takes any batch, checked on ``inputs`` (calibration arrays by
    graph input name, axis 0 = samples); see the module docstring for the rules."""
    b = fixed_batch(model)
    if b is None:
        return Batching(model, None, True)
    names = [i.name for i in _graph_inputs(model)]
    n = min((len(inputs[nm]) for nm in names if nm in inputs), default=0)
    if n < 2 * b:
        return Batching(model, b, False, f"fewer than {2 * b} samples to check a free batch against")
    if pgraph.model_size(model) > pgraph.PROTOBUF_LIMIT - (64 << 20):
        return Batching(model, b, False, "model over the 2 GB protobuf limit: not rewritten")
    free, reshapes = _rewrite(model, b)
    sample = {nm: np.ascontiguousarray(inputs[nm][:2 * b]) for nm in names}
    try:
        (together,) = _run(free, [sample])
        apart = _run(model, [{nm: v[i * b:(i + 1) * b] for nm, v in sample.items()} for i in range(2)])
    except Exception as exc:  # noqa: BLE001 - any ORT refusal means "keep the model's batch"
        return Batching(model, b, False, f"the model with a free batch does not run: {str(exc).splitlines()[0][:200]}")
    for k, got in enumerate(together):
        want = np.concatenate([a[k] for a in apart]) if np.ndim(apart[0][k]) else None
        if want is None or got.shape != want.shape:
            return Batching(model, b, False, f"output {k} does not carry the batch on axis 0")
        if np.issubdtype(want.dtype, np.floating):
            scale = float(np.max(np.abs(want))) if want.size else 0.0
            err = float(np.max(np.abs(got.astype(np.float64) - want))) / (scale or 1.0) if want.size else 0.0
            ok = np.isfinite(err) and err <= TOLERANCE
        else:
            ok = np.array_equal(got, want)
        if not ok:
            return Batching(model, b, False, f"output {k} of {2 * b} samples at once differs from {b} at a time"
                                             f" ({reshapes} Reshape(s) rewritten)")
    return Batching(free, b, True)
