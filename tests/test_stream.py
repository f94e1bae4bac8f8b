"""Streamed data, the data options of the CLI and the device option: what a run at scale reads.

- a memory-mapped .npz / .npy and an image folder are read per batch (not held), and the
  DataLoader (with worker processes) yields the samples the in-memory path yields, in order;
- bad preprocessing values and bad devices exit 2 before any work, naming the option;
- a corrupt image is named (exit 2); two CPU runs with --device cpu give the same bytes.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from smof_onnx import cli  # noqa: E402
from smof_onnx.data import CalibrationData, DataOptions, as_calibration, load_data  # noqa: E402
from smof_onnx.errors import UsageError  # noqa: E402
from smof_onnx.learn.batches import train_batches  # noqa: E402
from smof_onnx.learn.executor import OnnxModule  # noqa: E402
from smof_onnx.learn.settings import TrainSettings  # noqa: E402
from smof_onnx.stream import ArrayRows, ImageRows  # noqa: E402
from tests.test_selection_gates import tiny_cnn  # noqa: E402


def _epoch(module, data, n_batches=6, seed=4):
    settings = TrainSettings(search_epochs=1, finetune_epochs=1, lr=1e-3, batch_size=8, seed=seed)
    it = train_batches(module, data, settings)
    return [next(it) for _ in range(n_batches)]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_memory_mapped_npz_streams_the_samples_of_the_in_memory_path(tmp_path, workers):
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((20, 3, 8, 8)).astype(np.float32), rng.integers(0, 5, 20)
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    model = tiny_cnn()
    streamed = load_data(tmp_path / "d.npz", model, options=DataOptions(workers=workers))
    assert isinstance(streamed.inputs["x"], ArrayRows) and isinstance(streamed.inputs["x"].array, np.memmap)
    held = as_calibration({"x": x, "labels": labels}, model)
    assert not held.streamed and streamed.workers == workers
    module = OnnxModule(model)
    for (ia, fa, la), (ib, fb, lb) in zip(_epoch(module, streamed), _epoch(module, held)):
        np.testing.assert_array_equal(ia, ib)
        torch.testing.assert_close(fa[0], fb[0], rtol=0, atol=0)
        torch.testing.assert_close(la, lb, rtol=0, atol=0)
    # a train / val split of a streamed set stays streamed (a view, not a copy)
    train, val = streamed.split(0.25, seed=1)
    assert isinstance(train.inputs["x"], ArrayRows) and len(train) + len(val) == 20


def _images(folder, n=6, size=(10, 12), classes=("b_cls", "a_cls")):
    rng = np.random.default_rng(1)
    for i in range(n):
        d = folder / classes[i % len(classes)]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(d / f"im{i}.png")


def test_an_image_folder_is_decoded_per_batch_with_the_options(tmp_path):
    _images(tmp_path / "imgs")
    model = tiny_cnn()  # x: [N, 3, 8, 8]
    opts = DataOptions(mean=(0.5, 0.4, 0.3), std="0.2,0.25,0.5", labels_from_folders=True, channel_order="bgr")
    data = load_data(tmp_path / "imgs", model, options=opts)
    rows = data.inputs["x"]
    assert isinstance(rows, ImageRows) and rows.shape == (6, 3, 8, 8)
    files = sorted((tmp_path / "imgs").rglob("*.png"))
    assert list(data.labels) == [0 if f.parent.name == "a_cls" else 1 for f in files]
    with Image.open(files[2]) as im:
        px = np.asarray(im.convert("RGB").resize((8, 8), Image.BILINEAR), np.float32)[..., ::-1] / 255.0
    want = ((px - [0.5, 0.4, 0.3]) / [0.2, 0.25, 0.5]).transpose(2, 0, 1)
    np.testing.assert_allclose(rows[2], want, rtol=1e-6, atol=1e-6)
    assert len(load_data(tmp_path / "imgs", model, max_samples=4)) == 4


def _cli_model(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(tiny_cnn(), path)
    return str(path)


@pytest.mark.parametrize("extra, says", [
    (["--mean", "0.1,0.2"], "--mean has 2 values"),
    (["--std", "0.2,0,0.2"], "--std"),
    (["--image-size", "16,16"], "static height of 8"),
    (["--max-samples", "0"], "--max-samples"),
    (["--device", "tpu"], "--device tpu"),
    (["--device", "cpu", "--amp"], "--amp runs on CUDA only"),
])
def test_bad_data_and_device_options_exit_2_before_any_work(tmp_path, capsys, extra, says):
    _images(tmp_path / "imgs")
    code = cli.main(["compress", _cli_model(tmp_path), "-o", str(tmp_path / "o.onnx"), "--data",
                     str(tmp_path / "imgs"), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "o.onnx").exists()


def test_cuda_without_cuda_is_exit_2(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # the refusal is what a CPU-only machine says
    _images(tmp_path / "imgs")
    code = cli.main(["compress", _cli_model(tmp_path), "-o", str(tmp_path / "o.onnx"), "--data",
                     str(tmp_path / "imgs"), "--device", "cuda"])
    assert code == 2 and "no CUDA device" in capsys.readouterr().err


def test_image_options_with_an_array_file_are_refused(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(UsageError, match="--mean: image preprocessing applies to a folder"):
        load_data(tmp_path / "d.npy", tiny_cnn(), mean=0.5)


def test_a_corrupt_image_is_named_with_exit_2(tmp_path, capsys):
    _images(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "a_cls" / "zz_broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code = cli.main(["compress", _cli_model(tmp_path), "-o", str(tmp_path / "o.onnx"), "--data",
                     str(tmp_path / "imgs")])
    err = capsys.readouterr().err
    assert code == 2 and "zz_broken.jpg" in err and "not a readable image" in err


def test_a_file_that_breaks_later_is_named_by_the_loader(tmp_path):
    """A file whose header reads but whose pixels do not (truncated) stops the run naming it."""
    _images(tmp_path / "imgs", n=4, size=(64, 64))
    files = sorted((tmp_path / "imgs").rglob("*.png"))
    data = load_data(tmp_path / "imgs", tiny_cnn())
    files[3].write_bytes(files[3].read_bytes()[:200])  # truncated after validation
    with pytest.raises(Exception, match=files[3].name):
        _epoch(OnnxModule(tiny_cnn()), CalibrationData(data.inputs, None, data.source, 1), n_batches=2)


def test_device_cpu_same_seed_same_bytes(tmp_path):
    from smof_onnx import api

    x = np.random.default_rng(0).standard_normal((48, 3, 8, 8)).astype(np.float32)
    outs = []
    for k in range(2):
        api.compress(tiny_cnn(), tmp_path / f"o{k}.onnx", data={"x": x}, target_flops=0.6, epochs=1,
                     finetune_epochs=1, batch_size=16, device="cpu", progress_bars=False, no_latency=True)
        outs.append((tmp_path / f"o{k}.onnx").read_bytes())
    assert outs[0] == outs[1]
