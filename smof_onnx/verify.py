"""The ONNX Runtime equivalence gate, and latency measured honestly (design 3 and 8).

Gate (:func:`verify_equivalent`): the reference and the candidate run under ONNX
Runtime on the same inputs -- ``n_random`` random feeds (standard normal floats;
symbolic batch dims take ``batch``, other symbolic dims come from
``input_shapes``) plus the first batches of the calibration data when given --
and every output must satisfy ``max|a - b| / max|a| <= tol``. Both sessions run
with graph optimisations *disabled*: the gate asks whether our rewrite changed the
maths, and ORT's fusions (Conv+Add, MatMul+Add, layout changes) reorder float sums
differently in the two graphs, which would add noise unrelated to the cut right at
the 1e-5 threshold. NaN must sit in the same places in both; integer and bool
outputs must be equal. The interface (input and output names, dtypes, shapes) must
be unchanged too.

Timing (:func:`measure_latency`, :func:`compare_latency`): ORT's default
optimisations (what a deployment runs), ``session.intra_op.allow_spinning = "0"``
on every session so idle threads of one session do not steal the cores of the
other, pinned ``intra_op_num_threads``, a warm-up, the order of the models
alternated every iteration, medians over a fixed time budget, and a second session
of the first model timed the same way so the self-vs-self ratio (should read
1.00 +- 0.03) shows how far the machine can be trusted.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from smof_onnx.passes import graph as pgraph

from .errors import ModelError, VerificationError

_ORT_ERRORS = tuple({RuntimeError, *(v for v in vars(_ort_state).values()
                                      if isinstance(v, type) and issubclass(v, Exception))})

_NP_TYPES = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.BOOL: np.bool_,
}


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    max_rel_err: float
    inputs: int
    ok: bool
    per_output: dict[str, float]
    tol: float = 1e-5  # the threshold applied: max(base tolerance, NOISE_FACTOR x noise_floor)
    noise_floor: float = 0.0  # the reference's own float32 noise (see verify_equivalent)

    def to_dict(self) -> dict[str, Any]:
        return {"max_rel_err": self.max_rel_err, "inputs": self.inputs, "ok": self.ok,
                "tol": self.tol, "noise_floor": self.noise_floor, "per_output": dict(self.per_output)}


# How far above the reference's own float32 noise a candidate may be (see verify_equivalent).
NOISE_FACTOR = 4.0


@dataclasses.dataclass(frozen=True)
class Latency:
    median_ms: float
    runs: int
    threads: int
    batch: int


@dataclasses.dataclass(frozen=True)
class LatencyComparison:
    a: Latency
    b: Latency
    self_ratio: float  # a vs a second session of a: the noise floor of this machine

    @property
    def speedup(self) -> float:
        return self.a.median_ms / self.b.median_ms

    def to_dict(self) -> dict[str, Any]:
        return {"before": self.a.median_ms, "after": self.b.median_ms, "speedup": self.speedup,
                "threads": self.a.threads, "batch": self.a.batch, "self_ratio": self.self_ratio,
                "runs": [self.a.runs, self.b.runs]}

    def line(self, names: Sequence[str] = ("A", "B")) -> str:
        return (f"{names[0]} {self.a.median_ms:.3f} ms | {names[1]} {self.b.median_ms:.3f} ms | "
                f"speedup {self.speedup:.2f}x | self-vs-self {self.self_ratio:.2f} "
                f"(threads {self.a.threads}, batch {self.a.batch}, {self.a.runs}/{self.b.runs} runs)")


# --- the gate ----------------------------------------------------------------------------------

def interface_changes(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> list[str]:
    """How the candidate's graph inputs / outputs differ from the reference's (names, dtypes, shapes)."""
    def sig(values, skip=()):
        return [(v.name, v.type.tensor_type.elem_type,
                 tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                       for d in v.type.tensor_type.shape.dim)) for v in values if v.name not in skip]
    changes = []
    for kind in ("input", "output"):
        skip = ({i.name for i in reference.graph.initializer} | {i.name for i in candidate.graph.initializer}
                if kind == "input" else set())
        a, b = sig(getattr(reference.graph, kind), skip), sig(getattr(candidate.graph, kind), skip)
        if a != b:
            changes.append(f"graph {kind}s changed from {a} to {b}")
    return changes


def verify_equivalent(reference: onnx.ModelProto, candidate: onnx.ModelProto,
                      input_shapes: Mapping[str, Sequence[int]] | None = None,
                      data: Mapping[str, np.ndarray] | Any | None = None, n_random: int = 2, batch: int = 2,
                      tol: float = 1e-5, seed: int = 0, n_data_batches: int = 2,
                      progress: Callable[[int, int], None] | None = None) -> VerifyResult:
    """Run both models on the same feeds; ``ok`` when every output's relative error is <= ``tol``.

    The error of an output is max|a-b| / max|a|. An output that both models compute by the same
    bounded op (Sigmoid, Softmax, HardSigmoid; :func:`bounded_arguments`) is compared at that
    op's *argument* (the logits): these ops are 1-Lipschitz, so an exact argument means an exact
    output, while the squashing turns float32 rounding of large logits into a large relative
    error of the output (PP-OCR det on rendered pages at 256x256: logits in [-135, 103] agree
    within 2.2e-6 relative after a cut with nothing removed, the probabilities within 7e-5, more
    than ONNX Runtime's own optimised-vs-unoptimised difference of 1.2e-5). Other outputs of a
    bounded op are measured against their range [0, 1]: see :func:`output_scale_floors`.

    ``data``: a dict of arrays keyed by input name (or an object with ``.inputs``); its first
    ``n_data_batches`` batches of ``batch`` samples are used besides the random feeds.

    **Noise floor.** An exact rewrite in real arithmetic is not bit-exact in float32 once it
    changes the order of a sum: folding input-independent channels into a bias (PP-OCR rec's
    constant channels after its scalar affines) adds their contribution before the other terms
    instead of among them. Deep models amplify such rounding: PP-OCRv4 rec's output moves by
    4.4e-6 relative between ONNX Runtime's optimised and unoptimised runs of the *same* model. So
    the reference is also run with ORT's optimisations on (other kernels and fusions: another
    summation order), its error against itself measured the same way is the model's
    ``noise_floor``, and the threshold is ``max(tol, NOISE_FACTOR x noise_floor)``. For the zoo
    models the floor is ~1e-7 and the threshold stays ``tol``; a real change of the maths (a
    wrong cut) moves outputs by orders of magnitude more than either.
    """
    feeds = [random_feeds(reference, input_shapes, seed=seed + i, batch=batch) for i in range(n_random)]
    feeds += data_feeds(reference, data, batch=batch, n_batches=n_data_batches)
    args_ref, args_cand = bounded_arguments(reference), bounded_arguments(candidate)
    args = {n: (args_ref[n][0], args_cand[n][0]) for n in args_ref
            if n in args_cand and args_ref[n][1] == args_cand[n][1]}
    exposed_ref = _expose(reference, {n: a for n, (a, _) in args.items()})
    with _session(exposed_ref, optimize=False) as ref, _session(exposed_ref, optimize=True) as ref_opt, \
            _session(_expose(candidate, {n: b for n, (_, b) in args.items()}), optimize=False,
                     role="candidate") as cand:
        names = [o.name for o in reference.graph.output]
        fetch_ref = names + [a for a, _ in args.values()]
        fetch_cand = names + [b for _, b in args.values()]
        per_output = {n: 0.0 for n in names}
        noise = 0.0
        floors = output_scale_floors(reference)

        def err(n: str, x: dict, y: dict, y_args: bool) -> float:
            if n in args:
                return rel_err(x[args[n][0]], y[args[n][1] if y_args else args[n][0]])
            return rel_err(x[n], y[n], floors.get(n, 0.0))

        for i, feed in enumerate(feeds):
            a = dict(zip(fetch_ref, _run(ref, fetch_ref, feed, "reference")))
            a_opt = dict(zip(fetch_ref, _run(ref_opt, fetch_ref, feed, "reference")))
            b = dict(zip(fetch_cand, _run(cand, fetch_cand, feed, "candidate")))
            for n in names:
                per_output[n] = max(per_output[n], err(n, a, b, True))
                noise = max(noise, err(n, a, a_opt, False))
            if progress:
                progress(i + 1, len(feeds))
    worst = max(per_output.values(), default=0.0)
    noise = noise if np.isfinite(noise) else 0.0
    threshold = max(tol, NOISE_FACTOR * noise)
    return VerifyResult(max_rel_err=worst, inputs=len(feeds), ok=bool(worst <= threshold), per_output=per_output,
                        tol=threshold, noise_floor=noise)


def _run(sess: ort.InferenceSession, names: list[str], feed: dict, role: str) -> list[np.ndarray]:
    try:
        return sess.run(names, feed)
    except _ORT_ERRORS as exc:
        raise _failure(role, "run", exc) from exc


def _failure(role: str, what: str, exc: BaseException) -> Exception:
    """A reference ORT cannot load/run is bad input (ModelError); a candidate is a failed gate."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if role == "reference":
        return ModelError(f"ONNX Runtime cannot {what} the input model ({msg}); the verification gate needs it "
                          "to run on the CPU execution provider")
    return VerificationError(f"ONNX Runtime cannot {what} the cut model ({msg}); nothing was written")


