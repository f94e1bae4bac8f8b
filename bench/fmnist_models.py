"""Trained Fashion-MNIST models for the benchmarks: a ResNet-20-style, a VGG-style and a
MobileNetV2-style net, each as a torch module (for Torch-Pruning) and its ONNX export (for
the ONNX-side methods), trained once and cached.

    python bench/fmnist_models.py [--kinds resnet20,vgg,mobilenet_v2] [--threads 1]

Architectures (the zoo's, adapted to 1x28x28 input without editing the zoo):
- ``resnet20``: ``models.train_fmnist.build_model`` (the zoo's ``resnet_basic``: 3x3 stem, three
  stages of three basic blocks, widths 16/32/64, global pool, Linear(64, 10)), BN re-initialised.
- ``vgg``: ``models.zoo_nets.VGG(in_ch=1, spatial=3)`` (six 3x3 conv-BN-ReLU at 16/16/32/32/64/64,
  three max pools 28 -> 14 -> 7 -> 3, Linear(576, 64), ReLU, Dropout, Linear(64, 10)).
- ``mobilenet_v2``: ``models.zoo_nets.mobilenet_v2()`` with its stem conv taking one channel
  instead of three (inverted residuals with depthwise 3x3, ReLU6, 1x1 head to 128).
- ``resnet56``: ``models.zoo_nets.ResNet(BasicBlock, (9, 9, 9), (16, 32, 64), in_ch=1)``: the
  ResNet-20 layout with nine basic blocks per stage (27 residual blocks), where depth pruning pays.

Recipe (``models/train_fmnist.py``'s, so the ResNet here matches the embedded default's):
SGD with Nesterov momentum 0.9, weight decay 5e-4 on weights only, batch 128, one-cycle
learning rate, random 2-pixel shifts and horizontal flips, the 60k training images normalised
by :mod:`models.fashion_mnist`. Bounded for this 2-core machine: a few epochs each (``EPOCHS``).
Seeded: torch's global RNG and a generator for shuffling / augmentation; the same seed and thread
count give the same weights.

Cache: ``$SMOF_CACHE/bench`` (default ``~/.cache/smof-onnx/bench``), one ``.pt`` state dict, one
``.onnx`` export and one ``.json`` (recipe, test accuracy in torch and ONNX Runtime, train time)
per (kind, epochs, seed, architecture fingerprint); files are written atomically.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from models import fashion_mnist  # noqa: E402
from models.cache import cache_root  # noqa: E402

KINDS = ("resnet20", "vgg", "mobilenet_v2", "resnet56")
EPOCHS = {"resnet20": 3, "vgg": 4, "mobilenet_v2": 4, "resnet56": 3}
MAX_LR = {"resnet20": 0.2, "vgg": 0.05, "mobilenet_v2": 0.1, "resnet56": 0.2}
INPUT, OUTPUT = "input", "output"
INPUT_SHAPE = (1, 1, 28, 28)
RECIPE_VERSION = 1  # bump when the recipe below changes, so cached weights are retrained


@dataclasses.dataclass
class TrainedModel:
    kind: str
    module: Any  # torch.nn.Module in eval() mode (a private copy per call of `trained`)
    onnx: onnx.ModelProto
    info: dict

    @property
    def accuracy(self) -> float:
        return float(self.info["test_accuracy_onnxruntime"])


def cache_dir() -> Path:
    return cache_root() / "bench"


def build(kind: str, seed: int = 0):
    """An untrained ``kind`` net taking ``[N, 1, 28, 28]``, deterministic in ``seed``."""
    import torch
    from torch import nn

    from models import train_fmnist
    from models.zoo_nets import VGG, mobilenet_v2

    if kind not in KINDS:
        raise KeyError(f"unknown benchmark model {kind!r}; known: {', '.join(KINDS)}")
    if kind == "resnet20":
        return train_fmnist.build_model(seed)
    if kind == "resnet56":
        from models.zoo_nets import BasicBlock, ResNet
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return ResNet(BasicBlock, (9, 9, 9), (16, 32, 64), in_ch=1)  # fresh BN: identity at start
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "vgg":
            return VGG(in_ch=1, spatial=3)
        model = mobilenet_v2()
        old = model.stem[0]
        # The zoo's MobileNet stem is hard-wired to RGB; Fashion-MNIST is grayscale.
        model.stem[0] = nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        return model


def _fingerprint(kind: str, seed: int) -> str:
    # Keyed on the architecture itself (parameter names and shapes) and the recipe version, not on
    # source bytes: unrelated edits to the zoo files must not throw away minutes of training.
    h = hashlib.sha1(f"{RECIPE_VERSION}".encode())
    for name, t in build(kind, seed).state_dict().items():
        h.update(f"{name}:{tuple(t.shape)};".encode())
    return h.hexdigest()[:8]


def _paths(kind: str, epochs: int, seed: int) -> dict[str, Path]:
    stem = cache_dir() / f"{kind}-e{epochs}-s{seed}-{_fingerprint(kind, seed)}"
    return {ext: stem.with_suffix("." + ext) for ext in ("pt", "onnx", "json")}


def fit(model, epochs: int, lr: float, seed: int = 0, batch: int = 128, name: str = "model", log=print):
    """Train ``model`` in place on the 60k training images with models/train_fmnist's recipe
    (SGD Nesterov 0.9, weight decay 5e-4 on weights only, one-cycle to ``lr``, shift + flip);
    returns it in eval mode. Batches are drawn from a generator seeded with ``seed``."""
    import torch
    from torch.nn import functional as F

    from models import train_fmnist

    gen = torch.Generator().manual_seed(seed)
    model = model.to(memory_format=torch.channels_last)  # ~3x faster for these convs on CPU
    x_train, y_train = fashion_mnist.load("train")
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0}],
                          lr=lr, momentum=0.9, nesterov=True)
    steps = epochs * math.ceil(len(x_train) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.25)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        running = None
        for i in range(0, len(perm), batch):
            idx = perm[i:i + batch]
            xb = train_fmnist.augment(xt[idx], gen).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running = float(loss.detach()) if running is None else 0.98 * running + 0.02 * float(loss.detach())
        log(f"  [{name}] epoch {epoch + 1}/{epochs} loss {running:.3f} ({time.time() - start:.0f}s)")
    return model.eval().to(memory_format=torch.contiguous_format)


def train(kind: str, epochs: int, seed: int = 0, batch: int = 128, log=print):
    """Train ``kind`` from scratch on the 60k training images; returns (module in eval mode, info)."""
    import torch

    torch.manual_seed(seed)
    lr = MAX_LR[kind]
    start = time.time()
    model = fit(build(kind, seed), epochs, lr, seed, batch, kind, log)
    info = {"kind": kind, "epochs": epochs, "batch": batch, "max_lr": lr, "seed": seed,
            "recipe": "SGD nesterov 0.9, wd 5e-4, one-cycle, shift+flip (models/train_fmnist.py)",
            "train_seconds": round(time.time() - start, 1), "threads": torch.get_num_threads()}
    return model, info


def export_onnx(module, opset: int | None = None, input_shape: tuple[int, ...] = INPUT_SHAPE) -> onnx.ModelProto:
    """``module`` (eval mode) as ONNX: torchscript exporter, BN folded, input "input"
    [batch, *input_shape[1:]] (default 1x28x28), output "output" [batch, classes], batch axis symbolic."""
    import contextlib
    import io
    import warnings

    import torch

    module = module.eval()
    with tempfile.TemporaryDirectory(prefix="smof-bench-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.zeros(2, *input_shape[1:]),), str(path), dynamo=False,
                              input_names=[INPUT], output_names=[OUTPUT], opset_version=opset,
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                              training=torch.onnx.TrainingMode.EVAL)
        return onnx.load(str(path))


def ort_predict(model: onnx.ModelProto, x: np.ndarray, batch: int = 500, threads: int = 1) -> np.ndarray:
    """Class predictions of ``model`` under ONNX Runtime (CPU, default optimisations)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = sess.get_outputs()[0].name
    return np.concatenate([sess.run([out], {name: x[i:i + batch]})[0].argmax(1) for i in range(0, len(x), batch)])


