"""The predicted ONNX Runtime latency of the would-be cut model as a function of the gates.

Built from a measured :class:`~smof_onnx.learn.latency.LatencyTable` (one row per Conv, at
``bench_batch``) and the layer terms of the FLOPs budget (:mod:`.budget`), which already
know, per layer, the kernel gates of each axis and the gate of each input / output channel.
For binary, nested gates ``e`` (:meth:`GateSpace.effective`)::

    ms(e) = other + sum_conv table(conv, kernel(e), cin(e), cout(e))

- ``kernel(e)`` on axis a: ``k_a - 2 L_a + 2 sum_j e_{a,j}`` (the kept rings), a kernel the
  table measured exactly; ``cin`` / ``cout``: the kept channels of the input / output tensor
  (ungated channels always count), interpolated between the table's channel grid points;
- ``other``: the whole model's measured time minus the convs' table time at full size (the
  work outside the convs, taken as constant; 0 when noise makes it negative).
``ratio(e) = ms(e) / ms(ones)``. The table is *not* monotone (a count that is not a multiple
of the SIMD width can run slower than the full layer), so the selection meets the target on
this prediction directly, and gate costs are finite differences of it (:meth:`costs`), not
derivatives. Torch-free.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import onnx

from ..selection.gates import GateSpace
from .latency import LatencyConfig, LatencyTable, measure_table

__all__ = ["LatencyBudget", "build_latency_budget", "DEFAULT_THREADS"]

DEFAULT_THREADS = 2
DOMINATED_TOLERANCE = 0.03  # a larger count must be faster by this share of the family's layers' time (noise)


@dataclasses.dataclass(frozen=True)
class _Layer:
    name: str
    kernel: tuple[int, ...]
    axes: tuple[tuple[int, tuple[int, ...]], ...]   # (axis, gate indices outer -> inner)
    in_idx: np.ndarray
    out_idx: np.ndarray
    depthwise: bool


class LatencyBudget:
    """``ms(e)`` / ``ratio(e)`` for binary effective gates ``e`` (numpy, 1-D)."""

    def __init__(self, table: LatencyTable, layers: list[_Layer], n_gates: int):
        self.table = table
        self.layers = layers
        self.n_gates = n_gates
        self._memo: dict[tuple, float] = {}
        full = sum(self._layer_ms(lay, lay.kernel, *self._channels(lay, None)) for lay in layers)
        self.other = max(float(table.meta.get("model_ms", full)) - full, 0.0)
        self.total = self.ms(np.ones(n_gates))

    def _channels(self, lay: _Layer, e: np.ndarray | None) -> tuple[int, int]:
        def kept(idx: np.ndarray) -> int:
            if e is None:
                return len(idx)
            return int((idx < 0).sum() + np.round(e[idx[idx >= 0]]).sum())

        cout = kept(lay.out_idx)
        return (cout if lay.depthwise else kept(lay.in_idx)), cout

    def _layer_ms(self, lay: _Layer, kernel: tuple[int, ...], cin: int, cout: int) -> float:
        key = (lay.name, kernel, cin, cout)
        if key not in self._memo:
            row = self.table.layers[lay.name]
            # the table's channel axes count the real tensor; a term without channel gates has
            # one placeholder index, so read the full counts from the table there
            cin = row["full"][0] if len(lay.in_idx) == 1 and lay.in_idx[0] < 0 else cin
            cout = row["full"][1] if len(lay.out_idx) == 1 and lay.out_idx[0] < 0 else cout
            self._memo[key] = self.table.layer_ms(lay.name, kernel, cin, cout)
        return self._memo[key]

    def ms(self, e: np.ndarray) -> float:
        e = np.asarray(e, np.float64)
        total = self.other
        for lay in self.layers:
            kernel = list(lay.kernel)
            for a, idx in lay.axes:
                kernel[a] = kernel[a] - 2 * len(idx) + 2 * int(np.round(e[list(idx)]).sum())
            total += self._layer_ms(lay, tuple(kernel), *self._channels(lay, e))
        return total

    def ratio(self, e: np.ndarray) -> float:
        return self.ms(e) / self.total

    def costs(self, space: GateSpace) -> np.ndarray:
        """Latency fraction saved per gate, from all gates kept: a ring level drops with every
        ring outside it; a channel gate is charged its share of the saving of halving its
        family (to the nearest allowed count), a secant over the table's non-monotone steps."""
        ones = np.ones(space.size)
        out = np.zeros(space.size)
        for i in range(len(space.kernel)):
            h = ones.copy()
            h[i] = 0.0
            out[i] = 1.0 - self.ratio(space.effective(h))
        for fam in space.families:
            n = len(fam.gates)
            allowed = [a for a in fam.allowed() if a < n]
            if not allowed:
                continue
            keep = min(allowed, key=lambda a: (abs(a - n / 2), a))
            h = ones.copy()
            h[list(fam.gates[keep:])] = 0.0
            out[list(fam.gates)] = (1.0 - self.ratio(space.effective(h))) / (n - keep)
        return out


    def layer_ms(self, e: np.ndarray) -> dict[str, float]:
        """Predicted milliseconds per timed conv for binary effective gates ``e``."""
        e = np.asarray(e, np.float64)
        out = {}
        for lay in self.layers:
            kernel = list(lay.kernel)
            for a, idx in lay.axes:
                kernel[a] = kernel[a] - 2 * len(idx) + 2 * int(np.round(e[list(idx)]).sum())
            out[lay.name] = self._layer_ms(lay, tuple(kernel), *self._channels(lay, e))
        return out

    def dominated_counts(self, space: GateSpace, tolerance: float = DOMINATED_TOLERANCE) -> dict[int, tuple[int, ...]]:
        """Family id -> the allowed kept counts (gated slots) the table predicts run slower than
        some larger allowed count of the same family, every other gate kept: counts the runtime's
        blocking punishes, which a selection should never choose (keeping more would be faster
        and more accurate). "Slower" means by more than ``tolerance`` of the time of the layers
        the family touches (timing noise must not remove counts)."""
        ones = np.ones(space.size)
        full = self.layer_ms(space.effective(ones))
        out = {}
        for fam in space.families:
            allowed = fam.allowed()
            ms, touched = {}, set()
            for k in allowed:
                h = ones.copy()
                h[list(fam.gates[k:])] = 0.0
                layers = self.layer_ms(space.effective(h))
                touched |= {name for name, v in layers.items() if v != full[name]}
                ms[k] = self.ms(space.effective(h))
            margin = tolerance * sum(full[name] for name in touched)
            slow = tuple(k for i, k in enumerate(allowed[:-1]) if min(ms[j] for j in allowed[i + 1:]) < ms[k] - margin)
            if slow:
                out[fam.id] = slow
        return out

    def slower_counts(self, space: GateSpace, h: np.ndarray, tolerance: float = 0.01) -> list[dict]:
        """Channel families that ``h`` leaves at a count the table predicts is not faster than
        the next allowed larger count (more than ``tolerance`` of the model's time would not be
        lost by keeping more): the counts the runtime's blocking punishes."""
        out = []
        base = self.ms(space.effective(h))
        for fam in space.families:
            idx = np.asarray(fam.gates)
            kept = int((h[idx] >= 0.5).sum())
            larger = [a for a in fam.allowed() if a > kept]
            if not larger:
                continue
            g = np.asarray(h, np.float64).copy()
            g[idx[h[idx] < 0.5][:larger[0] - kept]] = 1.0
            ms = self.ms(space.effective(g))
            if ms <= base + tolerance * self.total:
                out.append({"tensors": list(fam.tensors[:3]), "kept": fam.base + kept,
                            "larger": fam.base + larger[0], "ms": round(base, 4), "ms_larger": round(ms, 4)})
        return out


