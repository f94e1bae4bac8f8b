"""Rules for ops that act on each channel separately: activations, arithmetic, normalisations.

All couple channel c of their inputs with channel c of the output (with channel
broadcast, see :func:`couple_elementwise`). They differ in the zero transfer:

- zero-preserving unary ops, f(0) = 0: Relu, LeakyRelu, PRelu, Tanh, HardSwish, Elu,
  Selu, Celu, Gelu, Mish, Softsign, ThresholdedRelu, Abs, Neg, Sqrt, Sign, Erf, Floor,
  Ceil, Round, Sin, Atan, Identity, Cast, Dropout; Clip iff lo <= 0 <= hi.
- not zero-preserving: Sigmoid, HardSigmoid, Exp, Softplus (log 2), Log, Reciprocal,
  Cos, Softmax/LogSoftmax along a non-channel axis.
- Add / Sub / Sum / Max / Min / Mean: zero iff every operand is zero on that channel.
- Mul: zero iff some operand is. Div: zero iff the numerator is and the denominator is
  a constant without zeros on that channel (0/0 is NaN, not 0).
- BatchNormalization y = s*x + t with s = gamma/sqrt(var+eps), t = beta - mean*s:
  zero iff t = 0 exactly (beta = 0 and (mean = 0 or gamma = 0)) and (gamma = 0 or x is zero).
- InstanceNormalization y = gamma*(x - mu)/sigma + beta: zero iff beta = 0 and (gamma = 0 or x is zero).

Dropping a channel drops the per-channel entries of constant operands (Add/Mul/Sub/Div
constants, PRelu slopes, BN and IN parameters).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx_graphsurgeon as gs

from .rulebase import (Elementwise, Rule, couple_elementwise, drop_const_operands, extra_outputs_used,
                       operand_nonzero, operand_zero, refuse)
from .spaces import Builder

ZeroFn = Callable[[gs.Node, Elementwise, list[np.ndarray]], np.ndarray]


def _same(node, data, masks):
    return masks[0]


def _never(node, data, masks):
    return np.zeros(data.size, bool)


def _all(node, data, masks):
    return np.logical_and.reduce(masks)


def _any(node, data, masks):
    return np.logical_or.reduce(masks)


def _div(node, data, masks):
    den = data.operands[1] if len(data.operands) > 1 else None
    return masks[0] & (operand_nonzero(data, den) if den is not None else False)


class Map(Rule):
    """An elementwise op over the inputs ``indices`` (None: all), with a zero-transfer function."""

    category = "elementwise"

    def __init__(self, zero_fn: ZeroFn, indices: list[int] | None = None, single_output: bool = True):
        self.zero_fn = zero_fn
        self.indices = indices
        self.single_output = single_output

    def couple(self, node: gs.Node, b: Builder) -> None:
        if self.single_output and extra_outputs_used(node, b):
            refuse(node, b, "a second output (mask / indices) is used")
            return
        couple_elementwise(node, b, self.indices)

    def zero(self, node: gs.Node, z: Any) -> None:
        data: Elementwise | None = z.data(node)
        if data is None:
            return
        masks = [operand_zero(node, data, op, z) for op in data.operands]
        z.set(node.outputs[0], np.asarray(self.zero_fn(node, data, masks), bool))

    def drop(self, node: gs.Node, c: Any) -> None:
        data = c.data(node)
        if data is not None:
            drop_const_operands(node, data, c)


class Clip(Map):
    """Clip(x, lo, hi): zero-preserving iff lo <= 0 <= hi (bounds as attributes before opset 11)."""

    def __init__(self):
        super().__init__(_same, [0])

    def zero(self, node: gs.Node, z: Any) -> None:
        lo, hi = node.attrs.get("min", -np.inf), node.attrs.get("max", np.inf)
        for i, default in ((1, -np.inf), (2, np.inf)):
            if i < len(node.inputs) and node.inputs[i].name:
                t = node.inputs[i]
                if not isinstance(t, gs.Constant):
                    return  # bounds computed at run time: cannot say
                v = float(np.asarray(t.values).reshape(-1)[0])
                lo, hi = (v, hi) if i == 1 else (lo, v)
        if lo <= 0 <= hi:
            super().zero(node, z)


class BatchNorm(Rule):
    """Unfolded BatchNormalization (e.g. after an Add): per-channel affine, parameters dropped along."""

    category = "normalization"
    params = (1, 2, 3, 4)

    def couple(self, node: gs.Node, b: Builder) -> None:
        if extra_outputs_used(node, b):
            refuse(node, b, "training-mode outputs (running mean/var) are used")
            return
        if not all(i < len(node.inputs) and isinstance(node.inputs[i], gs.Constant) for i in self.params):
            refuse(node, b, "parameters are not constants")
            return
        sp = b.space(node.inputs[0])
        if sp is None:
            return
        if sp.axis != 1 or any(np.asarray(node.inputs[i].values).shape != (sp.size,) for i in self.params):
            refuse(node, b, "channel axis is not 1 or parameter sizes differ from the channel count")
            return
        data = couple_elementwise(node, b, [0])
        if data is not None:
            b.producer(node, data.out.ids, np.arange(data.size))

    def _affine_zero(self, node: gs.Node) -> tuple[np.ndarray, np.ndarray]:
        gamma, beta, mean = (np.asarray(node.inputs[i].values) for i in (1, 2, 3))
        return gamma == 0, (beta == 0) & ((mean == 0) | (gamma == 0))

    def zero(self, node: gs.Node, z: Any) -> None:
        data = z.data(node)
        if data is None or not isinstance(data, Elementwise):
            return
        scale_zero, shift_zero = self._affine_zero(node)
        z.set(node.outputs[0], shift_zero & (scale_zero | z.zero(node.inputs[0])))

    def drop(self, node: gs.Node, c: Any) -> None:
        removed = c.removed(node.outputs[0])
        if removed is None:
            return
        for i in self.params:
            c.set_input(node, i, np.asarray(node.inputs[i].values)[~removed])


class InstanceNorm(BatchNorm):
    params = (1, 2)

    def _affine_zero(self, node: gs.Node) -> tuple[np.ndarray, np.ndarray]:
        gamma, beta = (np.asarray(node.inputs[i].values) for i in (1, 2))
        return gamma == 0, beta == 0


class Softmax(Map):
    """Softmax / LogSoftmax / Hardmax: separable per channel only along a non-channel axis."""

    def __init__(self):
        super().__init__(_never, [0])

    def couple(self, node: gs.Node, b: Builder) -> None:
        sp = b.space(node.inputs[0])
        if sp is None:
            return
        axis = node.attrs.get("axis", 1 if b.opset < 13 else -1)
        axis = axis + sp.rank if axis < 0 else axis
        # Before opset 13 the op flattens [axis:] into one row: separable iff axis > channel axis.
        separable = axis > sp.axis if b.opset < 13 else axis != sp.axis
        if not separable:
            refuse(node, b, f"normalises across the channel axis (axis={axis})")
            return
        super().couple(node, b)


ZERO_PRESERVING = ("Relu", "LeakyRelu", "Tanh", "HardSwish", "Elu", "Selu", "Celu", "Gelu", "Mish",
                   "Softsign", "ThresholdedRelu", "Abs", "Neg", "Sqrt", "Sign", "Erf", "Floor", "Ceil",
                   "Round", "Sin", "Atan", "Identity", "Cast")
NOT_ZERO_PRESERVING = ("Sigmoid", "HardSigmoid", "Exp", "Softplus", "Log", "Reciprocal", "Cos")

ELEMENTWISE: dict[str, Rule] = {
    **{op: Map(_same, [0]) for op in ZERO_PRESERVING},
    **{op: Map(_never, [0]) for op in NOT_ZERO_PRESERVING},
    "Dropout": Map(_same, [0]),
    "Clip": Clip(),
    "PRelu": Map(_same, [0, 1]),
    "Add": Map(_all), "Sub": Map(_all), "Sum": Map(_all), "Max": Map(_all), "Min": Map(_all),
    "Mean": Map(_all),
    "Mul": Map(_any),
    "Div": Map(_div),
    "Softmax": Softmax(), "LogSoftmax": Softmax(), "Hardmax": Softmax(),
}

NORMALIZATION: dict[str, Rule] = {
    "BatchNormalization": BatchNorm(),
    "InstanceNormalization": InstanceNorm(),
}
