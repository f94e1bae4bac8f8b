"""Hypothesis strategies for zero masks on a canonical model, and applying them.

A mask is a plain tuple, so a failing example reads as its reproducer:

- ``("kernel", node, ((r_lo, r_hi), ...))``: zero the leading r_lo / trailing r_hi slices of
  every spatial axis of the Conv / ConvTranspose weight (all filters, all input channels).
  A ring is (r, r) on every axis: 3x3 -> 1x1, 5x5 -> 3x3; a side pair (1, 1) on one axis
  only: 3x3 -> 3x1 / 1x3; any subset of the four sides is drawn too.
- ``("out", node, (c, ...))``: zero output channels c of a Conv / ConvTranspose / Gemm /
  MatMul: their filters and their bias (on the canonical graph BN is folded in, so this is
  the BN-folded filter). Sometimes every channel: a whole branch goes to zero.
- ``("in", node, (c, ...))``: zero the slices of the weight that read input channel c.
- ``("slot", ((node, c), ...))``: zero every listed producer channel (filter + bias) at once:
  the same channel in every producer of a residual Add group, of an SE gate, of a depthwise
  conv and its producer, across Concat / Split offsets. The lists come from the oracle's
  coupling (:meth:`tests.oracle_structure.Structure.coupled_slots`); a random subset of a slot's
  producers is drawn too (then the slot must stay).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import numpy_helper

from tests.oracle_structure import Structure


@dataclasses.dataclass(frozen=True)
class Site:
    node: str
    op: str
    w: str
    b: str | None
    shape: tuple[int, ...]
    group: int
    trans_b: bool = False

    @property
    def n_out(self) -> int:
        if self.op == "Conv":
            return self.shape[0]
        if self.op == "ConvTranspose":
            return self.shape[1] * self.group
        if self.op == "Gemm":
            return self.shape[0] if self.trans_b else self.shape[1]
        return self.shape[1]  # MatMul

    @property
    def n_in(self) -> int:
        if self.op == "Conv":
            return self.shape[1] * self.group
        if self.op == "ConvTranspose":
            return self.shape[0]
        if self.op == "Gemm":
            return self.shape[1] if self.trans_b else self.shape[0]
        return self.shape[0]


@dataclasses.dataclass(frozen=True)
class Sites:
    weighted: tuple[Site, ...]
    slots: tuple[tuple[tuple[str, int], ...], ...]

    @property
    def kernels(self) -> tuple[Site, ...]:
        return tuple(s for s in self.weighted if s.op in ("Conv", "ConvTranspose") and max(s.shape[2:]) > 1)

    @property
    def dense_in(self) -> tuple[Site, ...]:
        return tuple(s for s in self.weighted if s.group == 1)


def sites(model: onnx.ModelProto, structure: Structure) -> Sites:
    inits = {i.name for i in model.graph.initializer}
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        if n.input[1] not in inits or any(i and i not in inits for i in n.input[2:]):
            continue
        if n.op_type == "MatMul" and len(shapes[n.input[1]]) != 2:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Gemm" and attrs.get("transA", 0):
            continue
        bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
        out.append(Site(n.name, n.op_type, n.input[1], bias, shapes[n.input[1]], attrs.get("group", 1),
                        bool(attrs.get("transB", 0))))
    by_name = {s.node for s in out}
    slots = tuple(tuple(p) for p in structure.coupled_slots() if all(n in by_name for n, _ in p))
    return Sites(tuple(out), slots)


# ------------------------------------------------------------------------ strategies

def _channels(n: int) -> st.SearchStrategy:
    return st.lists(st.integers(0, n - 1), min_size=1, max_size=max(1, (3 * n) // 4), unique=True).map(
        lambda cs: tuple(sorted(cs)))


def kernel_mask(site: Site) -> st.SearchStrategy:
    k = site.shape[2:]
    ring_max = (min(k) - 1) // 2
    # any subset of sides, any depth, never the whole axis: r_lo + r_hi <= k - 1
    sides = st.tuples(*[st.integers(0, ki - 1).flatmap(
        lambda lo, ki=ki: st.tuples(st.just(lo), st.integers(0, ki - 1 - lo))) for ki in k])
    one_axis = st.integers(0, len(k) - 1).map(
        lambda ax: tuple((1, 1) if i == ax and k[i] >= 3 else (0, 0) for i in range(len(k))))
    options = [sides, one_axis]
    if ring_max >= 1:
        options.insert(0, st.integers(1, ring_max).map(lambda r: tuple((r, r) for _ in k)))
    return st.one_of(*options).map(lambda rs: ("kernel", site.node, rs))


def mask(s: Sites) -> st.SearchStrategy:
    options = []
    if s.kernels:
        options.append(st.sampled_from(s.kernels).flatmap(kernel_mask))
    options.append(st.sampled_from(s.weighted).flatmap(
        lambda site: _channels(site.n_out).map(lambda cs: ("out", site.node, cs))))
    # rarely, a whole layer: a residual branch that is entirely zero must disappear
    options.append(st.sampled_from(s.weighted).map(lambda site: ("out", site.node, tuple(range(site.n_out)))))
    if s.dense_in:
        options.append(st.sampled_from(s.dense_in).flatmap(
            lambda site: _channels(site.n_in).map(lambda cs: ("in", site.node, cs))))
    if s.slots:
        whole = st.sampled_from(s.slots).map(lambda p: ("slot", p))
        part = st.sampled_from([p for p in s.slots if len(p) > 1] or list(s.slots)).flatmap(
            lambda p: st.lists(st.sampled_from(p), min_size=1, max_size=len(p), unique=True).map(
                lambda q: ("slot", tuple(q))))
        # whole slots twice as often: they are what makes coupled channels removable
        options += [whole, whole, part]
    return st.one_of(*options)


def masks(s: Sites, min_size: int = 3, max_size: int = 12) -> st.SearchStrategy:
    # unique by site, so even the simplest example hypothesis draws touches several layers
    return st.lists(mask(s), min_size=min_size, max_size=max_size, unique_by=lambda m: (m[0], m[1]))


# ------------------------------------------------------------------------ application

def apply(model: onnx.ModelProto, sites_: Sites, ms: Sequence[tuple]) -> onnx.ModelProto:
    """A copy of ``model`` with every mask in ``ms`` zeroed into its initializers."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    arrays = {i.name: numpy_helper.to_array(i).copy() for i in out.graph.initializer}
    by_node = {s.node: s for s in sites_.weighted}
    touched: set[str] = set()

    def zero_out(site: Site, c: int) -> None:
        w = arrays[site.w]
        if site.op == "Conv":
            w[c] = 0
        elif site.op == "ConvTranspose":
            per = site.shape[1]
            w[(c // per) * (site.shape[0] // site.group):(c // per + 1) * (site.shape[0] // site.group), c % per] = 0
        elif site.op == "Gemm" and site.trans_b:
            w[c] = 0
        else:
            w[:, c] = 0
        touched.add(site.w)
        if site.b is not None:
            b = arrays[site.b]
            if b.ndim >= 1 and b.shape[-1] == site.n_out:
                b[..., c] = 0
                touched.add(site.b)

    def zero_in(site: Site, c: int) -> None:
        w = arrays[site.w]
        if site.op == "Conv":
            w[:, c] = 0
        elif site.op == "Gemm" and site.trans_b:
            w[:, c] = 0
        else:
            w[c] = 0
        touched.add(site.w)

    for m in ms:
        if m[0] == "kernel":
            site = by_node[m[1]]
            w = arrays[site.w]
            for ax, (lo, hi) in enumerate(m[2]):
                idx = [slice(None)] * w.ndim
                idx[2 + ax] = slice(0, lo)
                w[tuple(idx)] = 0
                idx[2 + ax] = slice(w.shape[2 + ax] - hi, None)
                w[tuple(idx)] = 0
            touched.add(site.w)
        elif m[0] == "out":
            for c in m[2]:
                zero_out(by_node[m[1]], c)
        elif m[0] == "in":
            for c in m[2]:
                zero_in(by_node[m[1]], c)
        elif m[0] == "slot":
            for node, c in m[1]:
                zero_out(by_node[node], c)
        else:
            raise ValueError(f"unknown mask {m!r}")
    for init in out.graph.initializer:
        if init.name in touched:
            init.CopyFrom(numpy_helper.from_array(arrays[init.name], init.name))
    return out


def random_masks(s: Sites, rng: np.random.Generator, n: int = 8) -> list[tuple]:
    """A plain-numpy draw of the same mask kinds (for benchmarks and one-off reproducers)."""
    out: list[tuple] = []
    for _ in range(n):
        kind = rng.choice(["kernel", "out", "in", "slot"] if s.slots else ["kernel", "out", "in"])
        if kind == "kernel" and s.kernels:
            site = s.kernels[rng.integers(len(s.kernels))]
            rs = []
            for ki in site.shape[2:]:
                lo = int(rng.integers(0, ki))
                rs.append((lo, int(rng.integers(0, ki - lo))))
            out.append(("kernel", site.node, tuple(rs)))
        elif kind == "slot":
            out.append(("slot", s.slots[rng.integers(len(s.slots))]))
        else:
            pool = s.weighted if kind == "out" else s.dense_in
            site = pool[rng.integers(len(pool))]
            n_ch = site.n_out if kind == "out" else site.n_in
            cs = rng.choice(n_ch, size=max(1, int(rng.integers(1, max(2, n_ch // 2)))), replace=False)
            out.append((kind, site.node, tuple(sorted(int(c) for c in cs))))
    return out