def table_config(space: GateSpace, batch: int, threads: int = DEFAULT_THREADS, budget_s: float = 0.1,
                 cache_dir: str | None = None, runtime: str = "ort") -> LatencyConfig:
    """The grid :func:`build_latency_budget` times: every channel count the gates reach."""
    mult = space.multiple if space.multiple >= 1 else 8  # auto: 8 covers 16
    return LatencyConfig(threads=threads, batch=batch, budget_s=budget_s, channel_multiple=mult,
                         channel_fractions=tuple(np.arange(2, 9) / 8), cache_dir=cache_dir, runtime=runtime)


def build_latency_budget(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], terms, space: GateSpace, *,
                         batch: int, threads: int = DEFAULT_THREADS, budget_s: float = 0.1,
                         cache_dir: str | None = None, progress=None, runtime: str = "ort") -> LatencyBudget:
    """Measure (or load the cached) table of ``model`` at ``batch`` and wrap it as a budget.

    ``runtime``: where the table is timed (:data:`smof_onnx.export.runtimes.RUNTIMES`).
    ``terms``: the :class:`~smof_onnx.selection.budget.LayerTerm` list of the FLOPs budget of the
    same canonical model. The channel grid holds every count the gates can reach (multiples of
    ``space.multiple``, 8 for the auto rule, from a quarter of the layer up), so the odd-count slow-downs are measured,
    not interpolated over.
    """
    bench = {k: [batch, *list(v)[1:]] for k, v in shapes.items()}
    table = measure_table(model, bench, table_config(space, batch, threads, budget_s, cache_dir, runtime),
                          progress=progress)
    weight_of = {n.name: n.input[1] for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 1}
    layers = []
    for t in terms:
        if t.op != "Conv" or t.name not in table.layers or t.name not in weight_of:
            continue
        kernel = tuple(int(k) for k in table.layers[t.name]["kernels"][0])
        w = weight_of[t.name]
        axes = tuple((a, tuple(space.axes[(w, a)])) for a in range(len(kernel)) if (w, a) in space.axes)
        layers.append(_Layer(t.name, kernel, axes, t.in_idx, t.out_idx, t.depthwise))
    return LatencyBudget(table, layers, space.size)
