"""Streaming feature statistics of weighted layers, collected with ONNX Runtime.

What training-free pruning (:mod:`smof_onnx.methods.qr`) needs about a consumer layer ``L``
is its *im2col* view: every output position of a ``Conv`` is ``y = W x`` (pre-bias), where
``x`` is the flattened input patch ``[Cin, k_1, .., k_r]`` under that position and ``W`` is the
weight reshaped to ``[Cout, Cin * prod(k)]``. A ``Gemm`` (``transA = 0``, ``alpha = 1``) is the
same with one "position" per row of its input and ``W = B^T`` (or ``B`` when ``transB = 1``).

Rules:
- The inputs of the requested layers are added as extra graph outputs of a *copy* of the
  model; ONNX Runtime runs the copy on the calibration data in batches of ``batch_size``.
- From every batch, a bounded number of output positions is drawn per layer
  (``ceil(max_positions / n_batches)``, uniform over images and spatial positions, without
  replacement). The draw depends only on ``(seed, batch index, layer index)``, so collecting
  again on another version of the model (pruned upstream) samples the *same* positions of
  the same images, which is what reconstruction against the original outputs needs.
- Only sufficient statistics are kept, never the activations: ``xtx = sum x x^T``
  (``D x D``, float64), the sample count, and when ``targets`` are given the cross term
  ``xty = sum x t^T`` against fixed target rows. With ``keep_outputs`` the original output
  rows ``W x`` at the sampled positions are kept (``S x Cout`` float32, ``S <= max_positions``).
  Memory therefore grows with the layer sizes, not with the data set.
- Patches honour kernel size, strides, explicit pads (zero padding), dilations and any
  spatial rank (1-D, 2-D, 3-D). Only ``group == 1`` convs are collected; anything else is
  refused by :func:`layer_site` with a reason (grouped/depthwise consumers are not pruned).

Output rows are computed as ``patches @ W^T`` rather than fetched from the graph: it is the
same number (the conv's pre-bias output) without a second tensor per layer.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from smof_onnx.passes.graph import node_attributes

__all__ = ["LayerSite", "LayerStats", "layer_site", "sample_patches", "collect", "SiteRefused"]


class SiteRefused(Exception):
    """The layer cannot be collected; the message is the reason."""


@dataclasses.dataclass(frozen=True)
class LayerSite:
    """One weighted layer seen as ``y = W x`` over sampled positions."""

    node: str
    op: str                         # "Conv" or "Gemm"
    input: str                      # tensor name of the layer's data input
    weight_name: str                # initializer holding the weight
    weight: np.ndarray              # [Cout, D] float64, D = Cin * prod(kernel) (Gemm: K)
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()      # ONNX order: begins then ends
    dilations: tuple[int, ...] = ()
    transposed_weight: bool = False  # Gemm with transB = 0: the initializer is W^T

    @property
    def cout(self) -> int:
        return int(self.weight.shape[0])

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    @property
    def taps(self) -> int:
        return math.prod(self.kernel) if self.op == "Conv" else 1


@dataclasses.dataclass
class LayerStats:
    """Sufficient statistics of one layer's sampled inputs."""

    xtx: np.ndarray                      # [D, D] float64
    count: int = 0
    xty: np.ndarray | None = None        # [D, Cout] float64, against ``targets``
    outputs: list[np.ndarray] = dataclasses.field(default_factory=list)  # per batch [s, Cout] float32

    def output_rows(self) -> np.ndarray:
        return np.concatenate(self.outputs) if self.outputs else np.zeros((0, 0), np.float32)


def layer_site(model: onnx.ModelProto, node: onnx.NodeProto) -> LayerSite:
    """The :class:`LayerSite` of ``node`` or :class:`SiteRefused` saying why not."""
    inits = {i.name: i for i in model.graph.initializer}
    attrs = node_attributes(node)
    name = node.name
    if len(node.input) < 2 or node.input[1] not in inits:
        raise SiteRefused(f"{name}: weight is not an initializer")
    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
    if node.op_type == "Conv":
        if int(attrs.get("group", 1)) != 1:
            raise SiteRefused(f"{name}: grouped/depthwise conv (group={attrs['group']}) is not pruned by QR")
        auto_pad = attrs.get("auto_pad", "NOTSET")
        if auto_pad not in ("NOTSET", ""):
            raise SiteRefused(f"{name}: auto_pad={auto_pad}; run the canonical passes first (explicit pads)")
        kernel = tuple(int(k) for k in w.shape[2:])
        r = len(kernel)
        return LayerSite(name, "Conv", node.input[0], node.input[1], w.reshape(w.shape[0], -1), kernel,
                         tuple(attrs.get("strides", [1] * r)), tuple(attrs.get("pads", [0] * 2 * r)),
                         tuple(attrs.get("dilations", [1] * r)))
    if node.op_type == "Gemm":
        if int(attrs.get("transA", 0)) != 0 or float(attrs.get("alpha", 1.0)) != 1.0:
            raise SiteRefused(f"{name}: Gemm with transA or alpha != 1 is not handled")
        trans_b = int(attrs.get("transB", 0))
        return LayerSite(name, "Gemm", node.input[0], node.input[1], w if trans_b else w.T,
                         transposed_weight=not trans_b)
    raise SiteRefused(f"{name}: {node.op_type} consumers are not handled (Conv and Gemm only)")