# Ops whose output lies in [0, 1] whatever the input, and ops that only move or copy values.
_UNIT_RANGE_OPS = frozenset({"Sigmoid", "Softmax", "HardSigmoid"})
_VALUE_PRESERVING_OPS = frozenset({"Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten",
                                   "Concat", "Slice", "Split", "Gather", "Resize", "MaxPool", "Cast"})


def output_scale_floors(model: onnx.ModelProto) -> dict[str, float]:
    """Per graph output, the smallest scale its relative error is measured against.

    An output produced by Sigmoid / Softmax / HardSigmoid (possibly through reshapes) has the
    natural range [0, 1]. On random inputs such outputs often saturate near 0 (a text
    detector's probability map on noise is ~1e-6 everywhere) where float32 activation kernels
    have ~1e-7 absolute error, so max|a| would turn harmless rounding into a 5% "relative"
    error. Measuring against the range (max(max|a|, 1)) keeps the 1e-5 bound meaningful.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    floors = {}
    for out in model.graph.output:
        node, floor = producers.get(out.name), 0.0
        while node is not None:
            if node.op_type in _UNIT_RANGE_OPS:
                floor = 1.0
                break
            if node.op_type not in _VALUE_PRESERVING_OPS or not node.input:
                break
            node = producers.get(node.input[0])
        floors[out.name] = floor
    return floors


def bounded_arguments(model: onnx.ModelProto) -> dict[str, tuple[str, tuple]]:
    """Graph output -> (the input tensor of the Sigmoid / Softmax / HardSigmoid that produces it,
    that op's signature: type and attributes). Directly produced outputs only; an output behind
    reshapes is left to :func:`output_scale_floors`. The gate compares arguments only where both
    models' signatures agree, i.e. both apply the same function to them."""
    producers = {o: n for n in model.graph.node for o in n.output}
    consts = {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input}
    out = {}
    for o in model.graph.output:
        node = producers.get(o.name)
        if node is not None and node.op_type in _UNIT_RANGE_OPS and node.input and node.input[0] not in consts:
            signature = (node.domain or "", node.op_type,
                         tuple(sorted(a.SerializeToString() for a in node.attribute)))
            out[o.name] = (node.input[0], signature)
    return out


def _expose(model: onnx.ModelProto, tensors: Mapping[str, str]) -> onnx.ModelProto:
    """``model`` with each ``tensors[output]`` as an extra graph output of that output's type."""
    if not tensors:
        return model
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    types = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    present = {o.name for o in model.graph.output}
    for out, tensor in tensors.items():
        if tensor not in present:
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(tensor, types[out], None))
            present.add(tensor)
    return exposed


