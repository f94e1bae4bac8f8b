"""Train the embedded default model: a ResNet-20-style net on Fashion-MNIST, on the CPU.

    python -m models.train_fmnist [--epochs 5] [--threads 1] [--out models/default]

The net is ``models.zoo.build("resnet_basic")`` (CIFAR-style ResNet-20: a 3x3 stem, three
stages of three basic blocks, widths 16/32/64, global average pool, Linear(64, 10)), which
takes ``1x28x28`` input, trained from scratch (BatchNorm re-initialised: the zoo randomises
it for testing). Recipe, chosen to fit ~10-15 minutes on one core of this machine:
SGD (momentum 0.9, Nesterov, weight decay 5e-4), batch 128, one-cycle learning rate peaking
at 0.2, augmentation by random 2-pixel shifts and horizontal flips, inputs normalised with
:data:`models.fashion_mnist.MEAN` / ``STD``. channels_last memory layout runs about 3x faster
than NCHW for these small convs on this CPU.

Writes, atomically:
- ``resnet20_fmnist.onnx``: torchscript exporter, batch axis symbolic ("batch"), input
  "input" [batch, 1, 28, 28] (normalised), output "output" [batch, 10] logits. BatchNorm is
  folded into the convs by the exporter (eval mode).
- ``calib.npz``: a calibration sample, ``input`` float32 [512, 1, 28, 28] (normalised train
  images, drawn with the seed) and ``labels`` int64 [512].
- ``resnet20_fmnist.json``: the recipe and the measured test accuracy (torch and ONNX Runtime
  on the 10k test images).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn import functional as F

from . import fashion_mnist, zoo

OUT = Path(__file__).parent / "default"
MODEL_FILE, CALIB_FILE, INFO_FILE = "resnet20_fmnist.onnx", "calib.npz", "resnet20_fmnist.json"
CALIB_SIZE = 512


def build_model(seed: int) -> nn.Module:
    model = zoo.build("resnet_basic", seed=seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()  # the zoo randomises BN for cut tests; training starts from identity
    return model


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels (zero-padded in normalised space) and horizontal flips."""
    n = x.shape[0]
    pad = F.pad(x, (2, 2, 2, 2), value=float(-fashion_mnist.MEAN / fashion_mnist.STD))
    dx, dy = torch.randint(0, 5, (2, n), generator=gen)
    idx = torch.arange(28)
    rows = (dy[:, None] + idx[None, :])[:, None, :, None].expand(n, 1, 28, 32)
    x = torch.gather(pad, 2, rows)
    cols = (dx[:, None] + idx[None, :])[:, None, None, :].expand(n, 1, 28, 28)
    x = torch.gather(x, 3, cols)
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(x[i:i + batch]).contiguous(memory_format=torch.channels_last)
        correct += int((model(xb).argmax(1).numpy() == y[i:i + batch]).sum())
    return correct / len(x)


def train(epochs: int, seed: int, batch: int = 128, lr: float = 0.2, log_every: int = 50) -> tuple[nn.Module, dict]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = fashion_mnist.load("train")
    model = build_model(seed).to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0}],
                          lr=lr, momentum=0.9, nesterov=True)
    steps = epochs * math.ceil(len(x_train) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.25)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    start, step = time.time(), 0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        running = 0.0
        for i in range(0, len(perm), batch):
            idx = perm[i:i + batch]
            xb = augment(xt[idx], gen).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            running = 0.98 * running + 0.02 * float(loss) if step > 1 else float(loss)
            if step % log_every == 0:
                el = time.time() - start
                print(f"epoch {epoch + 1}/{epochs} step {step}/{steps} loss {running:.3f} "
                      f"{el:.0f}s elapsed, ETA {el / step * (steps - step):.0f}s", flush=True)
    info = {"epochs": epochs, "batch": batch, "max_lr": lr, "seed": seed, "train_seconds": round(time.time() - start, 1),
            "threads": torch.get_num_threads()}
    return model.eval(), info


def export(model: nn.Module, path: Path) -> onnx.ModelProto:
    model = model.to(memory_format=torch.contiguous_format).eval()
    x = torch.zeros(2, 1, 28, 28)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        tmp_file = Path(tmp) / path.name
        torch.onnx.export(model, (x,), str(tmp_file), dynamo=False, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          training=torch.onnx.TrainingMode.EVAL)
        proto = onnx.load(str(tmp_file))
        for key, value in (("normalization", f"(pixel/255 - {fashion_mnist.MEAN}) / {fashion_mnist.STD}"),
                           ("dataset", "Fashion-MNIST"), ("trained_by", "models/train_fmnist.py")):
            proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp_file))
        os.replace(tmp_file, path)
    return proto


def ort_accuracy(path: Path, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    pred = np.concatenate([sess.run(None, {"input": x[i:i + batch]})[0].argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).mean())


def write_calibration(path: Path, seed: int, size: int = CALIB_SIZE) -> None:
    x, y = fashion_mnist.load("train")
    idx = np.sort(np.random.default_rng(seed).choice(len(x), size, replace=False))
    tmp = path.with_name("." + path.name + ".tmp.npz")
    np.savez_compressed(tmp, input=x[idx], labels=y[idx])
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    model, info = train(args.epochs, args.seed)
    x_test, y_test = fashion_mnist.load("test")
    info["test_accuracy_torch"] = accuracy(model, x_test, y_test)
    export(model, args.out / MODEL_FILE)
    info["test_accuracy_onnxruntime"] = ort_accuracy(args.out / MODEL_FILE, x_test, y_test)
    write_calibration(args.out / CALIB_FILE, args.seed)
    info.update(calibration={"file": CALIB_FILE, "images": CALIB_SIZE, "split": "train"},
                normalization={"mean": fashion_mnist.MEAN, "std": fashion_mnist.STD})
    (args.out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