def ort_accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, threads: int = 1) -> float:
    return float((ort_predict(model, x, threads=threads) == y).mean())


def _torch_accuracy(module, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    import torch

    module.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((module(torch.from_numpy(x[i:i + batch])).argmax(1).numpy() == y[i:i + batch]).sum())
    return correct / len(x)


def atomic_write(path: Path, write) -> None:
    """``write(tmp)`` then rename over ``path``: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def trained(kind: str, epochs: int | None = None, seed: int = 0, log=print) -> TrainedModel:
    """The trained ``kind`` model: from the cache, or trained now (minutes) and cached."""
    import torch

    epochs = EPOCHS[kind] if epochs is None else epochs
    paths = _paths(kind, epochs, seed)
    module = build(kind, seed)
    if all(p.exists() for p in paths.values()):
        module.load_state_dict(torch.load(paths["pt"], map_location="cpu", weights_only=True))
        return TrainedModel(kind, module.eval(), onnx.load(str(paths["onnx"])), json.loads(paths["json"].read_text()))
    log(f"training {kind} on Fashion-MNIST for {epochs} epochs (cached under {cache_dir()})")
    module, info = train(kind, epochs, seed, log=log)
    proto = export_onnx(copy.deepcopy(module))
    onnx.checker.check_model(proto, full_check=True)
    x_test, y_test = fashion_mnist.load("test")
    info["test_accuracy_torch"] = _torch_accuracy(module, x_test, y_test)
    info["test_accuracy_onnxruntime"] = ort_accuracy(proto, x_test, y_test)
    info["params"] = sum(p.numel() for p in module.parameters())
    atomic_write(paths["pt"], lambda t: torch.save(module.state_dict(), t))
    atomic_write(paths["onnx"], lambda t: onnx.save(proto, t))
    atomic_write(paths["json"], lambda t: Path(t).write_text(json.dumps(info, indent=2) + "\n"))
    log(f"  [{kind}] test accuracy {info['test_accuracy_onnxruntime']:.4f} (ONNX Runtime)")
    return TrainedModel(kind, module.eval(), proto, info)


def calibration(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` training images (normalised, [n, 1, 28, 28]) and their labels, drawn with ``seed``."""
    x, y = fashion_mnist.load("train")
    idx = np.sort(np.random.default_rng(seed).choice(len(x), min(n, len(x)), replace=False))
    return np.ascontiguousarray(x[idx]), y[idx]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="train (or load) the Fashion-MNIST benchmark models")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--epochs", type=int, default=None, help="override the per-model default (EPOCHS)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    for kind in args.kinds.split(","):
        tm = trained(kind, args.epochs, args.seed)
        print(json.dumps({k: tm.info[k] for k in ("kind", "epochs", "test_accuracy_onnxruntime", "train_seconds",
                                                  "params") if k in tm.info}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