def rel_err(a: np.ndarray, b: np.ndarray, scale_floor: float = 0.0) -> float:
    """max|a - b| / max(max|a|, scale_floor) (0 when equal, inf when shapes, NaN positions or
    non-float values differ)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    if not np.issubdtype(a.dtype, np.floating):
        return 0.0 if np.array_equal(a, b) else float("inf")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    nan_a, nan_b = np.isnan(a64), np.isnan(b64)
    if not np.array_equal(nan_a, nan_b):
        return float("inf")
    keep = ~nan_a
    if not keep.any():
        return 0.0
    a64, b64 = a64[keep], b64[keep]
    with np.errstate(invalid="ignore"):
        diff = np.abs(a64 - b64)
    diff[(a64 == b64)] = 0.0  # equal infinities
    if np.isnan(diff).any():
        return float("inf")
    scale = max(float(np.max(np.abs(a64[np.isfinite(a64)]), initial=0.0)), scale_floor, 1e-30)
    return float(np.max(diff) / scale)


def feed_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None,
                batch: int) -> dict[str, list[int]]:
    """Concrete shapes: ``input_shapes`` as given; otherwise declared dims, ``batch`` for a symbolic axis 0."""
    return pgraph.graph_input_shapes(model, input_shapes, default_dim=batch)


def random_feeds(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None,
                 seed: int = 0, batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    types = _input_types(model)
    feeds = {}
    for name, dims in feed_shapes(model, input_shapes, batch).items():
        dtype = types[name]
        if np.issubdtype(dtype, np.floating):
            feeds[name] = np.asarray(rng.standard_normal(dims)).astype(dtype)
        elif dtype == np.bool_:
            feeds[name] = np.asarray(rng.integers(0, 2, dims)).astype(np.bool_)
        else:  # indices / token ids: small non-negative values are valid for most consumers
            feeds[name] = np.asarray(rng.integers(0, 2, dims)).astype(dtype)
    return feeds


def data_feeds(model: onnx.ModelProto, data: Mapping[str, np.ndarray] | Any | None, batch: int = 2,
               n_batches: int = 2) -> list[dict[str, np.ndarray]]:
    """The first ``n_batches`` batches of the calibration data, cast to the inputs' dtypes."""
    if data is None:
        return []
    arrays = getattr(data, "inputs", data)
    types = _input_types(model)
    fixed = _fixed_batch(model)
    # sliced, not read whole: a streamed input (:mod:`smof_onnx.stream`) reads only these batches
    arrays = {k: v if hasattr(v, "shape") else np.asarray(v) for k, v in arrays.items() if k in types}
    if not arrays:
        return []
    n = min(len(v) for v in arrays.values())
    out = []
    start = 0
    while start < n and len(out) < n_batches:
        size = fixed or batch
        if start + size > n:
            break
        out.append({k: v[start:start + size].astype(types[k], copy=False) for k, v in arrays.items()})
        start += size
    return out


