"""Per-layer latency table measured with ONNX Runtime (or OpenVINO), for the latency-aware budget.

Rules:
- One table row per Conv: the layer's real input size and batch, each candidate kernel
  (every axis shrunk symmetrically by rings: 3 -> 1, 5 -> 3 -> 1, so 3x3 gives 3x3, 3x1,
  1x3, 1x1) and a grid of channel counts (fractions of the original, rounded to the
  channel multiple). A depthwise conv (group == Cin == Cout) keeps Cin == Cout, so its grid
  has one channel axis.
- Each cell is the median time (at most :data:`MAX_RUNS` runs) of a single-Conv model
  (random weights, pads reduced by the
  cut rule of design 3.1, so the output size is the original's) run on ``config.runtime``
  (:mod:`smof_onnx.export.runtimes`: ONNX Runtime with graph optimisations on, ``allow_spinning = 0``
  and ``threads`` intra-op threads, on the model or its int8 quantization; or OpenVINO's CPU
  plugin, f32, ``threads`` threads).
- ``LatencyTable.predict(choices)`` sums the layers' times: exact for a measured kernel,
  linear interpolation (and extrapolation) between channel grid points. Layers absent from
  ``choices`` count at their original shape. Non-conv work is not in the table: the budget
  reads the table as relative cost.
- Layers of the same geometry (input shape, weight shape, strides, pads, group) share their
  measured cells, so a ResNet stage of identical blocks is timed once.
- ``meta["model_ms"]``: the median time of the whole model at the same batch, so a budget can
  add the work outside the convs (activations, adds, pooling, the classifier) as a constant.
- Tables are cached as JSON in ``$SMOF_CACHE/latency`` (default ``~/.cache/smof-onnx/latency``)
  keyed by the model's bytes, the input shapes, the grid settings and the machine (CPU
  model, thread count, runtime and its version): a table is never reused on another machine or
  runtime.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import platform
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from scipy.interpolate import RegularGridInterpolator

from smof_onnx.passes.graph import node_attributes, with_static_shapes



@dataclasses.dataclass(frozen=True)
class LatencyConfig:
    threads: int = 2
    batch: int | None = None  # None: the batch of ``input_shapes``
    budget_s: float = 0.2  # timed seconds per cell (after warm-up), at least 5 runs
    warmup: int = 2
    channel_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    channel_multiple: int = 1
    cache_dir: str | None = None
    runtime: str = "ort"  # :data:`smof_onnx.export.runtimes.RUNTIMES`


@dataclasses.dataclass(frozen=True)
class ConvSite:
    """A Conv of the model at its static input shape."""

    name: str
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]
    group: int

    @property
    def depthwise(self) -> bool:
        return self.group > 1 and self.group == self.input_shape[1] == self.weight_shape[0]


@dataclasses.dataclass(frozen=True)
class LayerChoice:
    kernel: tuple[int, ...]
    in_channels: int
    out_channels: int


def _explicit_pads(attrs, in_sizes, kernel, strides, dilations) -> list[int]:
    rank = len(kernel)
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        lo, hi = [], []
        for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
            total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            lo.append(small if auto == "SAME_UPPER" else big)
            hi.append(big if auto == "SAME_UPPER" else small)
        return lo + hi
    if auto == "VALID":
        return [0] * (2 * rank)
    return list(attrs.get("pads") or [0] * (2 * rank))


def conv_sites(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> list[ConvSite]:
    """Every Conv with a constant weight, at the shapes ``input_shapes`` imply."""
    shaped = with_static_shapes(model, input_shapes)
    shapes = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
              for v in list(shaped.graph.value_info) + list(shaped.graph.input)}
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            weights[n.output[0]] = tuple(n.attribute[0].t.dims)
    sites = []
    for i, n in enumerate(model.graph.node):
        if n.op_type != "Conv" or n.input[1] not in weights or n.input[0] not in shapes:
            continue
        attrs = node_attributes(n)
        w = weights[n.input[1]]
        rank = len(w) - 2
        strides = tuple(attrs.get("strides") or [1] * rank)
        dilations = tuple(attrs.get("dilations") or [1] * rank)
        x = shapes[n.input[0]]
        if len(x) != rank + 2 or not all(x):
            continue
        pads = _explicit_pads(attrs, x[2:], w[2:], strides, dilations)
        sites.append(ConvSite(n.name or f"#{i}", x, w, strides, dilations, tuple(pads), attrs.get("group", 1)))
    return sites


def _out_area(site: ConvSite) -> int:
    area = 1
    for i, k in enumerate(site.weight_shape[2:]):
        span = site.dilations[i] * (k - 1) + 1
        size = site.input_shape[2 + i] + site.pads[i] + site.pads[i + len(site.weight_shape) - 2]
        area *= max(1, (size - span) // site.strides[i] + 1)
    return area


def cell_bytes(site: ConvSite, batch: int) -> int:
    """Estimated bytes one table cell of ``site`` holds at ``batch`` (the full layer, the largest
    cell): its input and output, the weights and one image's im2col buffer (ONNX Runtime's CPU
    conv unfolds one image at a time for a kernel larger than 1)."""
    cout, cin_g = site.weight_shape[0], site.weight_shape[1]
    out_area = _out_area(site)
    in_area = int(np.prod(site.input_shape[2:]))
    kernel = int(np.prod(site.weight_shape[2:]))
    unfold = cin_g * kernel * out_area if kernel > 1 else 0
    return 4 * (batch * (site.input_shape[1] * in_area + cout * out_area) + unfold + int(np.prod(site.weight_shape)))


def table_peak_bytes(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]], batch: int) -> int:
    """The largest :func:`cell_bytes` of the table of ``model`` measured at ``batch``."""
    return max((cell_bytes(s, batch) for s in conv_sites(model, input_shapes)), default=0)


def kernel_candidates(kernel: Sequence[int]) -> list[tuple[int, ...]]:
    """Kernels reachable by removing whole rings per axis (symmetric): 3 -> 1, 5 -> 3 -> 1."""
    per_axis = [list(range(k, 0, -2)) for k in kernel]
    return [tuple(c) for c in itertools.product(*per_axis)]


def channel_grid(channels: int, fractions: Sequence[float], multiple: int) -> list[int]:
    counts = set()
    for f in fractions:
        c = max(multiple, int(round(f * channels / multiple)) * multiple)
        counts.add(min(c, channels))
    counts.add(channels)
    return sorted(counts)


def micro_conv(site: ConvSite, kernel: Sequence[int], cin: int, cout: int, batch: int) -> tuple[onnx.ModelProto, dict]:
    """A single-Conv model for one table cell and its feed."""
    rank = len(kernel)
    group = cin if site.depthwise else site.group
    lo, hi, sizes = [], [], []
    for i, (k0, k) in enumerate(zip(site.weight_shape[2:], kernel)):
        r = (k0 - k) // 2
        d = site.dilations[i]
        a, b = site.pads[i] - d * r, site.pads[i + rank] - d * r
        # Negative pads mean the cut crops the input instead; time the conv on the crop.
        sizes.append(site.input_shape[2 + i] + min(a, 0) + min(b, 0))
        lo.append(max(a, 0))
        hi.append(max(b, 0))
    rng = np.random.default_rng(0)
    w = rng.standard_normal((cout, cin // group, *kernel)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    x_shape = [batch, cin, *sizes]
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=list(site.strides),
                            dilations=list(site.dilations), pads=lo + hi, group=group)
    graph = helper.make_graph([node], "cell", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return model, {"x": rng.standard_normal(x_shape).astype(np.float32)}


MAX_RUNS = 200  # runs per cell at most: a tiny conv's median is stable long before budget_s


def time_model(model: onnx.ModelProto, feed: dict, threads: int, budget_s: float, warmup: int,
               max_runs: int = MAX_RUNS, runtime: str = "ort") -> float:
    """Median milliseconds of ``model`` on ``feed`` on ``runtime`` (:func:`smof_onnx.export.runtimes.runner`):
    at least 5 runs, then until ``budget_s`` seconds or ``max_runs`` runs."""
    from ..export.runtimes import runner, time_runners

    return time_runners([runner(model, runtime, threads, calibration=feed)], [feed], budget_s, warmup=warmup,
                        max_runs=max_runs)[0]


class LatencyTable:
    """Measured per-layer times; ``predict`` gives the conv time of a choice of shapes."""

    def __init__(self, layers: dict[str, dict], meta: dict):
        self.layers = layers
        self.meta = meta
        self._interp: dict[tuple[str, tuple[int, ...]], RegularGridInterpolator] = {}

    def layer_ms(self, name: str, kernel: Sequence[int], in_channels: int, out_channels: int) -> float:
        row = self.layers[name]
        kernel = tuple(kernel)
        key = (name, kernel)
        if key not in self._interp:
            kernels = [tuple(k) for k in row["kernels"]]
            if kernel not in kernels:
                raise KeyError(f"layer '{name}': kernel {kernel} was not measured; measured: {kernels}")
            ms = np.asarray(row["ms"][kernels.index(kernel)], dtype=np.float64)
            axes = (row["channels"],) if row["depthwise"] else (row["cin"], row["cout"])
            axes = tuple(np.asarray(a, dtype=np.float64) for a in axes)
            if any(len(a) == 1 for a in axes):  # a one-point axis: duplicate it so it interpolates
                axes = tuple(a if len(a) > 1 else np.array([a[0], a[0] + 1.0]) for a in axes)
                for ax, a in enumerate(axes):
                    if ms.shape[ax] == 1:
                        ms = np.repeat(ms, 2, axis=ax)
            self._interp[key] = RegularGridInterpolator(axes, ms, bounds_error=False, fill_value=None)
        point = [out_channels] if row["depthwise"] else [in_channels, out_channels]
        return float(max(self._interp[key](np.asarray([point], dtype=np.float64))[0], 0.0))

    def original(self, name: str) -> LayerChoice:
        row = self.layers[name]
        return LayerChoice(tuple(row["kernels"][0]), row["full"][0], row["full"][1])

    def predict(self, choices: Mapping[str, LayerChoice | tuple] | None = None) -> float:
        """Sum of the conv layers' times (ms); layers not in ``choices`` at their original shape."""
        choices = dict(choices or {})
        unknown = sorted(set(choices) - set(self.layers))
        if unknown:
            raise KeyError(f"no latency row for layers {unknown}")
        total = 0.0
        for name in self.layers:
            c = choices.get(name, self.original(name))
            c = c if isinstance(c, LayerChoice) else LayerChoice(*c)
            total += self.layer_ms(name, c.kernel, c.in_channels, c.out_channels)
        return total

    def to_json(self) -> str:
        return json.dumps({"meta": self.meta, "layers": self.layers}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LatencyTable":
        data = json.loads(text)
        return cls(data["layers"], data["meta"])


def machine_id(threads: int, runtime: str = "ort") -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from ..export.runtimes import version

    out = {"cpu": cpu, "cpu_count": os.cpu_count(), "threads": threads, "onnxruntime": ort.__version__}
    if runtime != "ort":  # ORT tables keep their old keys (and cache entries)
        out.update(runtime=runtime, runtime_version=version(runtime))
    return out


def cache_dir(config: LatencyConfig) -> Path:
    if config.cache_dir:
        return Path(config.cache_dir)
    root = os.environ.get("SMOF_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "smof-onnx") / "latency"


def _cache_key(model: onnx.ModelProto, input_shapes, config: LatencyConfig) -> tuple[str, dict]:
    machine = machine_id(config.threads, config.runtime)
    h = hashlib.sha256(model.SerializeToString(deterministic=True))
    settings = {"shapes": {k: list(v) for k, v in sorted(input_shapes.items())}, "batch": config.batch,
                "fractions": list(config.channel_fractions), "multiple": config.channel_multiple,
                "budget_s": config.budget_s, "max_runs": MAX_RUNS}
    h.update(json.dumps([settings, machine], sort_keys=True).encode())
    return h.hexdigest()[:24], {"machine": machine, "settings": settings}


def _plans(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]], config: LatencyConfig) -> list:
    """(site, table row, cells, batch) of every timed Conv: the grid :func:`measure_table` times."""
    sites = conv_sites(model, input_shapes)
    plans = []
    for site in sites:
        batch = config.batch or site.input_shape[0]
        cout, cin = site.weight_shape[0], site.input_shape[1]
        kernels = kernel_candidates(site.weight_shape[2:])
        mult = max(config.channel_multiple, 1)
        if site.depthwise:
            grid = channel_grid(cout, config.channel_fractions, mult)
            cells = [(k, c, c) for k in kernels for c in grid]
            row = {"depthwise": True, "channels": grid}
        else:
            g = site.group
            m_in, m_out = np.lcm(mult, g), np.lcm(mult, g)
            cins = channel_grid(cin, config.channel_fractions, int(m_in)) if cin % m_in == 0 else [cin]
            couts = channel_grid(cout, config.channel_fractions, int(m_out)) if cout % m_out == 0 else [cout]
            cells = [(k, a, b) for k in kernels for a in cins for b in couts]
            row = {"depthwise": False, "cin": cins, "cout": couts}
        row.update(kernels=[list(k) for k in kernels], full=[cin, cout], batch=batch,
                   input_shape=list(site.input_shape))
        plans.append((site, row, cells, batch))
    return plans


