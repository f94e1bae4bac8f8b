"""The model cases every test module can parametrise over, and cached loaders for them.

- ``ZOO_CASES``: (name, exporter) for every zoo model and both torch exporters.
- ``ZOO_BN_CASES``: zoo names whose torchscript export keeps BatchNormalization nodes.
- ``PPOCR_CASES``: "det", "rec", "cls" (the real PP-OCR models, downloaded once).

Loaders are memoised per process and hand out a *copy* each call, so a test that edits its
model in place can never leak into the next test.
"""
from __future__ import annotations

import functools

import onnx

from models import ppocr

ZOO_NAMES = ("resnet_basic", "resnet_bottleneck", "vgg", "mobilenet_v2", "mobilenet_v3", "yolo", "unet",
             "mtcnn", "conv1d", "conv3d")
EXPORTERS = ("torchscript", "dynamo")
ZOO_CASES: list[tuple[str, str]] = [(n, e) for n in ZOO_NAMES for e in EXPORTERS]
ZOO_BN_CASES: list[str] = list(ZOO_NAMES)
PPOCR_CASES: list[str] = list(ppocr.KINDS)


def case_id(case) -> str:
    return "-".join(case) if isinstance(case, tuple) else str(case)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


@functools.lru_cache(maxsize=None)
def _zoo(name: str, exporter: str, keep_bn: bool) -> onnx.ModelProto:
    import torch  # imported only by tests that ask for a zoo model

    from models import zoo
    torch.set_num_threads(1)
    return zoo.export(name, exporter, keep_bn=keep_bn)


def load_zoo(name: str, exporter: str = "torchscript", keep_bn: bool = False) -> onnx.ModelProto:
    return _copy(_zoo(name, exporter, keep_bn))


def zoo_input_shape(name: str) -> tuple[int, ...]:
    from models import zoo
    return zoo.input_shape(name)


@functools.lru_cache(maxsize=None)
def _ppocr(kind: str) -> onnx.ModelProto:
    return onnx.load(str(ppocr.ppocr_path(kind)))


def load_ppocr(kind: str) -> onnx.ModelProto:
    return _copy(_ppocr(kind))


def ppocr_feed_shapes(kind: str) -> dict[str, tuple[int, ...]]:
    """``shapes=`` argument for tests.helpers.random_inputs / assert_equivalent."""
    return {ppocr.INPUT_NAME: ppocr.PPOCR_SHAPES[kind]}
