"""Elementwise, activation, softmax and cast ops of the executor's table (see :mod:`.ops`)."""
from __future__ import annotations

import functools
import operator

import numpy as np
import torch
import torch.nn.functional as F

from .ops_registry import DTYPES, axis_of, is_int, op

# ---------------------------------------------------------------- elementwise

@op("Add")
def _add(n, a, b): return a + b


@op("Sub")
def _sub(n, a, b): return a - b


@op("Mul")
def _mul(n, a, b): return a * b


@op("Div")
def _div(n, a, b):
    # ONNX integer division truncates toward zero (C semantics), torch's `/` would give floats.
    return torch.div(a, b, rounding_mode="trunc") if is_int(a) else a / b


@op("Mod")
def _mod(n, a, b):
    return torch.fmod(a, b) if n.get("fmod", 0) else torch.remainder(a, b)


@op("Pow")
def _pow(n, a, b):
    if not is_int(a) and is_int(b):
        b = b.to(a.dtype)
    return torch.pow(a, b).to(a.dtype)


@op("Max")
def _max(n, *xs):
    return functools.reduce(torch.maximum, xs)


@op("Min")
def _min(n, *xs):
    return functools.reduce(torch.minimum, xs)


@op("Sum")
def _sum(n, *xs):
    return functools.reduce(operator.add, xs)


@op("Mean")
def _mean(n, *xs): return _sum(n, *xs) / len(xs)


_UNARY = {
    "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg, "Abs": torch.abs,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round,
    "Sign": torch.sign, "Erf": torch.erf, "Relu": torch.relu, "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh, "Sin": torch.sin, "Cos": torch.cos, "Not": torch.logical_not,
    "Softsign": F.softsign, "Mish": F.mish, "IsNaN": torch.isnan,
}
for _name, _fn in _UNARY.items():
    op(_name)(lambda n, x, _fn=_fn: _fn(x))

_BINARY = {
    "Equal": torch.eq, "Less": torch.lt, "LessOrEqual": torch.le, "Greater": torch.gt,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
    "Xor": torch.logical_xor,
}
for _name, _fn in _BINARY.items():
    op(_name)(lambda n, a, b, _fn=_fn: _fn(a, b))


@op("Where")
def _where(n, c, a, b): return torch.where(c, a, b)


@op("LeakyRelu")
def _leaky(n, x): return F.leaky_relu(x, n.get("alpha", 0.01))


@op("PRelu")
def _prelu(n, x, slope): return torch.where(x < 0, x * slope, x)


@op("Elu")
def _elu(n, x): return F.elu(x, n.get("alpha", 1.0))


@op("Selu")
def _selu(n, x):
    alpha, gamma = n.get("alpha", 1.67326319217681884765625), n.get("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@op("Celu")
def _celu(n, x): return F.celu(x, n.get("alpha", 1.0))


@op("Softplus")
def _softplus(n, x): return F.softplus(x)


@op("ThresholdedRelu")
def _trelu(n, x): return torch.where(x > n.get("alpha", 1.0), x, torch.zeros_like(x))


@op("HardSigmoid")
def _hsig(n, x): return torch.clamp(n.get("alpha", 0.2) * x + n.get("beta", 0.5), 0.0, 1.0)


@op("HardSwish")
def _hswish(n, x): return x * torch.clamp(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)


@op("Gelu")
def _gelu(n, x): return F.gelu(x, approximate="tanh" if n.get("approximate", "none") == "tanh" else "none")


@op("Clip")
def _clip(n, x, lo=None, hi=None):
    if n.opset < 11:
        lo_v, hi_v = n.get("min", -3.4028234663852886e38), n.get("max", 3.4028234663852886e38)
        return torch.clamp(x, lo_v, hi_v)
    # ONNX: with lo > hi every value becomes hi, which is what max-then-min gives.
    if lo is not None:
        x = torch.maximum(x, lo.to(x.dtype))
    if hi is not None:
        x = torch.minimum(x, hi.to(x.dtype))
    return x


def _coerced(x, axis, fn):
    """Softmax/LogSoftmax before opset 13: flatten to 2-D at ``axis``, apply on dim 1."""
    axis = axis_of(axis, x.dim())
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    return fn(x.reshape(rows, -1), 1).reshape(x.shape)


@op("Softmax", "LogSoftmax", "Hardmax")
def _softmax(n, x):
    fn = {"Softmax": torch.softmax, "LogSoftmax": torch.log_softmax, "Hardmax": _hardmax}[n.op_type]
    if n.opset < 13:
        return _coerced(x, n.get("axis", 1), fn)
    return fn(x, axis_of(n.get("axis", -1), x.dim()))


def _hardmax(x, dim):
    return F.one_hot(x.argmax(dim), x.shape[dim]).movedim(-1, dim).to(x.dtype)


@op("Identity", "Dropout")
def _identity(n, x, *rest):
    if n.n_outputs > 1:
        # Dropout's mask output in inference: all ones (kept).
        return x, torch.ones_like(x, dtype=torch.bool)
    return x


@op("Cast")
def _cast(n, x): return x.to(DTYPES[n.get("to")])


@op("CastLike")
def _castlike(n, x, like): return x.to(like.dtype)