ESTIMATE_MACS_PER_S = 1e10  # a conservative CPU rate for :func:`table_seconds` (2 threads)


def table_seconds(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]],
                  config: LatencyConfig = LatencyConfig()) -> float:
    """Estimated seconds :func:`measure_table` takes without a cache: per distinct cell,
    ``warmup`` runs plus ``max(5 runs, budget_s)`` (at most :data:`MAX_RUNS`), a run taking its
    multiply-adds at :data:`ESTIMATE_MACS_PER_S`."""
    cells = {}
    for site, _, grid, batch in _plans(model, input_shapes, config):
        out_area = _out_area(site)
        for k, a, b in grid:
            group = a if site.depthwise else site.group
            cells[(_geometry(site), k, a, b, batch)] = batch * b * (a // group) * int(np.prod(k)) * out_area
    total = 0.0
    for macs in cells.values():
        run = macs / ESTIMATE_MACS_PER_S
        total += config.warmup * run + min(max(5 * run, config.budget_s), MAX_RUNS * run)
    return total


def is_cached(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]], config: LatencyConfig) -> bool:
    """Whether :func:`measure_table` would read the table from the cache."""
    key, _ = _cache_key(model, input_shapes, config)
    return (cache_dir(config) / f"{key}.json").is_file()


def measure_table(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]],
                  config: LatencyConfig = LatencyConfig(), *, use_cache: bool = True,
                  progress: Callable[[int, int], None] | None = None) -> LatencyTable:
    """Measure (or load from the cache) the latency table of every Conv of ``model``."""
    key, meta = _cache_key(model, input_shapes, config)
    path = cache_dir(config) / f"{key}.json"
    if use_cache and path.is_file():
        try:
            return LatencyTable.from_json(path.read_text())
        except (ValueError, KeyError):
            pass  # a corrupt entry is measured again
    plans = _plans(model, input_shapes, config)
    measured: dict[tuple, float] = {}
    todo = {(_geometry(site), k, a, b, batch): (site, k, a, b, batch) for site, _, cells, batch in plans
            for k, a, b in cells}
    for done, (key_, (site, k, a, b, batch)) in enumerate(todo.items(), 1):
        m, feed = micro_conv(site, k, a, b, batch)
        measured[key_] = time_model(m, feed, config.threads, config.budget_s, config.warmup, MAX_RUNS, config.runtime)
        if progress:
            progress(done, len(todo))
    layers = {}
    for site, row, cells, batch in plans:
        times = {(k, a, b): measured[(_geometry(site), k, a, b, batch)] for k, a, b in cells}
        kernels = [tuple(k) for k in row["kernels"]]
        if row["depthwise"]:
            row["ms"] = [[times[(k, c, c)] for c in row["channels"]] for k in kernels]
        else:
            row["ms"] = [[[times[(k, a, b)] for b in row["cout"]] for a in row["cin"]] for k in kernels]
        layers[site.name] = row
    meta["model_ms"] = _model_ms(model, input_shapes, config)
    table = LatencyTable(layers, meta)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(table.to_json())
        os.replace(tmp, path)
    return table


def _geometry(site: ConvSite) -> tuple:
    return (site.input_shape[1:], site.weight_shape, site.strides, site.dilations, site.pads, site.group)


def _model_ms(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]], config: LatencyConfig) -> float:
    """Median time of the whole model at the table's batch (random float inputs)."""
    from ..verify import random_feeds

    shapes = {k: list(v) for k, v in input_shapes.items()}
    if config.batch is not None:
        shapes = {k: [config.batch, *v[1:]] if v else v for k, v in shapes.items()}
    feed = random_feeds(model, shapes, seed=0)
    return time_model(model, feed, config.threads, max(config.budget_s, 0.5), config.warmup, MAX_RUNS, config.runtime)
