"""Calibration data: .npz / .npy / image folders, validated against the model's inputs before any
training, with errors naming the file, the input and the expected vs found shape or dtype."""
from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from smof_onnx.passes.base import SmofError
from smof_onnx.data import CalibrationData, as_calibration, load_data
from smof_onnx.errors import DataError, exit_code

F, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64


def model_with(inputs) -> onnx.ModelProto:
    """A model whose graph inputs are ``inputs`` = [(name, elem_type, dims)], each fed to an Identity."""
    vis = [oh.make_tensor_value_info(n, t, d) for n, t, d in inputs]
    outs = [oh.make_tensor_value_info(f"{n}_out", t, None) for n, t, _ in inputs]
    nodes = [oh.make_node("Identity", [n], [f"{n}_out"]) for n, _, _ in inputs]
    return oh.make_model(oh.make_graph(nodes, "g", vis, outs), opset_imports=[oh.make_opsetid("", 17)])


IMG = model_with([("x", F, ["N", 1, 8, 8])])
TWO = model_with([("image", F, ["N", 3, 4, 4]), ("scale", F, ["N", 2])])


def test_npz_keyed_by_input_name_with_labels(tmp_path):
    p = tmp_path / "d.npz"
    x = np.random.default_rng(0).standard_normal((10, 1, 8, 8))  # float64: converted to the input's float32
    np.savez(p, x=x, labels=np.arange(10) % 3)
    data = load_data(p, IMG)
    assert data.inputs["x"].dtype == np.float32 and data.inputs["x"].shape == (10, 1, 8, 8)
    np.testing.assert_allclose(data.inputs["x"], x.astype(np.float32))
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert len(data) == 10


def test_single_array_npz_and_npy_for_a_single_input_model(tmp_path):
    x = np.ones((3, 1, 8, 8), np.float32)
    np.savez(tmp_path / "a.npz", whatever=x)
    np.save(tmp_path / "a.npy", x)
    assert load_data(tmp_path / "a.npz", IMG).inputs["x"].shape == (3, 1, 8, 8)
    assert load_data(tmp_path / "a.npy", IMG).labels is None


def test_wrong_spatial_shape_names_file_input_and_shapes(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, x=np.zeros((4, 1, 28, 28), np.float32))
    with pytest.raises(DataError) as err:
        load_data(p, IMG)
    msg = str(err.value)
    assert "bad.npz" in msg and "'x'" in msg and "[N, 1, 8, 8]" in msg and "[4, 1, 28, 28]" in msg


def test_wrong_rank_is_rejected(tmp_path):
    p = tmp_path / "flat.npy"
    np.save(p, np.zeros((4, 64), np.float32))
    with pytest.raises(DataError, match=r"flat\.npy.*'x' expects rank 4.*\[4, 64\]"):
        load_data(p, IMG)


def test_dtype_that_does_not_convert_is_rejected(tmp_path):
    model = model_with([("ids", I64, ["N", 5])])
    p = tmp_path / "ids.npz"
    np.savez(p, ids=np.zeros((2, 5), np.float32))
    with pytest.raises(DataError, match=r"ids\.npz.*'ids' expects dtype int64, found float32"):
        load_data(p, model)
    np.savez(p, ids=np.zeros((2, 5), np.int32))  # same kind, widened: fine
    assert load_data(p, model).inputs["ids"].dtype == np.int64


def test_missing_input_name_lists_what_was_found(tmp_path):
    p = tmp_path / "two.npz"
    np.savez(p, image=np.zeros((2, 3, 4, 4), np.float32), scal=np.zeros((2, 2), np.float32))
    with pytest.raises(DataError, match=r"two\.npz.*\['scale'\].*\['image', 'scal'\]"):
        load_data(p, TWO)


def test_npy_for_a_two_input_model_is_rejected(tmp_path):
    p = tmp_path / "one.npy"
    np.save(p, np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(DataError, match="one array.*'image', 'scale'"):
        load_data(p, TWO)


def test_sample_counts_labels_and_values_are_checked(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, image=np.zeros((2, 3, 4, 4), np.float32), scale=np.zeros((3, 2), np.float32))
    with pytest.raises(DataError, match="'scale' has 3 samples"):
        load_data(p, TWO)
    np.savez(p, x=np.zeros((2, 1, 8, 8), np.float32), labels=np.array([0, 1, 2]))
    with pytest.raises(DataError, match="'labels' has 3 entries but the inputs have 2"):
        load_data(p, IMG)
    np.savez(p, x=np.zeros((2, 1, 8, 8), np.float32), labels=np.array([0.5, 1.0]))
    with pytest.raises(DataError, match="integer class indices"):
        load_data(p, IMG)
    x = np.zeros((2, 1, 8, 8), np.float32)
    x[1, 0, 0, 0] = np.nan
    np.savez(p, x=x)
    with pytest.raises(DataError, match="NaN"):
        load_data(p, IMG)


def test_symbolic_dims_are_checked_against_input_shapes(tmp_path):
    model = model_with([("x", F, ["N", 3, "H", "W"])])
    p = tmp_path / "d.npy"
    np.save(p, np.zeros((2, 3, 16, 16), np.float32))
    assert load_data(p, model).inputs["x"].shape == (2, 3, 16, 16)
    with pytest.raises(DataError, match=r"expects shape \[N, 3, 32, 32\], found \[2, 3, 16, 16\]"):
        load_data(p, model, {"x": [1, 3, 32, 32]})


def test_unreadable_missing_and_unknown_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_data(tmp_path / "nope.npz", IMG)
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="unknown data format '.csv'"):
        load_data(tmp_path / "d.csv", IMG)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="broken.npz"):
        load_data(tmp_path / "broken.npz", IMG)


