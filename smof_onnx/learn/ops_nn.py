"""Spatial ops of the executor's table: convolution, normalisation, pooling, Resize, Pad.

Rules (all as ONNX Runtime computes them, which the tests check op by op):
- Explicit padding is applied with ``F.pad`` when asymmetric, so torch's kernels only
  ever see symmetric (or zero) padding. ``auto_pad`` SAME_UPPER / SAME_LOWER pads
  ``total = max(0, (ceil(in/s) - 1) s + (k - 1) d + 1 - in)``, the odd pixel at the
  end (UPPER) or the start (LOWER).
- ConvTranspose runs unpadded (full output ``s (in - 1) + (k - 1) d + 1``), then adds
  ``output_padding`` zeros at the end and crops ``pads`` (or the pads implied by
  ``output_shape`` / SAME), then adds the bias, so every combination is exact.
- Pooling computes the output size like ORT (the span divided by the stride truncated
  toward zero, so a map smaller than the window still gives one output; ceil_mode: a
  window must start inside the input or the leading pad), pads explicitly (-inf for max, 0 for average) and
  divides average sums by the count of counted cells (``count_include_pad`` counts
  explicit pads and the overhang of a window wider than the map, never the ceil-mode overhang).
- Resize is separable: per resized axis, the output coordinate is mapped to the
  input with the coordinate transformation mode in float32 (ORT's arithmetic), and
  the output is a weighted sum of 1 (nearest), 2 (linear) or 4 (cubic) gathered taps;
  linear with ``antialias=1`` when downsampling widens the triangle filter to the scale
  (:func:`_antialias_taps`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .ops_registry import Node, axis_of, ints, op

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def torch_pads(pairs: list[tuple[int, int]]) -> list[int]:
    """Per-axis (lo, hi) pairs, first spatial axis first -> F.pad's last-axis-first list."""
    out: list[int] = []
    for lo, hi in reversed(pairs):
        out += [lo, hi]
    return out


def _spatial_pads(n: Node, in_sizes, kernel, strides, dilations) -> list[tuple[int, int]]:
    rank = len(kernel)
    auto = n.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pairs = []
        for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
            total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            pairs.append((small, big) if auto == "SAME_UPPER" else (big, small))
        return pairs
    if auto == "VALID":
        return [(0, 0)] * rank
    pads = n.get("pads") or [0] * (2 * rank)
    return list(zip(pads[:rank], pads[rank:]))


def _geometry(n: Node, x: torch.Tensor, kernel):
    rank = len(kernel)
    strides = n.get("strides") or [1] * rank
    dilations = n.get("dilations") or [1] * rank
    return strides, dilations, _spatial_pads(n, x.shape[2:], kernel, strides, dilations)


def _check_rank(n: Node) -> str | None:
    k = n.get("kernel_shape")
    if k is not None and len(k) not in (1, 2, 3):
        return f"{len(k)}-D kernels are not supported (1-D, 2-D and 3-D are)"
    return None


@op("Conv", check=_check_rank)
def _conv(n, x, w, b=None):
    kernel = list(w.shape[2:])
    strides, dilations, pairs = _geometry(n, x, kernel)
    if all(lo == hi for lo, hi in pairs):
        padding = [lo for lo, _ in pairs]
    else:
        x = F.pad(x, torch_pads(pairs))
        padding = [0] * len(kernel)
    return _CONV[len(kernel)](x, w, b, strides, padding, dilations, n.get("group", 1))


@op("ConvTranspose", check=_check_rank)
def _conv_transpose(n, x, w, b=None):
    kernel = list(w.shape[2:])
    rank = len(kernel)
    strides = n.get("strides") or [1] * rank
    dilations = n.get("dilations") or [1] * rank
    out_pad = n.get("output_padding") or [0] * rank
    group = n.get("group", 1)
    y = _CONVT[rank](x, w, None, strides, 0, 0, group, dilations)
    full = [s * (i - 1) + o + (k - 1) * d + 1
            for i, s, o, k, d in zip(x.shape[2:], strides, out_pad, kernel, dilations)]
    auto = n.get("auto_pad", "NOTSET")
    target = n.get("output_shape")
    if target is None and auto in ("SAME_UPPER", "SAME_LOWER"):
        target = [i * s for i, s in zip(x.shape[2:], strides)]
    if target is not None:
        target = list(target)[-rank:]
        pairs = []
        for f, t in zip(full, target):
            total = f - t
            # ORT crops the odd pixel at the tail for SAME_UPPER, at the head otherwise.
            head = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pairs.append((head, total - head))
    else:
        pads = n.get("pads") or [0] * (2 * rank)
        pairs = list(zip(pads[:rank], pads[rank:]))
    crop = [(-lo, o - hi) for (lo, hi), o in zip(pairs, out_pad)]
    if any(c for pair in crop for c in pair):
        y = F.pad(y, torch_pads(crop))
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * rank)
    return y


