"""The test/benchmark model zoo: small, architecturally faithful CNNs built in plain PyTorch.

torchvision is not available here, so every net is written out. Each one is small (a few
hundred thousand parameters at most) with a small input so tests stay fast, yet keeps the
structure that makes the real thing hard to cut: identity and 1x1-conv shortcuts, bottlenecks,
depthwise convs, SE gating with hard-sigmoid, hard-swish, C2f Split/Concat, SPPF, Resize,
ConvTranspose with skip Concat, valid-padding convs with PReLU and Transpose+Flatten before a
Linear, 1-D and 3-D convs.

Rules:
- Weights are deterministic functions of ``seed`` and non-trivial: BatchNorm running stats and
  affine parameters are randomised (a freshly initialised BN is the identity, which would let a
  broken BN fold pass unnoticed), and so are PReLU slopes. Models are returned in eval() mode.
- ``export`` writes ONNX with the batch axis symbolic ("batch"), input "input", outputs
  "output" (one) or "output_0".."output_k" (several), all weights as initializers (never
  external data). The example input has batch 2: torch.export specialises a size-1 dim to 1.
- Both exporters fold eval-mode BatchNorm into the convs. ``keep_bn=True`` (torchscript only:
  TrainingMode.PRESERVE on an eval() model) keeps BatchNormalization nodes so a BN-folding pass
  has real work; the dynamo exporter's optimizer always folds them, so it refuses the flag.
- Exports are cached under ``$SMOF_CACHE/zoo`` (default ``~/.cache/smof-onnx/zoo``), keyed by
  name, exporter, seed, torch version, opset, batch mode, BN mode and a fingerprint of the zoo
  sources, and written atomically so concurrent test workers never read half a file.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import onnx
import torch
from torch import nn

from .cache import cache_root
from .zoo_nets import (BasicBlock, Bottleneck, ConvNd, ONet, ResNet, UNet, VGG, Yolo, mobilenet_v2,
                       mobilenet_v3)

EXPORTERS = ("torchscript", "dynamo")


_BUILDERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "resnet_basic": (lambda: ResNet(BasicBlock, (3, 3, 3), (16, 32, 64), in_ch=1), (1, 1, 28, 28)),
    "resnet_bottleneck": (lambda: ResNet(Bottleneck, (2, 2, 2), (8, 16, 32)), (1, 3, 32, 32)),
    "vgg": (VGG, (1, 3, 32, 32)),
    "mobilenet_v2": (mobilenet_v2, (1, 3, 32, 32)),
    "mobilenet_v3": (mobilenet_v3, (1, 3, 32, 32)),
    "yolo": (Yolo, (1, 3, 64, 64)),
    "unet": (UNet, (1, 3, 32, 32)),
    "mtcnn": (ONet, (1, 3, 48, 48)),
    "conv1d": (lambda: ConvNd(1, 4, (16, 32, 64)), (1, 4, 128)),
    "conv3d": (lambda: ConvNd(3, 1, (8, 16, 32)), (1, 1, 8, 16, 16)),
}
NAMES: tuple[str, ...] = tuple(_BUILDERS)


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(NAMES)}")


def _randomise(model: nn.Module, gen: torch.Generator) -> None:
    """Give BN and PReLU parameters values far from their identity initialisation."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.25 + 0.05)


def _seeded(ctor: Callable[[], nn.Module], seed: int) -> nn.Module:
    # fork_rng so building a model never disturbs the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ctor()
    gen = torch.Generator().manual_seed(seed + 1)
    _randomise(model, gen)
    return model.eval()


def build(name: str, seed: int = 0) -> nn.Module:
    """The zoo model ``name`` with deterministic, non-trivial weights, in eval() mode."""
    _check_name(name)
    return _seeded(_BUILDERS[name][0], seed)


def input_shape(name: str) -> tuple[int, ...]:
    """The input shape of ``name`` with batch 1."""
    _check_name(name)
    return _BUILDERS[name][1]


def output_names(name: str, seed: int = 0) -> list[str]:
    """"output" for a single-output model, else "output_0".."output_k"."""
    model = build(name, seed)
    with torch.no_grad():
        out = model(torch.zeros(input_shape(name)))
    return ["output"] if isinstance(out, torch.Tensor) else [f"output_{i}" for i in range(len(out))]


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _fingerprint() -> str:
    # Any edit to a builder must invalidate cached exports, so key on the source bytes.
    here = Path(__file__).parent
    h = hashlib.sha1()
    for f in ("zoo.py", "zoo_nets.py"):
        h.update((here / f).read_bytes())
    return h.hexdigest()[:8]