def _input_types(model: onnx.ModelProto) -> dict[str, type]:
    inits = {i.name for i in model.graph.initializer}
    return {i.name: _NP_TYPES.get(i.type.tensor_type.elem_type, np.float32)
            for i in model.graph.input if i.name not in inits}


def _fixed_batch(model: onnx.ModelProto) -> int | None:
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if inp.name not in inits and dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
    return None


class _session:
    """An ORT session as a context manager; models too large for one protobuf go through a file."""

    def __init__(self, model: onnx.ModelProto, optimize: bool, threads: int = 1, spin: bool = False,
                 role: str = "reference"):
        self.model, self.optimize, self.threads, self.spin, self.role = model, optimize, threads, spin, role
        self.tmpdir: str | None = None

    def __enter__(self) -> ort.InferenceSession:
        try:
            return self._open()
        except _ORT_ERRORS as exc:
            self.__exit__()
            raise _failure(self.role, "load", exc) from exc

    def _open(self) -> ort.InferenceSession:
        opts = session_options(self.optimize, self.threads, self.spin)
        if pgraph.model_size(self.model) > pgraph.PROTOBUF_LIMIT - (64 << 20):
            self.tmpdir = tempfile.mkdtemp(prefix="smof-verify-")
            path = pgraph.save_model(self.model, Path(self.tmpdir) / "model.onnx", external_data=True)
            return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return ort.InferenceSession(self.model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def __exit__(self, *exc) -> None:
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def session_options(optimize: bool, threads: int = 1, spin: bool = False) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
    return opts


# --- timing ------------------------------------------------------------------------------------

def measure_latency(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None,
                    threads: int = 2, batch: int = 1, budget_s: float = 3.0, warmup: int = 3,
                    seed: int = 0, progress: Callable[[float], None] | None = None) -> Latency:
    """Median latency (ms) of one model over ``budget_s`` seconds after ``warmup`` runs."""
    feed = random_feeds(model, input_shapes, seed=seed, batch=batch)
    with _session(model, optimize=True, threads=threads) as sess:
        times = _timed_rotation([sess], [feed], budget_s, warmup, progress)[0]
    return Latency(statistics.median(times), len(times), threads, _batch_of(feed, batch))


def compare_latency(a: onnx.ModelProto, b: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None,
                    threads: int = 2, batch: int = 1, budget_s: float = 6.0, warmup: int = 3,
                    seed: int = 0, progress: Callable[[float], None] | None = None) -> LatencyComparison:
    """Latency of ``a`` and ``b`` side by side, plus ``a`` against a second session of itself.

    The three sessions run in turn, in a rotated order every iteration (a b a' / b a' a /
    a' a b ...), so none always runs first on a warm cache, within one shared time budget.
    """
    feed_a = random_feeds(a, input_shapes, seed=seed, batch=batch)
    feed_b = random_feeds(b, input_shapes, seed=seed, batch=batch)
    with _session(a, True, threads) as sa, _session(b, True, threads) as sb, _session(a, True, threads) as sa2:
        ta, tb, ta2 = _timed_rotation([sa, sb, sa2], [feed_a, feed_b, feed_a], budget_s, warmup, progress)
    la = Latency(statistics.median(ta), len(ta), threads, _batch_of(feed_a, batch))
    lb = Latency(statistics.median(tb), len(tb), threads, _batch_of(feed_b, batch))
    return LatencyComparison(la, lb, self_ratio=la.median_ms / statistics.median(ta2))


def _timed_rotation(sessions: list[ort.InferenceSession], feeds: list[dict], budget_s: float,
                    warmup: int, progress: Callable[[float], None] | None = None) -> list[list[float]]:
    outputs = [[o.name for o in s.get_outputs()] for s in sessions]
    for _ in range(max(warmup, 1)):
        for s, f, o in zip(sessions, feeds, outputs):
            s.run(o, f)
    times: list[list[float]] = [[] for _ in sessions]
    k = len(sessions)
    start = time.perf_counter()
    it = 0
    # At least 5 timed runs each, so a huge model on a tiny budget still gets a median.
    while it < 5 or time.perf_counter() - start < budget_s:
        for j in range(k):
            i = (it + j) % k
            t0 = time.perf_counter()
            sessions[i].run(outputs[i], feeds[i])
            times[i].append((time.perf_counter() - t0) * 1e3)
        it += 1
        if progress:
            progress((time.perf_counter() - start) / budget_s)
    return times


def _batch_of(feed: dict[str, np.ndarray], default: int) -> int:
    for v in feed.values():
        if v.ndim:
            return int(v.shape[0])
    return default


def threads_available() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
