"""Shared test helpers: run a model under ONNX Runtime and compare outputs exactly.

Every graph-pass test uses these so "exact" means the same thing everywhere:
max |a - b| / max |a| <= 1e-5 over all outputs, float32, random inputs -- or, for a model whose
own float32 rounding is larger than that, 4x that rounding: the error between ONNX Runtime's
optimised and unoptimised runs of the *reference* (another summation order of the same maths).
A rewrite that folds constants into a bias reorders float sums exactly that way (PP-OCR rec:
4.4e-6 between ORT's own two runs of the unchanged model). Computed here independently of
``smof_onnx.verify`` (which applies the same rule in the product's gate).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

REL_TOL = 1e-5


NOISE_FACTOR = 4.0


def session(model: onnx.ModelProto, threads: int = 1, optimize: bool = False) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Graph optimisations are off so ORT runs the graph we wrote, not a rewrite of it (on only to
    # measure the reference's own rounding noise).
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


_NP_TYPES = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.BOOL: np.bool_,
}


def random_inputs(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None = None,
                  seed: int = 0, batch: int = 2) -> dict[str, np.ndarray]:
    """Random feeds for every graph input; symbolic dims: batch for axis 0, else ``shapes``."""
    rng = np.random.default_rng(seed)
    shapes = dict(shapes or {})
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        if inp.name in shapes:
            dims = list(shapes[inp.name])
        else:
            dims = []
            for i, d in enumerate(tt.shape.dim):
                if d.HasField("dim_value") and d.dim_value > 0:
                    dims.append(d.dim_value)
                elif i == 0:
                    dims.append(batch)
                else:
                    raise ValueError(f"input {inp.name} axis {i} is symbolic; pass shapes=")
        dtype = _NP_TYPES[tt.elem_type]
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[inp.name] = rng.integers(0, 2, dims).astype(dtype)
    return feeds


def run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], optimize: bool = False) -> dict[str, np.ndarray]:
    sess = session(model, optimize=optimize)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds))))


def max_rel_err(before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray],
                floors: Mapping[str, float] | None = None) -> float:
    """max |a-b| / max(max|a|, floor) over outputs; floors as the CLI gate uses them
    (smof_onnx.verify.output_scale_floors: 1 for Sigmoid/Softmax outputs, else 0)."""
    floors = floors or {}
    assert set(before) == set(after), f"outputs differ: {sorted(before)} vs {sorted(after)}"
    worst = 0.0
    for name, a in before.items():
        b = after[name]
        assert a.shape == b.shape, f"output {name}: shape {a.shape} became {b.shape}"
        if a.size == 0:
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        # max() ignores NaN, so a NaN/inf that appears or moves must fail explicitly.
        assert np.array_equal(np.isfinite(a64), np.isfinite(b64)), f"output {name}: non-finite values differ"
        a64, b64 = np.where(np.isfinite(a64), a64, 0.0), np.where(np.isfinite(b64), b64, 0.0)
        scale = max(np.max(np.abs(a64)), floors.get(name, 0.0), 1e-30)
        worst = max(worst, float(np.max(np.abs(a64 - b64)) / scale))
    return worst


def assert_equivalent(before: onnx.ModelProto, after: onnx.ModelProto,
                      shapes: Mapping[str, Sequence[int]] | None = None, seeds: Sequence[int] = (0, 1),
                      tol: float = REL_TOL) -> float:
    """Check ``after`` (full checker) and that it computes what ``before`` does; returns the error."""
    from smof_onnx.verify import output_scale_floors

    onnx.checker.check_model(after, full_check=True)
    floors = output_scale_floors(before)
    worst = 0.0
    for seed in seeds:
        feeds = random_inputs(before, shapes, seed=seed)
        reference = run(before, feeds)
        err = max_rel_err(reference, run(after, feeds), floors)
        if err > tol:  # only then is the reference's own rounding worth measuring
            noise = max_rel_err(reference, run(before, feeds, optimize=True), floors)
            assert err <= max(tol, NOISE_FACTOR * noise), \
                f"max rel err {err:.3g} > {tol} and > {NOISE_FACTOR:g} x the model's own rounding {noise:.3g} (seed {seed})"
        worst = max(worst, err)
    return worst


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    for init in model.graph.initializer:
        if init.name == name:
            return onnx.numpy_helper.to_array(init)
    raise KeyError(name)


def conv_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Node name -> weight array of every Conv / ConvTranspose with an initializer weight."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1 and n.input[1] in inits:
            out[n.name] = onnx.numpy_helper.to_array(inits[n.input[1]])
    return out