def cache_path(name: str, exporter: str, seed: int = 0, opset: int | None = None,
               dynamic_batch: bool = True, keep_bn: bool = False) -> Path:
    tv = torch.__version__.split("+")[0]
    extra = (f"-opset{opset}" if opset else "") + ("" if dynamic_batch else "-static") + ("-bn" if keep_bn else "")
    return cache_root() / "zoo" / f"{name}-{exporter}-{seed}-{tv}{extra}-{_fingerprint()}.onnx"


@contextlib.contextmanager
def _quiet():
    # The exporters chatter (deprecation notes, progress lines, "torchvision is not installed");
    # tests want quiet output, and none of it is actionable here.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export_to(model: nn.Module, shape: tuple[int, ...], outs: list[str], path: Path, exporter: str,
               opset: int | None, dynamic_batch: bool, keep_bn: bool = False) -> None:
    batch = 2 if dynamic_batch else shape[0]
    x = torch.randn((batch,) + tuple(shape[1:]), generator=torch.Generator().manual_seed(0))
    common = dict(input_names=["input"], output_names=outs, opset_version=opset)
    with _quiet():
        if exporter == "torchscript":
            axes = {n: {0: "batch"} for n in ["input", *outs]} if dynamic_batch else None
            mode = torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL
            torch.onnx.export(model, (x,), str(path), dynamo=False, dynamic_axes=axes, training=mode, **common)
        else:
            dyn = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
            torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=False,
                              dynamic_shapes=dyn, **common)


def export(name: str, exporter: str = "torchscript", seed: int = 0, opset: int | None = None,
           dynamic_batch: bool = True, keep_bn: bool = False) -> onnx.ModelProto:
    """The ONNX export of ``build(name, seed)`` with ``exporter`` (torch.onnx dynamo=False / True).

    Cached on disk (see module doc); the returned proto is a fresh object each call.
    """
    _check_name(name)
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if keep_bn and exporter != "torchscript":
        raise ValueError("keep_bn=True needs exporter='torchscript': the dynamo exporter's optimizer "
                         "always folds eval-mode BatchNorm into the convs")
    path = cache_path(name, exporter, seed, opset, dynamic_batch, keep_bn)
    if path.exists():
        try:
            return onnx.load(str(path))
        except Exception:  # any unreadable cache entry (truncated, not protobuf) is rebuilt
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build(name, seed)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        tmp_file = Path(tmp) / "model.onnx"
        _export_to(model, input_shape(name), output_names(name, seed), tmp_file, exporter, opset,
                   dynamic_batch, keep_bn)
        proto = onnx.load(str(tmp_file))
        _assert_self_contained(proto, name, exporter)
        os.replace(tmp_file, path)
    return proto


def _assert_self_contained(proto: onnx.ModelProto, name: str, exporter: str) -> None:
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise RuntimeError(f"zoo export {name}/{exporter}: initializer {init.name} is external data")


# ------------------------------------------------------------------------- benchmark-size model

def resnet50_size(seed: int = 0) -> nn.Module:
    """A ResNet-50-shaped net (bottleneck [3, 4, 6, 3], ImageNet stem, 1000 classes, ~25.6M
    params) for the cut benchmark; input 1x3x224x224. Not used by the default tests."""
    return _seeded(lambda: ResNet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), num_classes=1000,
                                  imagenet_stem=True), seed)


RESNET50_INPUT_SHAPE = (1, 3, 224, 224)


def export_resnet50(path: str | os.PathLike, seed: int = 0, exporter: str = "torchscript") -> Path:
    """Export :func:`resnet50_size` to ``path`` (atomically), batch axis dynamic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        tmp_file = Path(tmp) / "model.onnx"
        _export_to(resnet50_size(seed), RESNET50_INPUT_SHAPE, ["output"], tmp_file, exporter, None, True)
        _assert_self_contained(onnx.load(str(tmp_file)), "resnet50_size", exporter)
        os.replace(tmp_file, path)
    return path
