"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (real accuracy numbers).

``load(split)`` returns ``(images, labels)``: images float32 ``[N, 1, 28, 28]`` normalised as
``(pixel / 255 - MEAN) / STD`` and labels int64 ``[N]`` (0..9, see ``CLASSES``). The constants
are the mean and standard deviation of the 60k training pixels scaled to [0, 1], so a model
trained on ``load("train")`` expects exactly this normalisation at inference, and the
embedded default model (``models/default``) and its calibration sample use it too.

The files are the original idx gz files (big-endian header: magic, counts, dims). A missing
package is a :class:`FileNotFoundError` that says how to install it.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

ROOT = Path(os.environ.get("SMOF_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
MEAN = 0.2860
STD = 0.3530
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def available() -> bool:
    return all((ROOT / f).exists() for pair in _FILES.values() for f in pair)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: idx magic {found:#x}, expected {magic:#x}; the file is damaged")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: holds {data.size} values, its header says {dims}; the file is truncated")
    return data.reshape(dims)


def load_raw(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, 28, 28], int64 labels [N]) without normalisation."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    img_file, lab_file = (ROOT / f for f in _FILES[split])
    if not img_file.exists() or not lab_file.exists():
        raise FileNotFoundError(f"Fashion-MNIST not found under {ROOT} (missing {img_file.name}); install it "
                                "with `apt-get install -y dataset-fashion-mnist` or set SMOF_FASHION_MNIST")
    images = _read_idx(img_file, 0x803)
    labels = _read_idx(lab_file, 0x801).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{img_file} has {len(images)} images but {lab_file} has {len(labels)} labels")
    return images, labels


def normalize(images_u8: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] with the documented MEAN / STD."""
    x = images_u8.astype(np.float32) / np.float32(255.0)
    return ((x - np.float32(MEAN)) / np.float32(STD))[:, None, :, :].astype(np.float32)


def load(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(float32 images [N, 1, 28, 28] normalised, int64 labels [N]) of ``split`` ("train" / "test")."""
    images, labels = load_raw(split)
    return normalize(images), labels
