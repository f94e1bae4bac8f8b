"""The *constant* fact (design 3.2, third fact): channels that do not depend on the input.

const(a) = v
    atom a equals the finite scalar v at every element, for every input. *zero* is the
    case v = 0. Only uniform values are tracked: a channel whose value is input-independent
    but varies over positions (a padded conv or pool of a constant, near the borders) is
    "not constant" here, so no rule below ever needs a static shape.

Forward transfer, one sweep in topological order (exact unless said otherwise):

- weighted producer (Conv, ConvTranspose, Gemm, MatMul) output f: when every input channel
  it reads with a non-zero weight is zero, f is its bias (Conv, ConvTranspose: B[f]; Gemm:
  beta*C[f] when C does not vary over rows; MatMul: 0), padding or not. When some read
  channels are non-zero constants: Conv with zero pads (every output position sees every
  tap inside the image) gives B[f] + sum_c v_c * sum(W[f, c]); Gemm gives
  alpha * sum_k v_k B[k, f] + beta*C[f]; MatMul sum_k v_k B[k, f]; ConvTranspose and a
  padded Conv give "not constant" (the border positions see fewer taps).
- elementwise ops (activations, arithmetic, PRelu, Clip ...): f applied to the operands'
  values, evaluated in float32 with numpy (:data:`_FUNCS`), when every operand is constant
  on that channel: a tracked one by its fact, a constant input when its slice on that
  channel is uniform. Ops without an entry give "not constant".
- BatchNormalization: gamma*(v - mean)/sqrt(var + eps) + beta.
- copies (Concat / Split / Slice on the channel axis, Flatten / Reshape / Transpose /
  Squeeze / Unsqueeze): every output atom is one input atom (its ``flow`` edge), so it
  has that atom's value. Concat along another axis: constant iff every part is the same v.
- pooling: GlobalMaxPool / ReduceMax / ReduceMin over non-channel axes keep v; MaxPool
  keeps v when every window holds a real element (dilation 1, ceil_mode 0, each pad <
  kernel: -inf padding never wins); Resize / Upsample in nearest mode keep v (each output
  is one input element; tf_crop_and_resize excluded); Pad keeps v in edge / reflect mode,
  or in constant mode when the pad value is v.
- averaging is *not* constant-preserving here: the float32 mean of n copies of v (Global /
  AveragePool, ReduceMean, linear Resize) differs from v by up to ~n ulps, and on PP-OCR rec
  that rounding, amplified downstream, moved outputs by 1e-4. LpPool, InstanceNormalization,
  Softmax: "not constant" either (unless zero, by the zero fact).

Non-finite results count as "not constant". The hypothesis of the learning stage (every
producer entry zero) forces producer outputs to 0 and reads an operand that lies in
another slot (a broadcast one-channel tensor) with the real facts, as facts.py does.

Folding (:func:`const_blocked`): a removed constant channel c with v != 0 that a live
filter f of another slot reads with a non-zero weight changes f by a term that does not
depend on the input. The term is folded into f's bias by the consumer's ``fold`` rule
(:mod:`smof_onnx.passes.analysis.rules_weighted`): Conv without pads (v * sum(W[f, c]) at
every position, see above), Gemm (alpha * v * B[c, f] into C), MatMul (v * B[c, f], added
after it). Any other live reader blocks the slot, with a reason naming the value, the op
that made it and the consumer: a padded Conv or a ConvTranspose (the term varies at the
borders), and a broadcast read of a one-channel tensor. A padded grouped (depthwise) Conv
reading the constant inside its own slot is named too when its output is not constant.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from .rulebase import Elementwise
from .rules_weighted import pads_zero
from .spaces import Builder, node_label

F = np.float32
_NAN = np.nan


def _attr(node: gs.Node, name: str, default: float) -> float:
    return float(node.attrs.get(name, default))


def _clip(node: gs.Node, xs: list[np.ndarray]) -> np.ndarray | None:
    lo, hi = node.attrs.get("min", -np.inf), node.attrs.get("max", np.inf)
    for i in (1, 2):
        if i < len(node.inputs) and node.inputs[i].name:
            t = node.inputs[i]
            if not isinstance(t, gs.Constant):
                return None
            v = float(np.asarray(t.values).reshape(-1)[0])
            lo, hi = (v, hi) if i == 1 else (lo, v)
    return np.clip(xs[0], F(lo), F(hi))


def _hs(node, xs):
    a, b = _attr(node, "alpha", 1 / 6), _attr(node, "beta", 0.5)
    return xs[0] * np.clip(F(a) * xs[0] + F(b), F(0), F(1))


def _cast(node, xs):
    to = int(node.attrs.get("to", 1))
    return xs[0] if to in (1, 11) else None  # float / double: the value stays


_FUNCS: dict[str, Callable[[gs.Node, list[np.ndarray]], np.ndarray | None]] = {
    "Relu": lambda n, x: np.maximum(x[0], F(0)),
    "LeakyRelu": lambda n, x: np.where(x[0] < 0, F(_attr(n, "alpha", 0.01)) * x[0], x[0]),
    "PRelu": lambda n, x: np.where(x[0] < 0, x[1] * x[0], x[0]),
    "Elu": lambda n, x: np.where(x[0] < 0, F(_attr(n, "alpha", 1.0)) * (np.exp(x[0]) - F(1)), x[0]),
    "Tanh": lambda n, x: np.tanh(x[0]),
    "Sigmoid": lambda n, x: F(1) / (F(1) + np.exp(-x[0])),
    "HardSigmoid": lambda n, x: np.clip(F(_attr(n, "alpha", 0.2)) * x[0] + F(_attr(n, "beta", 0.5)), F(0), F(1)),
    "HardSwish": _hs,
    "Softsign": lambda n, x: x[0] / (F(1) + np.abs(x[0])),
    "Softplus": lambda n, x: np.log1p(np.exp(x[0])),
    "Exp": lambda n, x: np.exp(x[0]), "Log": lambda n, x: np.log(x[0]),
    "Abs": lambda n, x: np.abs(x[0]), "Neg": lambda n, x: -x[0], "Sqrt": lambda n, x: np.sqrt(x[0]),
    "Sign": lambda n, x: np.sign(x[0]), "Floor": lambda n, x: np.floor(x[0]),
    "Ceil": lambda n, x: np.ceil(x[0]), "Round": lambda n, x: np.round(x[0]),
    "Sin": lambda n, x: np.sin(x[0]), "Cos": lambda n, x: np.cos(x[0]), "Atan": lambda n, x: np.arctan(x[0]),
    "Reciprocal": lambda n, x: F(1) / x[0],
    "Identity": lambda n, x: x[0], "Dropout": lambda n, x: x[0], "Cast": _cast,
    "Clip": _clip,
    "Add": lambda n, x: x[0] + x[1], "Sub": lambda n, x: x[0] - x[1], "Mul": lambda n, x: x[0] * x[1],
    "Div": lambda n, x: x[0] / x[1],
    "Sum": lambda n, x: np.sum(x, axis=0, dtype=F), "Mean": lambda n, x: np.mean(x, axis=0, dtype=F),
    "Max": lambda n, x: np.max(x, axis=0), "Min": lambda n, x: np.min(x, axis=0),
}
_COPIES = frozenset({"Split", "Slice", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
                     "GlobalMaxPool", "ReduceMax", "ReduceMin"})


def _pool_keeps(node: gs.Node) -> bool:
    """Whether a MaxPool / AveragePool / Resize / Upsample of a uniform v is v (module docstring)."""
    op = node.op
    if op in ("Resize", "Upsample"):
        mode = node.attrs.get("mode", "nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        ctm = node.attrs.get("coordinate_transformation_mode", "half_pixel")
        ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
        return mode == "nearest" and ctm != "tf_crop_and_resize"
    pads = [int(p) for p in node.attrs.get("pads", ())]
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    ceil = int(node.attrs.get("ceil_mode", 0))
    if op == "MaxPool":
        k = [int(v) for v in node.attrs.get("kernel_shape", ())]
        dil = [int(v) for v in node.attrs.get("dilations", [1] * len(k))]
        n = len(k)
        pads = pads or [0] * 2 * n
        return (auto in ("NOTSET", "VALID") and not ceil and all(d == 1 for d in dil)
                and all(pads[i] < k[i] and pads[n + i] < k[i] for i in range(n)))
    return False


def _pad_keeps(node: gs.Node, v: np.ndarray) -> np.ndarray:
    mode = node.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        return np.ones(v.shape, bool)
    value = float(node.attrs.get("value", 0.0))
    if len(node.inputs) > 2 and node.inputs[2].name:
        t = node.inputs[2]
        if not isinstance(t, gs.Constant):
            return np.zeros(v.shape, bool)
        value = float(np.asarray(t.values).reshape(-1)[0])
    return v == F(value)


class ConstSweep:
    """One forward sweep of the constant fact (see the module docstring)."""

    def __init__(self, b: Builder, zero: np.ndarray, hyp: np.ndarray | None = None,
                 real: tuple[np.ndarray, np.ndarray] | None = None):
        self.b, self.zero, self.hyp = b, zero, hyp
        self.real = real  # (slot label per atom, real constant values) for cross-slot reads
        self.v = np.full(b.n_atoms, _NAN)
        self.v[zero] = 0.0

    def vals(self, tensor: gs.Tensor) -> np.ndarray | None:
        sp = self.b.space(tensor)
        return None if sp is None else self.v[sp.base:sp.base + sp.size]

    def set(self, tensor: gs.Tensor, values: np.ndarray) -> None:
        sp = self.b.space(tensor)
        if sp is None:
            return
        vals = np.broadcast_to(np.asarray(values, np.float64), (sp.size,))
        sl = slice(sp.base, sp.base + sp.size)
        keep = self.zero[sl]
        self.v[sl] = np.where(keep, 0.0, np.where(np.isfinite(vals), vals, _NAN))

    def run(self, nodes: Sequence[gs.Node], rules: dict) -> np.ndarray:
        for node in nodes:
            outs = [self.b.space(o) for o in node.outputs]
            if any(sp is not None for sp in outs) and (node.domain or "") in ("", "ai.onnx") and node.op in rules:
                self.node(node)
            if self.hyp is not None:
                for sp in outs:
                    if sp is not None:
                        sl = slice(sp.base, sp.base + sp.size)
                        self.v[sl] = np.where(self.hyp[sl], 0.0, self.v[sl])
        return self.v

    def node(self, node: gs.Node) -> None:
        b = self.b
        sink = b.sinks.get(id(node))
        if sink is not None:
            self.set(node.outputs[0], _sink_values(node, sink, b, self))
            return
        data = b.data.get(id(node))
        if data is None:
            return
        op = node.op
        if op in _COPIES or (op == "Concat" and isinstance(data, dict)):
            for src, dst in b.flows.get(id(node), ()):
                self.v[dst] = np.where(self.zero[dst], 0.0, self.v[src])
            return
        if op == "BatchNormalization":
            x = self.vals(node.inputs[0])
            g, beta, mean, var = (np.asarray(node.inputs[i].values, F) for i in (1, 2, 3, 4))
            eps = F(node.attrs.get("epsilon", 1e-5))
            with np.errstate(all="ignore"):
                y = g * (x.astype(F) - mean) / np.sqrt(var + eps) + beta
            self.set(node.outputs[0], np.where(np.isnan(x), _NAN, y))
            return
        if not isinstance(data, Elementwise):
            return
        ops = self._operands(node, data)
        if op in ("MaxPool", "AveragePool", "Resize", "Upsample"):
            self.set(node.outputs[0], ops[0] if _pool_keeps(node) else _NAN)
        elif op == "Pad":
            x = ops[0]
            self.set(node.outputs[0], np.where(_pad_keeps(node, x.astype(F)), x, _NAN))
        elif op == "Concat":  # along a non-channel axis: every part the same v
            same = np.all([o == ops[0] for o in ops], axis=0)
            self.set(node.outputs[0], np.where(same, ops[0], _NAN))
        elif op in _FUNCS:
            known = ~np.any([np.isnan(o) for o in ops], axis=0)
            if not known.any():
                return
            with np.errstate(all="ignore"):
                y = _FUNCS[op](node, [o.astype(F) for o in ops])
            if y is not None:
                self.set(node.outputs[0], np.where(known, np.asarray(y, np.float64), _NAN))

    def _operands(self, node: gs.Node, data: Elementwise) -> list[np.ndarray]:
        """float64 [C] per operand: its value on each channel (NaN: not constant)."""
        c, out = data.size, []
        for op in data.operands:
            t = node.inputs[op.index]
            if op.kind == "space":
                out.append(self.vals(t).copy())
            elif op.kind == "bcast":
                sp = self.b.space(t)
                v = self.v[sp.base]
                if self.real is not None:
                    label, real_v = self.real
                    if label[sp.base] != label[data.out.base]:
                        v = real_v[sp.base]
                out.append(np.full(c, v))
            elif op.kind == "const":
                arr = np.moveaxis(np.asarray(op.value, np.float64), data.axis, 0)
                flat = arr.reshape(arr.shape[0], -1)
                uniform = (flat == flat[:, :1]).all(axis=1) if flat.shape[1] else np.ones(arr.shape[0], bool)
                first = flat[:, 0] if flat.shape[1] else np.full(arr.shape[0], _NAN)
                out.append(np.broadcast_to(np.where(uniform, first, _NAN), (c,)).copy())
            else:
                out.append(np.full(c, _NAN))
        return out


def _sink_values(node: gs.Node, sink: Any, b: Builder, sw: ConstSweep) -> np.ndarray:
    """float64 [Cout]: each output channel's constant value (NaN: not constant)."""
    cout, k = sink.dep.shape
    g = sink.groups
    x = sw.vals(node.inputs[0]) if sink.input is not None else None
    if x is None:
        reads_const = ~sink.dep.any(axis=1)
        xv = np.zeros(k * g)
    else:
        xv = x
        bad = np.isnan(x).reshape(g, 1, k)
        reads_const = ~(sink.dep.reshape(g, cout // g, k) & bad).any(axis=2).reshape(-1)
        xv = np.where(np.isnan(x), 0.0, x)
    if not reads_const.any():
        return np.full(cout, _NAN)
    nz_in = (xv != 0).reshape(g, 1, k)
    reads_nonzero = (sink.dep.reshape(g, cout // g, k) & nz_in).any(axis=2).reshape(-1)
    op = node.op
    if op in ("Conv", "ConvTranspose"):
        w = np.asarray(node.inputs[1].values, np.float64)
        bias = np.asarray(node.inputs[2].values, np.float64).reshape(-1) \
            if len(node.inputs) > 2 and node.inputs[2].name else np.zeros(cout)
        if op == "ConvTranspose" or not pads_zero(node):
            total = np.where(reads_nonzero, _NAN, bias)
        else:
            wsum = w.reshape(cout, k, -1).sum(axis=2)                                # [Cout, Cin/G]
            xin = xv.reshape(g, 1, k)
            contrib = (wsum.reshape(g, cout // g, k) * xin).sum(axis=2).reshape(-1)
            total = bias + contrib
    elif op == "Gemm":
        bm = np.asarray(node.inputs[1].values, np.float64)
        bm = bm.T if node.attrs.get("transB", 0) else bm
        alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
        total = alpha * (xv @ bm)
        if len(node.inputs) > 2 and node.inputs[2].name and beta != 0:
            cv = np.asarray(node.inputs[2].values, np.float64)
            c2 = cv.reshape((1,) * (2 - cv.ndim) + cv.shape) if cv.ndim < 2 else cv
            rows_same = (c2 == c2[:1]).all(axis=0)
            total = total + beta * np.where(np.broadcast_to(rows_same, (cout,)),
                                            np.broadcast_to(c2[0], (cout,)), _NAN)
    elif op == "MatMul":
        total = xv @ np.asarray(node.inputs[1].values, np.float64)
    else:
        return np.full(cout, _NAN)
    return np.where(reads_const, total, _NAN)


def forward_const(nodes: Sequence[gs.Node], b: Builder, rules: dict, zero: np.ndarray,
                  hyp: np.ndarray | None = None, real: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """float64 per atom: the constant value (NaN: not constant); zero atoms are 0."""
    return ConstSweep(b, zero, hyp, real).run(nodes, rules)


def space_of(b: Builder) -> Callable[[int], Any]:
    """atom -> the Space holding it."""
    spaces = sorted(b.spaces.values(), key=lambda s: s.base)
    bases = np.asarray([s.base for s in spaces], np.int64)
    return lambda atom: spaces[int(np.searchsorted(bases, atom, side="right")) - 1]


def describe(space: Callable[[int], Any], made_by: dict[str, gs.Node], atom: int, value: float) -> str:
    """"channel 3 constant 0.0886 after Add 'p2o.Add.12'" for one atom."""
    sp = space(atom)
    node = made_by.get(sp.tensor)
    where = f"{node.op} '{node.name}'" if node is not None else f"'{sp.tensor}'"
    return f"channel {atom - sp.base} constant {value:.4g} after {where}"


def foldable(node: gs.Node) -> str | None:
    """None when a live filter of ``node`` can absorb a constant input channel; else why not."""
    if node.op == "Conv":
        if pads_zero(node):
            return None
        return (f"consumer Conv '{node.name}' is padded (pads {list(node.attrs.get('pads', []))}), so the "
                "channel's contribution varies at the borders and cannot go into its bias")
    if node.op in ("Gemm", "MatMul"):
        return None
    return f"consumer {node.op} '{node.name}' cannot absorb a constant input channel"


def const_blocked(nodes: Sequence[gs.Node], b: Builder, value: np.ndarray, zero: np.ndarray,
                  needed: np.ndarray, label: np.ndarray,
                  cross: tuple[np.ndarray, np.ndarray] | None = None) -> dict[int, tuple[str, str]]:
    """atom -> (the reader, as "name (Op)"; why the atom's non-zero constant cannot be folded
    into that live reader of another slot).

    ``cross`` = (real zero, real needed): readers' liveness by the real facts (hypothesis).
    """
    z_live, n_live = (zero, needed) if cross is None else cross
    made_by = {o.name: n for n in nodes for o in n.outputs}
    space = space_of(b)
    out: dict[int, tuple[str, str]] = {}
    const_nz = np.isfinite(value) & (value != 0) & ~zero
    if not const_nz.any():
        return out
    for node in nodes:
        key = id(node)
        sink = b.sinks.get(key)
        if sink is not None and sink.input is not None:
            xs, ys = b.spaces[sink.input], b.spaces[sink.output]
            cand = xs.ids[const_nz[xs.ids]]
            if not cand.size:
                continue
            why = foldable(node)
            if why is None:
                continue
            live_f = n_live[ys.ids] & ~z_live[ys.ids]
            cout, k = sink.dep.shape
            m = cout // sink.groups
            for a in cand.tolist():
                c = a - xs.base
                gi, local = divmod(c, k)
                rows = np.arange(gi * m, (gi + 1) * m)
                readers = ys.ids[rows[sink.dep[rows, local] & live_f[rows]]]
                # a reader in the slot itself (grouped conv) goes along when its output stays constant
                if ((label[readers] != label[a]) | np.isnan(value[readers])).any() and a not in out:
                    out[a] = (node_label(node), f"{describe(space, made_by, a, value[a])}: {why}")
        for src, dst in b.flows.get(key, ()):
            cross_edge = (label[src] != label[dst]) & const_nz[src] & n_live[dst] & ~z_live[dst]
            for a in np.unique(src[cross_edge]).tolist():
                if a not in out:
                    out[a] = (node_label(node), f"{describe(space, made_by, a, value[a])}: {node.op} "
                                                f"'{node.name}' broadcasts it over every channel of its output")
    return out


__all__ = ["forward_const", "const_blocked", "describe", "foldable", "space_of"]
