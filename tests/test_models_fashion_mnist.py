"""Fashion-MNIST loader and the embedded default model trained on it (models/default)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from models import fashion_mnist
from smof_onnx.data import load_data
from tests.helpers import session

DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"


def test_test_split_shapes_labels_and_normalisation():
    x, y = fashion_mnist.load("test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.int64 and np.bincount(y).tolist() == [1000] * 10
    raw, _ = fashion_mnist.load_raw("test")
    np.testing.assert_allclose(x[:5, 0], (raw[:5] / 255.0 - fashion_mnist.MEAN) / fashion_mnist.STD, rtol=1e-5, atol=1e-6)
    # MEAN / STD are the train pixels' statistics
    train_raw, _ = fashion_mnist.load_raw("train")
    s1 = s2 = 0.0
    for chunk in np.array_split(train_raw, 10):
        c = chunk.astype(np.float64) / 255.0
        s1, s2 = s1 + c.sum(), s2 + (c * c).sum()
    mean = s1 / train_raw.size
    assert mean == pytest.approx(fashion_mnist.MEAN, abs=1e-4)
    assert np.sqrt(s2 / train_raw.size - mean ** 2) == pytest.approx(fashion_mnist.STD, abs=1e-4)


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(fashion_mnist, "ROOT", tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        fashion_mnist.load("train")
    with pytest.raises(ValueError, match="'train' or 'test'"):
        fashion_mnist.load("val")


def test_default_model_and_calibration_sample_fit_together():
    model = onnx.load(str(DEFAULT / "resnet20_fmnist.onnx"))
    onnx.checker.check_model(model, full_check=True)
    calib = load_data(DEFAULT / "calib.npz", model)
    assert calib.inputs["input"].shape == (512, 1, 28, 28) and calib.labels.shape == (512,)
    size = (DEFAULT / "resnet20_fmnist.onnx").stat().st_size + (DEFAULT / "calib.npz").stat().st_size
    assert size < 4 << 20


@pytest.mark.slow  # trains or runs end to end
def test_default_model_accuracy_is_what_its_card_says():
    info = json.loads((DEFAULT / "resnet20_fmnist.json").read_text())
    x, y = fashion_mnist.load("test")
    sess = session(onnx.load(str(DEFAULT / "resnet20_fmnist.onnx")))
    pred = np.concatenate([sess.run(None, {"input": x[i:i + 1000]})[0].argmax(1) for i in range(0, 10000, 1000)])
    acc = float((pred == y).mean())
    assert acc == pytest.approx(info["test_accuracy_onnxruntime"], abs=1e-4)
    assert acc >= 0.90
