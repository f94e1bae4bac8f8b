"""Random CNN-like ONNX graphs with zeroed weights, for fuzzing the cut.

One builder, two sources of choices: :func:`graphs` (a hypothesis strategy, for the default test
run, shrinkable) and :func:`from_seed` (numpy, for ``bench/fuzz.py``: a case is its seed). Both call
:func:`build` with a *chooser* (``int(lo, hi)``, ``pick(seq)``, ``coin(p)``); weights come from a
numpy generator seeded by one drawn integer, so a case is small to describe and to replay.

Graphs (plain ONNX through onnx.helper, opset 17) are chains of blocks on an N x C x S...
tensor, 1-D, 2-D or 3-D, a fixed or a free (symbolic) batch:

- conv: Conv with kernel 1/2/3/5, stride 1/2, dilation 1/2, groups (dense, grouped,
  depthwise), explicit pads (symmetric or not, zero = valid) or auto_pad SAME_UPPER /
  SAME_LOWER / VALID, bias or not, then optionally BatchNormalization, an activation (Relu,
  LeakyRelu, PRelu, Clip, HardSwish, Sigmoid, x*sigmoid(x), Tanh) and a scalar affine
  ``Mul s``, ``Add b`` (PP-LCNetV3);
- residual: x + f(x) or x - f(x) / f(x) - x, f one or two same-padded convs, optionally a
  1x1 projection shortcut;
- se: x * sigmoid(conv(relu(conv(GlobalAveragePool(x)))));
- concat of x and conv(x) (or two convs); split (C2f): Split on channels, conv one part,
  Concat back; slice: Slice a channel range, then conv;
- pool (MaxPool / AveragePool), Resize (nearest, x2), Pad (constant 0 on spatial axes),
  ConvTranspose (dense or depthwise, stride 1/2, pads);
- head: none (dense output), GlobalAveragePool + Flatten + Gemm, Flatten + Gemm,
  Reshape + MatMul, Transpose + Flatten + Gemm (MTCNN-like); sometimes a second, dense output.

Node names are random prefixes or all empty. Exporter-style ``value_info`` (inferred, symbolic
batch) is written or not.

Zeros (what the cut must find): each conv may get a kernel ring or sides zeroed, output
channels zeroed (with their bias, and the BN that follows made to give exactly 0: mean and
beta 0, or gamma and beta 0), input-channel slices zeroed, or everything (the last conv of a
residual branch: a whole branch). Channel *slots* are zeroed across every producer of a tensor
(all producers of a residual sum, a depthwise conv and its input), so coupled channels become
removable too.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
ACTIVATIONS = ("Relu", "LeakyRelu", "PRelu", "Clip", "HardSwish", "Sigmoid", "SiLU", "Tanh")
# activations with f(0) = 0: a zero channel stays zero through them
ZERO_KEEPING = frozenset({"Relu", "LeakyRelu", "PRelu", "Clip", "HardSwish", "SiLU", "Tanh"})
BLOCKS = ("conv", "conv", "conv", "residual", "residual", "se", "concat", "split", "slice", "pool", "resize",
          "pad", "convtranspose", "slotmask")
HEADS = ("none", "none", "gap_gemm", "flatten_gemm", "reshape_matmul", "transpose_gemm")


class Chooser:
    """Where choices come from (numpy here; :class:`_Drawn` draws them with hypothesis)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))

    def pick(self, seq: Sequence):
        return seq[int(self.rng.integers(len(seq)))]

    def coin(self, p: float = 0.5) -> bool:
        return bool(self.rng.random() < p)