def _out_sizes(site: LayerSite, spatial: Sequence[int]) -> list[int]:
    r = len(site.kernel)
    return [(spatial[a] + site.pads[a] + site.pads[a + r] - site.dilations[a] * (site.kernel[a] - 1) - 1)
            // site.strides[a] + 1 for a in range(r)]


def sample_patches(x: np.ndarray, site: LayerSite, rng: np.random.Generator, n_positions: int) -> np.ndarray:
    """``[S, D]`` float32 im2col rows of ``x`` at up to ``n_positions`` random output positions."""
    if site.op == "Gemm":
        x2 = x.reshape(x.shape[0], -1)
        take = rng.choice(x2.shape[0], min(n_positions, x2.shape[0]), replace=False)
        return np.ascontiguousarray(x2[np.sort(take)], dtype=np.float32)
    r = len(site.kernel)
    n, cin = x.shape[:2]
    outs = _out_sizes(site, x.shape[2:])
    total = n * math.prod(outs)
    flat = np.sort(rng.choice(total, min(n_positions, total), replace=False))
    coords = np.unravel_index(flat, (n, *outs))
    pad = [(0, 0), (0, 0)] + [(site.pads[a], site.pads[a + r]) for a in range(r)]
    xp = np.pad(x, pad) if any(site.pads) else x
    s = flat.size
    shape = (s, cin) + site.kernel
    index = [coords[0].reshape((s,) + (1,) * (r + 1)), np.arange(cin).reshape((1, cin) + (1,) * r)]
    for a in range(r):
        pos = coords[1 + a] * site.strides[a]
        taps = np.arange(site.kernel[a]) * site.dilations[a]
        view = [1] * (r + 2)
        view[2 + a] = site.kernel[a]
        index.append(pos.reshape((s,) + (1,) * (r + 1)) + taps.reshape(view))
    patches = xp[tuple(np.broadcast_arrays(*index))]
    assert patches.shape == shape
    return np.ascontiguousarray(patches.reshape(s, -1), dtype=np.float32)


def _session(model: onnx.ModelProto, tensors: Sequence[str], threads: int):
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for t in tensors:
        if t not in existing:
            m.graph.output.append(onnx.ValueInfoProto(name=t))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def n_batches(data: Mapping[str, np.ndarray], batch_size: int) -> int:
    n = len(next(iter(data.values())))
    return max(1, math.ceil(n / batch_size))


def collect(model: onnx.ModelProto, data: Mapping[str, np.ndarray], sites: Sequence[LayerSite], *,
            max_positions: int = 4096, batch_size: int = 64, seed: int = 0,
            targets: Mapping[str, np.ndarray] | None = None, keep_outputs: bool = False,
            site_ids: Sequence[int] | None = None, threads: int = 1) -> dict[str, LayerStats]:
    """Run ``model`` on ``data`` and accumulate :class:`LayerStats` per site (keyed by node name).

    ``site_ids`` (one int per site, default its position) seeds each site's positions, so a
    later call for a subset of the sites samples the same positions. ``targets[node]`` are
    rows ``[S, T]`` in the order this function draws them (e.g. an earlier call's
    ``outputs``); ``xty`` accumulates ``x t^T`` against them.
    """
    if not sites:
        return {}
    ids = list(site_ids) if site_ids is not None else list(range(len(sites)))
    tensors = list(dict.fromkeys(s.input for s in sites))
    sess = _session(model, tensors, threads)
    feeds_names = [i.name for i in sess.get_inputs()]
    missing = [nm for nm in feeds_names if nm not in data]
    if missing:
        raise KeyError(f"calibration data has no array for graph input(s) {missing}; has {sorted(data)}")
    nb = n_batches(data, batch_size)
    per_batch = max(1, math.ceil(max_positions / nb))
    stats = {s.node: LayerStats(np.zeros((s.dim, s.dim))) for s in sites}
    offsets = {s.node: 0 for s in sites}
    for b in range(nb):
        feed = {nm: np.ascontiguousarray(data[nm][b * batch_size:(b + 1) * batch_size]) for nm in feeds_names}
        values = dict(zip(tensors, sess.run(tensors, feed)))
        for site, sid in zip(sites, ids):
            rng = np.random.default_rng([seed, b, sid])
            x = sample_patches(values[site.input], site, rng, per_batch)
            st = stats[site.node]
            x64 = x.astype(np.float64)
            st.xtx += x64.T @ x64
            st.count += x.shape[0]
            if keep_outputs:
                st.outputs.append((x64 @ site.weight.T).astype(np.float32))
            if targets is not None and site.node in targets:
                t = targets[site.node][offsets[site.node]:offsets[site.node] + x.shape[0]]
                if t.shape[0] != x.shape[0]:
                    raise ValueError(f"targets for {site.node} hold fewer rows than the sampled positions; "
                                     "were they collected with the same data, batch size and seed?")
                xty = x64.T @ t.astype(np.float64)
                st.xty = xty if st.xty is None else st.xty + xty
                offsets[site.node] += x.shape[0]
        del values
    return stats