def test_image_folder_needs_pillow_or_reads_images(tmp_path):
    (tmp_path / "imgs").mkdir()
    if importlib.util.find_spec("PIL") is None:
        with pytest.raises(DataError, match="needs Pillow"):
            load_data(tmp_path / "imgs", IMG)
        return
    from PIL import Image

    Image.fromarray(np.full((10, 12), 255, np.uint8)).save(tmp_path / "imgs" / "a.png")
    data = load_data(tmp_path / "imgs", IMG, mean=0.5, std=0.5)
    assert data.inputs["x"].shape == (1, 1, 8, 8)
    np.testing.assert_allclose(data.inputs["x"], 1.0)


def test_data_error_is_a_usage_error_with_exit_code_2():
    assert issubclass(DataError, SmofError)
    assert exit_code(DataError("x")) == 2


def test_split_is_seeded_disjoint_and_complete():
    data = as_calibration({"x": np.arange(20, dtype=np.float32).reshape(20, 1, 1, 1) * np.ones((1, 1, 8, 8)),
                           "labels": np.arange(20)}, IMG)
    train, val = data.split(0.25, seed=3)
    again_train, again_val = data.split(0.25, seed=3)
    assert len(val) == 5 and len(train) == 15
    assert val.labels.tolist() == again_val.labels.tolist()
    assert sorted(train.labels.tolist() + val.labels.tolist()) == list(range(20))
    assert data.split(0.25, seed=4)[1].labels.tolist() != val.labels.tolist()
    assert data.split(0.0)[1] is None
    # the sample each label came with stays with it
    np.testing.assert_array_equal(train.inputs["x"][:, 0, 0, 0], train.labels.astype(np.float32))


def test_batches_cover_every_sample_once_and_shuffle_is_seeded():
    data = CalibrationData({"x": np.arange(10, dtype=np.float32)[:, None]}, np.arange(10))
    seen = [b[1].tolist() for b in data.batches(4)]
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    shuffled = [y for _, ys in data.batches(4, shuffle=True, seed=1) for y in ys.tolist()]
    assert sorted(shuffled) == list(range(10)) and shuffled != list(range(10))
    assert shuffled == [y for _, ys in data.batches(4, shuffle=True, seed=1) for y in ys.tolist()]


def test_a_file_that_is_no_npz_or_npy_says_so_not_pickled(tmp_path):
    """A text file named .npz used to get numpy's "contains pickled (object) data" message."""
    for name in ("x.npz", "x.npy"):
        (tmp_path / name).write_text("not a zip\n")
        with pytest.raises(DataError, match=r"x\.np[zy]: is not an \.npz \(zip\) / \.npy file") as info:
            load_data(tmp_path / name, IMG)
        assert "pickle" not in str(info.value) and "numpy.savez" in str(info.value)
        assert exit_code(info.value) == 2
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(DataError, match="empty.npz: the file is empty"):
        load_data(tmp_path / "empty.npz", IMG)
    import pickle

    (tmp_path / "p.npz").write_bytes(pickle.dumps({"x": np.zeros((2, 1, 8, 8), np.float32)}))
    with pytest.raises(DataError, match="p.npz: is a Python pickle.*not accepted"):
        load_data(tmp_path / "p.npz", IMG)


def test_real_object_arrays_keep_the_pickled_message(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([None] * 4, dtype=object))
    with pytest.raises(DataError, match="obj.npz: cannot read the arrays .*object/pickled arrays are not accepted"):
        load_data(tmp_path / "obj.npz", IMG)
    np.save(tmp_path / "obj.npy", np.array([None] * 4, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="obj.npy: cannot read the array .*object/pickled arrays are not accepted"):
        load_data(tmp_path / "obj.npy", IMG)


def test_npy_and_npz_are_read_by_content_whatever_the_suffix(tmp_path):
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    with open(tmp_path / "array.npz", "wb") as f:  # np.save on a path would append .npy
        np.save(f, x)
    assert np.array_equal(load_data(tmp_path / "array.npz", IMG).inputs["x"], x)
    with open(tmp_path / "archive.npy", "wb") as f:
        np.savez(f, x=x)
    assert np.array_equal(load_data(tmp_path / "archive.npy", IMG).inputs["x"], x)
    with open(tmp_path / "labelled.npy", "wb") as f:
        np.savez(f, x=x, labels=np.arange(3))
    with pytest.raises(DataError, match="labelled.npy: is an .npz archive .*rename it to .npz"):
        load_data(tmp_path / "labelled.npy", IMG)