class _Drawn(Chooser):
    def __init__(self, draw):
        self.draw = draw

    def int(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def pick(self, seq: Sequence):
        return self.draw(st.sampled_from(list(seq)))

    def coin(self, p: float = 0.5) -> bool:
        # shrinks towards False: fewer features in a minimal example
        return self.draw(st.integers(0, 99)) < int(round(p * 100))


@dataclasses.dataclass
class T:
    """A tensor being built: name, channels, spatial sizes, and how to zero channel c of it."""

    name: str
    c: int
    sp: tuple[int, ...]
    # (initializer name, axis) pairs: zeroing index c on each makes channel c exactly 0
    zeroers: list[tuple[str, int]] | None = None


@dataclasses.dataclass
class Case:
    """A generated model and what a test needs to run it."""

    model: onnx.ModelProto
    shapes: dict[str, list[int]]   # concrete input shapes (batch 2 where it is free)
    free_batch: bool
    named: bool
    blocks: list[str]

    @property
    def input_name(self) -> str:
        return self.model.graph.input[0].name


class Builder:
    def __init__(self, ch: Chooser, rng: np.random.Generator, named: bool):
        self.ch, self.rng, self.named = ch, rng, named
        self.prefix = ch.pick(("", "blk/", "model.layer_", "/m/")) if named else ""
        self.nodes: list[onnx.NodeProto] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.n = 0

    # ------------------------------------------------------------ plumbing
    def fresh(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, arr, base: str = "w") -> str:
        name = self.fresh(base)
        self.arrays[name] = np.asarray(arr)
        return name

    def node(self, op: str, inputs: Sequence[str], n_out: int = 1, **attrs) -> list[str]:
        outs = [self.fresh("t") for _ in range(n_out)]
        name = f"{self.prefix}{op}_{self.n}" if self.named else ""
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs

    def weights(self, shape, fan_in: int) -> np.ndarray:
        return (self.rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(np.float32)

    # ------------------------------------------------------------ layers
    def conv(self, x: T, c_out: int | None = None, k: int | None = None, stride: int | None = None,
             same: bool = False, group: int | None = None, mask: str | None = None) -> T:
        ch, d = self.ch, len(x.sp)
        if c_out is None:
            c_out = ch.int(1, 8)
        if group is None:
            kind = ch.pick(("dense", "dense", "dense", "depthwise", "grouped"))
            if kind == "depthwise":
                group, c_out = x.c, x.c
            elif kind == "grouped":
                divs = [g for g in range(2, x.c + 1) if x.c % g == 0]
                group = ch.pick(divs) if divs else 1
                c_out = group * ch.int(1, 2)
            else:
                group = 1
        if k is None:
            k = ch.pick((1, 2, 3, 3, 3, 5))
        ks = [k] * d if d > 1 and ch.coin(0.8) else [ch.pick((1, 2, 3, 5)) if d > 1 else k for _ in range(d)]
        if d == 1:
            ks = [k]
        stride = stride if stride is not None else (2 if ch.coin(0.25) else 1)
        dil = [2 if (ch.coin(0.2) and not same) else 1 for _ in range(d)]
        attrs: dict = {"group": group} if group > 1 or ch.coin(0.5) else {}
        attrs["kernel_shape"] = ks
        if stride > 1 or ch.coin(0.3):
            attrs["strides"] = [stride] * d
        if any(v > 1 for v in dil) or ch.coin(0.2):
            attrs["dilations"] = dil
        eff = [dil[i] * (ks[i] - 1) + 1 for i in range(d)]
        if same:
            pads = [(e - 1) // 2 for e in eff] + [(e - 1) - (e - 1) // 2 for e in eff]
            attrs["pads"] = pads
            mode = "explicit"
        else:
            mode = ch.pick(("explicit", "explicit", "sym", "valid", "SAME_UPPER", "SAME_LOWER", "VALID"))
            if any(x.sp[i] + (e - 1) < e for i, e in enumerate(eff)):
                mode = "sym"
            if mode == "explicit":
                pads = [ch.int(0, e - 1) for e in eff] + [ch.int(0, e - 1) for e in eff]
            elif mode == "sym":
                pads = [(e - 1) // 2 for e in eff] * 2
            elif mode == "valid":
                pads = [0] * (2 * d)
            else:
                pads = None
            if pads is not None:
                # an output of at least 1 per axis
                for i in range(d):
                    short = eff[i] - (x.sp[i] + pads[i] + pads[d + i])
                    if short > 0:
                        pads[d + i] += short
                if any(pads) or ch.coin(0.5):
                    attrs["pads"] = pads
            else:
                if mode != "VALID" or any(x.sp[i] < eff[i] for i in range(d)):
                    mode = mode if mode != "VALID" else "SAME_UPPER"
                    # ONNX Runtime refuses dilations with SAME_*: dilation 1 there
                    dil = [1] * d
                    eff = list(ks)
                    attrs.pop("dilations", None)
                attrs["auto_pad"] = mode
        if not all(_taps_read_data(x.sp[i], ks[i], dil[i], stride, *_pads_of(attrs, i, d, x.sp[i], stride, eff[i]))
                   for i in range(d)):
            # a tap that reads only padding is zero by geometry, not by weights: the oracle would
            # call it removable while a weight-based cut rightly keeps it. A 1x1 conv instead.
            ks, dil, eff = [1] * d, [1] * d, [1] * d
            attrs = {k: v for k, v in attrs.items() if k in ("group", "strides")}
            attrs["kernel_shape"] = ks
        if "auto_pad" in attrs:
            if attrs["auto_pad"] == "VALID":
                sp = tuple((x.sp[i] - eff[i]) // stride + 1 for i in range(d))
            else:
                sp = tuple(-(-x.sp[i] // stride) for i in range(d))
        else:
            p = attrs.get("pads", [0] * (2 * d))
            sp = tuple((x.sp[i] + p[i] + p[d + i] - eff[i]) // stride + 1 for i in range(d))
        cin_g = x.c // group
        w = self.weights((c_out, cin_g, *ks), cin_g * int(np.prod(ks)))
        b = self.weights((c_out,), 4) if ch.coin(0.7) else None
        self._mask_conv(w, b, group, mask)
        wn = self.const(w)
        ins = [x.name, wn]
        zeroers = [(wn, 0)]
        if b is not None:
            bn = self.const(b, "b")
            ins.append(bn)
            zeroers.append((bn, 0))
        y, = self.node("Conv", ins, **attrs)
        return T(y, c_out, sp, zeroers)

    def _mask_conv(self, w: np.ndarray, b: np.ndarray | None, group: int, mask: str | None) -> None:
        ch = self.ch
        mask = mask or ch.pick(("none", "none", "none", "ring", "sides", "out", "out", "in", "all"))
        k = w.shape[2:]
        if mask == "ring" and min(k) >= 3:
            r = ch.int(1, (min(k) - 1) // 2)
            for ax in range(len(k)):
                _zero_axis(w, 2 + ax, slice(0, r))
                _zero_axis(w, 2 + ax, slice(k[ax] - r, None))
        elif mask == "sides" and max(k) >= 2:
            for ax in range(len(k)):
                lo = ch.int(0, k[ax] - 1)
                hi = ch.int(0, k[ax] - 1 - lo)
                _zero_axis(w, 2 + ax, slice(0, lo))
                _zero_axis(w, 2 + ax, slice(k[ax] - hi, None))
        elif mask == "out":
            for c in self._subset(w.shape[0]):
                w[c] = 0
                if b is not None:
                    b[c] = 0
        elif mask == "in" and group == 1:
            for c in self._subset(w.shape[1]):
                w[:, c] = 0
        elif mask == "all":
            w[...] = 0
            if b is not None:
                b[...] = 0

    def _subset(self, n: int) -> list[int]:
        m = self.ch.int(1, max(1, n - 1)) if n > 1 else 1
        start = self.ch.int(0, n - 1)
        return sorted({(start + 3 * i) % n for i in range(m)})

    def batchnorm(self, x: T) -> T:
        c = x.c
        gamma = (0.5 + self.rng.random(c)).astype(np.float32)
        beta = (0.3 * self.rng.standard_normal(c)).astype(np.float32)
        mean = (0.3 * self.rng.standard_normal(c)).astype(np.float32)
        var = (0.5 + self.rng.random(c)).astype(np.float32)
        names = [self.const(a, "bn") for a in (gamma, beta, mean, var)]
        y, = self.node("BatchNormalization", [x.name, *names], epsilon=1e-5)
        zeroers = None
        if x.zeroers is not None:
            # BN(0) = 0 needs beta = 0 and mean = 0 (or gamma = 0 and beta = 0) on that channel
            zeroers = x.zeroers + [(names[1], 0), (names[2 if self.ch.coin() else 0], 0)]
            # channels the conv mask already zeroed stay zero through BN (this mask's choice)
            for j in range(c):
                if all(not self.arrays[n][j].any() for n, ax in x.zeroers if ax == 0):
                    beta[j] = 0
                    mean[j] = 0
        return T(y, x.c, x.sp, zeroers)

    def activation(self, x: T, op: str | None = None) -> T:
        op = op or self.ch.pick(ACTIVATIONS)
        if op == "LeakyRelu":
            y, = self.node(op, [x.name], alpha=0.1)
        elif op == "PRelu":
            slope = (0.25 * self.rng.random((x.c,) + (1,) * len(x.sp))).astype(np.float32)
            y, = self.node(op, [x.name, self.const(slope, "slope")])
        elif op == "Clip":
            lo, hi = self.ch.pick(((0.0, 6.0), (-1.0, 1.0), (0.0, 1.0)))
            y, = self.node(op, [x.name, self.const(np.float32(lo), "lo"), self.const(np.float32(hi), "hi")])
        elif op == "SiLU":
            s, = self.node("Sigmoid", [x.name])
            y, = self.node("Mul", [x.name, s])
        else:
            y, = self.node(op, [x.name])
        return T(y, x.c, x.sp, x.zeroers if op in ZERO_KEEPING else None)

    def affine(self, x: T) -> T:
        """PP-LCNetV3's learnable scalar affine: x * s + b (b turns a zero channel into a constant)."""
        shape = self.ch.pick(((), (1,)))
        y, = self.node("Mul", [x.name, self.const(np.full(shape, 1.0 + 0.5 * self.rng.random(), np.float32), "s")])
        if self.ch.coin(0.7):
            y, = self.node("Add", [y, self.const(np.full(shape, 0.2 * self.rng.standard_normal(), np.float32), "b")])
            return T(y, x.c, x.sp, None)
        return T(y, x.c, x.sp, x.zeroers)

    def conv_block(self, x: T, **kw) -> T:
        y = self.conv(x, **kw)
        if self.ch.coin(0.5):
            y = self.batchnorm(y)
        if self.ch.coin(0.7):
            y = self.activation(y)
            if self.ch.coin(0.15):
                y = self.affine(y)
        return y

    # ------------------------------------------------------------ blocks
    def block(self, kind: str, x: T) -> T:
        ch, d = self.ch, len(x.sp)
        if kind == "conv":
            return self.conv_block(x)
        if kind == "residual":
            k = ch.pick((1, 3))
            f = self.conv_block(x, c_out=ch.int(1, 8), k=k, stride=1, same=True, group=1)
            last_mask = ch.pick(("all", "none", "out", "ring"))
            f = self.conv(f, c_out=x.c, k=ch.pick((1, 3)), stride=1, same=True, group=1, mask=last_mask)
            if ch.coin(0.4):
                f = self.batchnorm(f)
            short = x
            if ch.coin(0.2):
                short = self.conv(x, c_out=x.c, k=1, stride=1, same=True, group=1)
            op = ch.pick(("Add", "Add", "Add", "Sub"))
            a, b = (short, f) if op == "Add" or ch.coin() else (f, short)
            y, = self.node(op, [a.name, b.name])
            z = None
            if a.zeroers is not None and b.zeroers is not None:
                z = a.zeroers + b.zeroers
            out = T(y, x.c, x.sp, z)
            return self.activation(out, ch.pick(("Relu", "SiLU", "LeakyRelu"))) if ch.coin(0.5) else out
        if kind == "se":
            g, = self.node("GlobalAveragePool", [x.name])
            gt = T(g, x.c, (1,) * d)
            r = max(1, x.c // 2)
            h = self.activation(self.conv(gt, c_out=r, k=1, stride=1, same=True, group=1), "Relu")
            s = self.conv(h, c_out=x.c, k=1, stride=1, same=True, group=1)
            gate, = self.node(ch.pick(("Sigmoid", "HardSigmoid")), [s.name])
            y, = self.node("Mul", [x.name, gate] if ch.coin() else [gate, x.name])
            return T(y, x.c, x.sp, x.zeroers)
        if kind == "concat":
            a = self.conv_block(x, stride=1, k=ch.pick((1, 3)), same=True)
            b = x if ch.coin() else self.conv_block(x, stride=1, k=1, same=True)
            parts = [a, b] if ch.coin() else [b, a]
            y, = self.node("Concat", [p.name for p in parts], axis=ch.pick((1, -1 - d)))
            return T(y, a.c + b.c, x.sp)
        if kind == "split" and x.c >= 2:
            c1 = ch.int(1, x.c - 1)
            p1, p2 = self.node("Split", [x.name, self.const(np.array([c1, x.c - c1], np.int64), "split")], 2,
                               axis=1)
            a = self.conv_block(T(p2, x.c - c1, x.sp), stride=1, k=ch.pick((1, 3)), same=True, group=1)
            y, = self.node("Concat", [p1, p2, a.name], axis=1)
            return T(y, x.c + a.c, x.sp)
        if kind == "slice" and x.c >= 2:
            s = ch.int(0, x.c - 2)
            e = ch.int(s + 1, x.c)
            step = 2 if ch.coin(0.2) and e - s >= 3 else 1
            y, = self.node("Slice", [x.name, self.const(np.array([s], np.int64), "st"),
                                     self.const(np.array([e if e < x.c or ch.coin() else 2**31], np.int64), "en"),
                                     self.const(np.array([1], np.int64), "ax"),
                                     self.const(np.array([step], np.int64), "sp")])
            return self.conv_block(T(y, len(range(s, e, step)), x.sp), group=1)
        if kind == "pool" and min(x.sp) >= 2:
            op = ch.pick(("MaxPool", "AveragePool"))
            k = ch.pick((2, 3)) if min(x.sp) >= 3 else 2
            s = ch.pick((1, 2))
            p = (k - 1) // 2 if ch.coin() else 0
            y, = self.node(op, [x.name], kernel_shape=[k] * d, strides=[s] * d, pads=[p] * (2 * d))
            return T(y, x.c, tuple((v + 2 * p - k) // s + 1 for v in x.sp), x.zeroers)
        if kind == "resize" and max(x.sp) <= 8:
            scales = self.const(np.array([1.0, 1.0] + [2.0] * d, np.float32), "scales")
            y, = self.node("Resize", [x.name, "", scales], mode="nearest")
            return T(y, x.c, tuple(2 * v for v in x.sp), x.zeroers)
        if kind == "pad":
            lo = [ch.int(0, 2) for _ in range(d)]
            hi = [ch.int(0, 2) for _ in range(d)]
            pads = np.array([0, 0] + lo + [0, 0] + hi, np.int64)
            y, = self.node("Pad", [x.name, self.const(pads, "pads")], mode="constant")
            return T(y, x.c, tuple(v + a + b for v, a, b in zip(x.sp, lo, hi)), x.zeroers)
        if kind == "convtranspose" and max(x.sp) <= 8:
            return self.conv_transpose(x)
        if kind == "slotmask" and x.zeroers:
            for c in self._subset(x.c):
                for name, ax in x.zeroers:
                    a = self.arrays[name]
                    if a.ndim > ax and a.shape[ax] == x.c:
                        _zero_axis(a, ax, slice(c, c + 1))
            return x
        return self.conv_block(x)

    def conv_transpose(self, x: T) -> T:
        ch, d = self.ch, len(x.sp)
        depthwise = ch.coin(0.3)
        c_out = x.c if depthwise else ch.int(1, 6)
        group = x.c if depthwise else 1
        k = ch.pick((2, 3))
        s = ch.pick((1, 2))
        p = min(ch.int(0, k - 1), min(x.sp) - 1)  # pads < size: every tap reaches a kept output
        if any((v - 1) * s + k - 2 * p < 1 for v in x.sp):
            p = 0
        w = self.weights((x.c, c_out // group, *([k] * d)), x.c)
        if ch.coin(0.3):
            # an outer ring that the pads let the cut remove
            for ax in range(d):
                _zero_axis(w, 2 + ax, slice(0, 1))
                _zero_axis(w, 2 + ax, slice(k - 1, None))
        elif ch.coin(0.3):
            for c in self._subset(c_out // group):
                w[:, c] = 0
        ins = [x.name, self.const(w)]
        if ch.coin():
            ins.append(self.const(self.weights((c_out,), 4), "b"))
        y, = self.node("ConvTranspose", ins, kernel_shape=[k] * d, strides=[s] * d, pads=[p] * (2 * d),
                       group=group)
        sp = tuple((v - 1) * s + k - 2 * p for v in x.sp)
        return T(y, c_out, sp)

    def head(self, kind: str, x: T, free: bool) -> T | None:
        ch = self.ch
        if kind == "none":
            return None
        # at least 3 outputs: one near-zero scalar (a sum that cancels) would turn float32
        # rounding of the BN fold (~1e-8 absolute) into a relative error over 1e-5
        n_out = ch.int(3, 6)
        if kind == "gap_gemm":
            g, = self.node("GlobalAveragePool", [x.name])
            f, = self.node("Flatten", [g], axis=1)
            feat = x.c
        elif kind == "flatten_gemm":
            f, = self.node("Flatten", [x.name], axis=1)
            feat = x.c * int(np.prod(x.sp))
        elif kind == "transpose_gemm":
            perm = [0] + list(range(2, 2 + len(x.sp))) + [1]
            t, = self.node("Transpose", [x.name], perm=perm)
            f, = self.node("Flatten", [t], axis=1)
            feat = x.c * int(np.prod(x.sp))
        else:  # reshape_matmul
            feat = x.c * int(np.prod(x.sp))
            shape = np.array([0 if free else -1, -1 if free else feat], np.int64)
            f, = self.node("Reshape", [x.name, self.const(shape, "shape")])
            y, = self.node("MatMul", [f, self.const(self.weights((feat, n_out), feat))])
            if ch.coin():
                y, = self.node("Add", [y, self.const(self.weights((n_out,), 4), "b")])
            return T(y, n_out, ())
        trans = ch.coin()
        w = self.weights((n_out, feat) if trans else (feat, n_out), feat)
        if ch.coin(0.3):
            # the classifier ignores some features: channels upstream become unused
            cols = self._subset(feat)
            if trans:
                w[:, cols] = 0
            else:
                w[cols] = 0
        ins = [f, self.const(w)]
        if ch.coin(0.7):
            ins.append(self.const(self.weights((n_out,), 4), "b"))
        y, = self.node("Gemm", ins, transB=int(trans))
        return T(y, n_out, ())


def _pads_of(attrs: dict, i: int, d: int, size: int, stride: int, eff: int) -> tuple[int, int]:
    mode = attrs.get("auto_pad", "NOTSET")
    if mode == "VALID":
        return 0, 0
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        total = max(0, (-(-size // stride) - 1) * stride + eff - size)
        small, big = total // 2, total - total // 2
        return (small, big) if mode == "SAME_UPPER" else (big, small)
    p = attrs.get("pads", [0] * (2 * d))
    return p[i], p[d + i]


def _taps_read_data(size: int, k: int, dil: int, stride: int, lo: int, hi: int) -> bool:
    """Every tap of a conv axis reads at least one input element (not only padding)."""
    n_out = (size + lo + hi - dil * (k - 1) - 1) // stride + 1
    return all(any(0 <= j * stride + t * dil - lo < size for j in range(n_out)) for t in range(k))


def _zero_axis(a: np.ndarray, axis: int, sl: slice) -> None:
    idx = [slice(None)] * a.ndim
    idx[axis] = sl
    a[tuple(idx)] = 0


def build(ch: Chooser) -> Case:
    """One random model from the choices of ``ch`` (see the module docstring)."""
    seed = ch.int(0, 2**31 - 1)
    rng = np.random.default_rng(seed)
    named = ch.coin(0.6)
    b = Builder(ch, rng, named)
    d = ch.pick((2, 2, 2, 1, 3))
    size = {1: (6, 12), 2: (4, 9), 3: (3, 5)}[d]
    sp = tuple(ch.int(*size) for _ in range(d))
    c_in = ch.int(1, 4)
    free = ch.coin(0.5)
    batch = 1 if ch.coin(0.7) else 2
    x = T("input", c_in, sp)
    x = b.conv_block(x, c_out=ch.int(2, 8))
    blocks = [ch.pick(BLOCKS) for _ in range(ch.int(1, 5))]
    extra_out: T | None = None
    for i, kind in enumerate(blocks):
        if x.c > 16:  # concat chains grow; a 1x1 conv brings the width back down
            x = b.conv_block(x, c_out=ch.int(2, 8), k=1, group=1)
        x = b.block(kind, x)
        if extra_out is None and i < len(blocks) - 1 and ch.coin(0.15):
            extra_out = x
    head = b.head(ch.pick(HEADS), x, free)
    outs = [head or x] + ([extra_out] if extra_out is not None and extra_out.name != (head or x).name else [])
    batch_dim: int | str = "N" if free else batch
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch_dim, c_in, *sp])
    outputs = [helper.make_tensor_value_info(o.name, TensorProto.FLOAT, None) for o in outs]
    inits = [numpy_helper.from_array(a.astype(a.dtype), n) for n, a in b.arrays.items()]
    graph = helper.make_graph(b.nodes, "fuzz", [inp], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="graphgen")
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model)
    # outputs declared like exporters do: dtype and shape (symbolic batch where it is free)
    del model.graph.output[:]
    model.graph.output.extend(o for name in [o.name for o in outs]
                              for o in list(inferred.graph.value_info) + list(inferred.graph.output) if o.name == name)
    if ch.coin(0.4):  # exporter-style value_info for intermediates
        model.graph.value_info.extend(v for v in inferred.graph.value_info
                                      if v.name not in {o.name for o in outs})
    return Case(model, {"input": [2 if free else batch, c_in, *sp]}, free, named, blocks)


def from_seed(seed: int) -> Case:
    """The case of ``bench/fuzz.py`` seed ``seed`` (numpy choices; stable for a given generator)."""
    return build(Chooser(np.random.default_rng(seed)))


@st.composite
def graphs(draw) -> Case:
    """Hypothesis strategy of random cases (shrinks towards fewer blocks and features)."""
    return build(_Drawn(draw))


def describe(case: Case) -> str:
    ops: dict[str, int] = {}
    for n in case.model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return (f"blocks={case.blocks} input={case.shapes} free_batch={case.free_batch} named={case.named} "
            f"ops={ops}")


def ops_used(cases: Sequence[Case]) -> set[str]:
    return {n.op_type for c in cases for n in c.model.graph.node}