def _bn_check(n: Node) -> str | None:
    if n.get("training_mode", 0):
        return "BatchNormalization with training_mode=1 (batch statistics) is not supported"
    return None


@op("BatchNormalization", check=_bn_check)
def _batchnorm(n, x, scale, bias, mean, var):
    y = F.batch_norm(x, mean, var, scale, bias, False, 0.0, n.get("epsilon", 1e-5))
    return y if n.n_outputs == 1 else (y,) + (None,) * (n.n_outputs - 1)


@op("InstanceNormalization")
def _instnorm(n, x, scale, bias):
    return F.instance_norm(x, weight=scale, bias=bias, eps=n.get("epsilon", 1e-5))


@op("LayerNormalization")
def _layernorm(n, x, scale, bias=None):
    axis = axis_of(n.get("axis", -1), x.dim())
    dims = list(range(axis, x.dim()))
    eps = n.get("epsilon", 1e-5)
    mean = x.mean(dims, keepdim=True)
    inv_std = torch.rsqrt(((x - mean) ** 2).mean(dims, keepdim=True) + eps)
    y = (x - mean) * inv_std * scale
    if bias is not None:
        y = y + bias
    return (y, mean, inv_std)[: n.n_outputs] if n.n_outputs > 1 else y


@op("GroupNormalization")
def _groupnorm(n, x, scale, bias):
    groups = n.get("num_groups")
    eps = n.get("epsilon", 1e-5)
    c = x.shape[1]
    if n.opset >= 21:
        return F.group_norm(x, groups, scale, bias, eps)
    # Opset 18 gives one scale and bias per group.
    y = F.group_norm(x, groups, None, None, eps)
    shape = (1, c) + (1,) * (x.dim() - 2)
    return y * scale.repeat_interleave(c // groups).reshape(shape) + bias.repeat_interleave(c // groups).reshape(shape)


# ---------------------------------------------------------------- pooling

def _pool_plan(n: Node, x: torch.Tensor):
    kernel = n.get("kernel_shape")
    strides, dilations, pairs = _geometry(n, x, kernel)
    ceil = bool(n.get("ceil_mode", 0))
    extra, outs = [], []
    for size, k, s, d, (lo, hi) in zip(x.shape[2:], kernel, strides, dilations, pairs):
        span = size + lo + hi - (k - 1) * d - 1
        # ORT divides in float and truncates toward zero, so a map smaller than the
        # window (span in (-s, 0)) still gives one output over the cells there are.
        out = (-(-span // s) if ceil else int(span / s)) + 1
        if ceil and (out - 1) * s >= size + lo:
            out -= 1  # the last window would start in the trailing pad: dropped (ORT, torch)
        outs.append(max(0, out))
        extra.append(max(0, (out - 1) * s + (k - 1) * d + 1 - (size + lo + hi)))
    return kernel, strides, dilations, pairs, extra, outs


def _empty(x: torch.Tensor, outs: list[int]) -> torch.Tensor | None:
    """ORT's (empty) output when no window fits along some axis, else None."""
    return x.new_zeros(tuple(x.shape[:2]) + tuple(outs)) if 0 in outs else None


def _maxpool_check(n: Node) -> str | None:
    if n.n_outputs > 1:
        return "MaxPool's Indices output is not supported"
    if n.get("storage_order", 0):
        return "MaxPool storage_order=1 is not supported"
    return _check_rank(n)


@op("MaxPool", check=_maxpool_check)
def _maxpool(n, x):
    kernel, strides, dilations, pairs, extra, outs = _pool_plan(n, x)
    if (empty := _empty(x, outs)) is not None:
        return empty
    full = [(lo, hi + e) for (lo, hi), e in zip(pairs, extra)]
    if any(p for pair in full for p in pair):
        x = F.pad(x, torch_pads(full), value=-math.inf)
    return _MAXPOOL[len(kernel)](x, kernel, strides, 0, dilations)


def _avgpool_check(n: Node) -> str | None:
    if any(d != 1 for d in n.get("dilations") or []):
        return "AveragePool with dilations != 1 is not supported"
    return _check_rank(n)


@op("AveragePool", check=_avgpool_check)
def _avgpool(n, x):
    kernel, strides, _, pairs, extra, outs = _pool_plan(n, x)
    if (empty := _empty(x, outs)) is not None:
        return empty
    pool = _AVGPOOL[len(kernel)]
    full = [(lo, hi + e) for (lo, hi), e in zip(pairs, extra)]
    if not any(p for pair in full for p in pair):
        return pool(x, kernel, strides, 0)
    mean_padded = pool(F.pad(x, torch_pads(full)), kernel, strides, 0)
    ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
    if n.get("count_include_pad", 0):
        ones = F.pad(ones, torch_pads(pairs), value=1.0)
        # ORT counts the overhang of a window that a map smaller than it truncates (ceil_mode
        # 0), never the ceil-mode overhang
        ones = F.pad(ones, torch_pads([(0, e) for e in extra]), value=0.0 if n.get("ceil_mode", 0) else 1.0)
    else:
        ones = F.pad(ones, torch_pads(full))
    return mean_padded / pool(ones, kernel, strides, 0)


@op("GlobalAveragePool")
def _gap(n, x): return x.mean(list(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def _gmp(n, x): return x.amax(list(range(2, x.dim())), keepdim=True)


# ---------------------------------------------------------------- Pad

def _pad_index(size: int, lo: int, hi: int, mode: str, device) -> torch.Tensor:
    i = torch.arange(-lo, size + hi, device=device)
    if mode == "edge":
        return i.clamp(0, size - 1)
    if mode == "wrap":
        return torch.remainder(i, size)
    period = 2 * (size - 1)
    if period == 0:
        return torch.zeros_like(i)
    j = torch.remainder(i.abs(), period)
    return torch.where(j >= size, period - j, j)


@op("Pad")
def _pad(n, x, pads=None, value=None, axes=None):
    mode = n.get("mode", "constant")
    if n.opset < 11:
        pads, fill = n.get("pads"), n.get("value", 0.0)
    else:
        pads = ints(pads)
        fill = value.item() if value is not None and value.numel() else 0
    axes = [axis_of(a, x.dim()) for a in ints(axes)] if axes is not None else list(range(x.dim()))
    k = len(axes)
    pairs = [(0, 0)] * x.dim()
    for a, lo, hi in zip(axes, pads[:k], pads[k:]):
        pairs[a] = (lo, hi)
    if mode == "constant":
        return F.pad(x, torch_pads(pairs), value=fill)
    for a, (lo, hi) in enumerate(pairs):
        if lo or hi:
            x = x.index_select(a, _pad_index(x.shape[a], lo, hi, mode, x.device))
    return x


# ---------------------------------------------------------------- Resize / Upsample

def _resize_check(n: Node) -> str | None:
    if n.get("antialias", 0) and n.get("mode", "nearest") not in ("linear", "bilinear"):
        return f"Resize with antialias=1 is supported for mode linear only, not {n.get('mode', 'nearest')!r}"
    if n.get("mode", "nearest") not in ("nearest", "linear", "cubic", "bilinear"):
        return f"Resize mode {n.get('mode')!r} is not supported"
    if n.get("coordinate_transformation_mode") == "tf_crop_and_resize":
        return "Resize coordinate_transformation_mode 'tf_crop_and_resize' is not supported"
    return None


def _source_coords(n: Node, out_len: int, in_len: int, scale: float, device) -> torch.Tensor:
    """Input coordinate of every output index, in float32 like ORT."""
    mode = "asymmetric" if n.opset < 11 else n.get("coordinate_transformation_mode", "half_pixel")
    x = torch.arange(out_len, dtype=torch.float32, device=device)
    s = torch.tensor(scale, dtype=torch.float32)
    if mode == "asymmetric":
        return x / s
    if mode == "half_pixel":
        return (x + 0.5) / s - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / s - 0.5 if out_len > 1 else torch.zeros_like(x)
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / s
    if mode == "align_corners":
        return torch.zeros_like(x) if out_len == 1 else x * float(in_len - 1) / float(out_len - 1)
    if mode == "half_pixel_symmetric":
        adjustment = torch.tensor(out_len / (scale * in_len), dtype=torch.float32)
        offset = (in_len / 2.0) * (1 - adjustment)
        return offset + (x + 0.5) / s - 0.5
    raise ValueError(f"coordinate_transformation_mode {mode!r}")


def _nearest(n: Node, c: torch.Tensor, downsampling: bool) -> torch.Tensor:
    if n.opset < 11:
        # Upsample / Resize-10 in ORT: truncate when upsampling, ceil when downsampling.
        return torch.ceil(c) if downsampling else torch.trunc(c)
    mode = n.get("nearest_mode", "round_prefer_floor")
    if mode == "floor":
        return torch.floor(c)
    if mode == "ceil":
        return torch.ceil(c)
    # float32 x / scale can land one ulp beside a true tie (x = 2, scale = 4/7 gives
    # 3.4999998); ORT resolves such values as the tie they stand for, so a value within one
    # ulp of a half is rounded the way the mode rounds halves.
    inf = torch.full_like(c, math.inf)
    if mode == "round_prefer_ceil":
        return torch.floor(torch.nextafter(c, inf) + 0.5)
    return torch.ceil(torch.nextafter(c, -inf) - 0.5)


def _taps(n: Node, c: torch.Tensor, in_len: int, downsampling: bool):
    """Indices [out, T] and weights [out, T] of the taps that make each output value."""
    mode = n.get("mode", "nearest")
    if mode == "nearest":
        idx = _nearest(n, c, downsampling).to(torch.int64).clamp(0, in_len - 1)
        return idx[:, None], None
    if mode in ("linear", "bilinear"):
        c = c.clamp(0, in_len - 1)
        x1 = c.to(torch.int64).clamp(max=in_len - 1)
        x2 = (x1 + 1).clamp(max=in_len - 1)
        d1, d2 = (c - x1).abs(), (c - x2).abs()
        same = x1 == x2
        d1 = torch.where(same, torch.full_like(d1, 0.5), d1)
        d2 = torch.where(same, torch.full_like(d2, 0.5), d2)
        return torch.stack([x1, x2], 1), torch.stack([d2, d1], 1)
    a = n.get("cubic_coeff_a", -0.75)
    base = torch.floor(c)
    s = c - base
    coeffs = torch.stack([
        ((a * (s + 1) - 5 * a) * (s + 1) + 8 * a) * (s + 1) - 4 * a,
        ((a + 2) * s - (a + 3)) * s * s + 1,
        ((a + 2) * (1 - s) - (a + 3)) * (1 - s) * (1 - s) + 1,
        ((a * (2 - s) - 5 * a) * (2 - s) + 8 * a) * (2 - s) - 4 * a,
    ], 1)
    idx = base.to(torch.int64)[:, None] + torch.arange(-1, 3, device=c.device)[None, :]
    if n.get("exclude_outside", 0):
        coeffs = torch.where((idx < 0) | (idx >= in_len), torch.zeros_like(coeffs), coeffs)
        coeffs = coeffs / coeffs.sum(1, keepdim=True)
    return idx.clamp(0, in_len - 1), coeffs


def _antialias_taps(n: Node, out_len: int, in_len: int, scale: float, device):
    """Linear antialias when downsampling (ORT's, after Pillow): a triangle filter widened to
    ``1 / scale`` input pixels, centred at ``c = source coordinate + 0.5``, over the window
    ``[floor(c - support + 0.5), floor(c + support + 0.5))`` (at most ``2 ceil(support) + 1``
    taps), weights ``max(0, 1 - |(x - c + 0.5) * scale|)`` normalised to sum 1. Taps outside
    the input count toward the nearest edge pixel, or, with ``exclude_outside``, are dropped
    before normalising."""
    support = 1.0 / scale
    width = 2 * math.ceil(support) + 1
    centers = _source_coords(n, out_len, in_len, scale, device) + 0.5
    lo = torch.floor(centers - support + 0.5).to(torch.int64)
    count = (torch.floor(centers + support + 0.5).to(torch.int64) - lo).clamp(0, width)
    steps = torch.arange(width, device=device)[None, :]
    idx = lo[:, None] + steps
    w = (1 - ((idx.to(torch.float32) - centers[:, None] + 0.5) * scale).abs()).clamp(min=0)
    keep = steps < count[:, None]
    if n.get("exclude_outside", 0):
        keep &= (idx >= 0) & (idx < in_len)
    w = torch.where(keep, w, torch.zeros_like(w))
    total = w.sum(1, keepdim=True)
    return idx.clamp(0, in_len - 1), w / torch.where(total == 0, torch.ones_like(total), total)


def _resize_axis(n: Node, x: torch.Tensor, axis: int, out_len: int, scale: float) -> torch.Tensor:
    in_len = x.shape[axis]
    if n.get("antialias", 0) and scale < 1:
        idx, weights = _antialias_taps(n, out_len, in_len, scale, x.device)
    else:
        c = _source_coords(n, out_len, in_len, scale, x.device)
        idx, weights = _taps(n, c, in_len, scale < 1)
    if weights is None:
        return x.index_select(axis, idx[:, 0])
    shape = [1] * x.dim()
    shape[axis] = out_len
    out = 0
    for t in range(idx.shape[1]):
        out = out + x.index_select(axis, idx[:, t]) * weights[:, t].to(x.dtype).reshape(shape)
    return out


def _resize_plan(n: Node, x: torch.Tensor, scales, sizes):
    rank = x.dim()
    axes = [axis_of(a, rank) for a in (n.get("axes") or range(rank))]
    if scales is not None and scales.numel():
        s = [float(v) for v in scales.to(torch.float32).reshape(-1).tolist()]
        # ORT: output = floor(in * scale) in float32.
        out = [int(torch.tensor(in_s, dtype=torch.float32) * torch.tensor(v, dtype=torch.float32))
               for in_s, v in zip((x.shape[a] for a in axes), s)]
    else:
        out = ints(sizes)
        policy = n.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            ratios = [o / x.shape[a] for o, a in zip(out, axes)]
            r = min(ratios) if policy == "not_larger" else max(ratios)
            out = [int(math.floor(r * x.shape[a] + 0.5)) for a in axes]
            s = [r] * len(axes)
        else:
            s = [float(torch.tensor(float(o), dtype=torch.float32) / torch.tensor(float(x.shape[a]),
                                                                                   dtype=torch.float32))
                 for o, a in zip(out, axes)]
    return list(zip(axes, out, s))


@op("Resize", check=_resize_check)
def _resize(n, x, roi=None, scales=None, sizes=None):
    if n.opset < 11:
        scales, sizes = roi, None  # Resize-10: (X, scales)
    for axis, out_len, scale in _resize_plan(n, x, scales, sizes):
        if out_len != x.shape[axis] or scale != 1.0:
            x = _resize_axis(n, x, axis, out_len, scale)
    return x


@op("Upsample", check=_resize_check)
def _upsample(n, x, scales=None):
    if scales is None:
        scales = torch.tensor(n.get("scales"), dtype=torch.float32)
    for axis, out_len, scale in _resize_plan(n, x, scales, None):
        if out_len != x.shape[axis] or scale != 1.0:
            x = _resize_axis(n, x, axis, out_len, scale)
    return x


@op("DepthToSpace")
def _d2s(n, x):
    b = n.get("blocksize")
    N, C, H, W = x.shape
    if n.get("mode", "DCR") == "DCR":
        y = x.reshape(N, b, b, C // (b * b), H, W).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(N, C // (b * b), b, b, H, W).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(N, C // (b * b), H * b, W * b)


@op("SpaceToDepth")
def _s2d(n, x):
    b = n.get("blocksize")
    N, C, H, W = x.shape
    y = x.reshape(N, C, H // b, b, W // b, b).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(N, C * b * b, H // b, W // b)
