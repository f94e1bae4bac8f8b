"""models.ppocr_calib: rendered text lines and pages are preprocessed the way PP-OCR expects --
the real cls model reads the orientation of the lines, the real det model finds the lines on
the pages -- the same seed gives the same bytes, and ``compress`` runs end to end on both real
models from this label-free data, meets the FLOPs target and passes the exactness gate."""
from __future__ import annotations

import numpy as np
import pytest

from models import ppocr, ppocr_calib
from tests import cases, helpers

pytest.importorskip("PIL")


def _run(kind: str, x: np.ndarray) -> np.ndarray:
    sess = helpers.session(cases.load_ppocr(kind), threads=1)
    return sess.run(None, {ppocr.INPUT_NAME: x})[0]


def _widths(x: np.ndarray) -> np.ndarray:
    """Width of each line before the right padding: (x/255-0.5)/0.5 is never exactly 0 for a
    uint8 pixel, so the padding is the trailing run of all-zero columns."""
    inked = (x != 0).any(axis=(1, 2))
    return x.shape[-1] - np.argmax(inked[:, ::-1], axis=1)


# --- text lines (cls) ----------------------------------------------------------------------------

def test_text_lines_shapes_dtypes_and_value_range():
    d = ppocr_calib.text_lines(12, seed=0)
    assert d["x"].shape == (12, 3, 48, 192) and d["x"].dtype == np.float32
    assert d["flipped"].shape == (12,) and d["flipped"].dtype == np.bool_
    assert d["x"].min() >= -1.0 and d["x"].max() <= 1.0
    w = _widths(d["x"])
    assert ((w > 0) & (w <= 192)).all()
    other = ppocr_calib.text_lines(3, height=32, width=100, seed=0)["x"]
    assert other.shape == (3, 3, 32, 100)


def test_text_lines_same_seed_same_bytes_other_seed_differs():
    a, b = ppocr_calib.text_lines(8, seed=5), ppocr_calib.text_lines(8, seed=5)
    c = ppocr_calib.text_lines(8, seed=6)
    assert a["x"].tobytes() == b["x"].tobytes() and (a["flipped"] == b["flipped"]).all()
    assert a["x"].tobytes() != c["x"].tobytes()


def test_flipped_share_follows_the_probability():
    assert not ppocr_calib.text_lines(20, seed=1, flipped=0.0)["flipped"].any()
    assert ppocr_calib.text_lines(20, seed=1, flipped=1.0)["flipped"].all()
    share = ppocr_calib.text_lines(200, seed=1, flipped=0.5)["flipped"].mean()
    assert 0.4 <= share <= 0.6


def test_a_flipped_line_is_the_same_rendering_turned_180_degrees():
    """Same seed, flipped=0 vs 1: the same crops, one set turned before the resize. Bilinear
    resizing commutes with the turn, so the unpadded parts are exact 180-degree rotations."""
    up = ppocr_calib.text_lines(16, seed=3, flipped=0.0)["x"]
    down = ppocr_calib.text_lines(16, seed=3, flipped=1.0)["x"]
    wu, wd = _widths(up), _widths(down)
    assert (wu == wd).all()
    for i, w in enumerate(wu):
        np.testing.assert_array_equal(down[i, :, :, :w], up[i, :, ::-1, w - 1::-1])
        assert not down[i, :, :, w:].any()


def test_the_real_cls_model_reads_the_orientation_of_rendered_lines():
    """Measured: 199 of 200 (99.5%) of seed 0's lines classified as rendered ('180' = index 1),
    mean confidence 0.99. A wrong channel order, scale or padding would show here."""
    d = ppocr_calib.text_lines(200, seed=0)
    prob = _run("cls", d["x"])
    agreement = float(((prob.argmax(1) == 1) == d["flipped"]).mean())
    assert agreement >= 0.95, agreement


def _edits(a: str, b: str) -> int:
    """Levenshtein distance (the test's own, independent of anything under test)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        diag, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (ca != cb))
    return row[-1]


def test_the_real_rec_model_reads_back_the_rendered_strings():
    """Measured on seed 0's 200 lines at 48x320: 96.3% of characters right, 64.5% of lines exact
    (random strings mix O / 0 / o, which no reader can tell apart in some fonts). A wrong
    channel order, scale, width or padding drops this far below."""
    d = ppocr_calib.text_lines(200, seed=0, height=48, width=320, flipped=0.0)
    assert len(d["text"]) == 200 and all(isinstance(t, str) and len(t) >= 2 for t in d["text"])
    model = cases.load_ppocr("rec")
    got = ppocr.ctc_decode(np.concatenate([_run("rec", d["x"][i:i + 50]) for i in range(0, 200, 50)]),
                           ppocr.rec_characters(model))
    chars = sum(len(t) for t in d["text"])
    accuracy = 1 - sum(_edits(g, t) for g, t in zip(got, d["text"])) / chars
    assert accuracy >= 0.9, accuracy


def test_without_truetype_fonts_the_builtin_font_still_renders_readable_lines(monkeypatch):
    monkeypatch.setattr(ppocr_calib, "FONT_DIRS", ("/nonexistent-fonts",))
    assert ppocr_calib.find_fonts() == ppocr_calib.Fonts(())
    d = ppocr_calib.text_lines(40, seed=2)
    assert np.isfinite(d["x"]).all() and d["x"].std(axis=(1, 2, 3)).min() > 0.05
    agreement = float(((_run("cls", d["x"]).argmax(1) == 1) == d["flipped"]).mean())
    assert agreement >= 0.8, agreement


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="flipped is a probability"):
        ppocr_calib.text_lines(2, flipped=1.5)
    with pytest.raises(ValueError, match="n >= 1"):
        ppocr_calib.text_lines(0)


# --- pages (det) ---------------------------------------------------------------------------------

def test_pages_shapes_dtypes_seeding_and_masks():
    x, masks = ppocr_calib.pages_with_masks(4, (64, 96), seed=0)
    assert x.shape == (4, 3, 64, 96) and x.dtype == np.float32
    assert masks.shape == (4, 64, 96) and masks.dtype == np.bool_
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert all(0.01 < m.mean() < 0.9 for m in masks)
    assert ppocr_calib.pages(4, (64, 96), seed=0).tobytes() == x.tobytes()
    assert ppocr_calib.pages(4, (64, 96), seed=1).tobytes() != x.tobytes()


@pytest.mark.parametrize("size", [(100, 96), (64, 20), (0, 64)])
def test_pages_need_multiples_of_32(size):
    with pytest.raises(ValueError, match="multiples of 32"):
        ppocr_calib.pages(1, size)


def test_the_real_det_model_finds_the_rendered_lines():
    """Mean DB probability on the lines' boxes vs elsewhere. Measured on 8 pages of 256x256:
    0.44 on text boxes (the boxes include the gaps between glyphs and DB shrinks its regions),
    0.0002 on background."""
    x, masks = ppocr_calib.pages_with_masks(8, (256, 256), seed=0)
    prob = _run("det", x)[:, 0]
    assert prob.shape == masks.shape
    on_text, off_text = float(prob[masks].mean()), float(prob[~masks].mean())
    assert on_text >= 0.3 and off_text <= 0.01, (on_text, off_text)
    assert all(p[m].mean() > 10 * p[~m].mean() for p, m in zip(prob, masks))


# --- calibration ---------------------------------------------------------------------------------

def test_calibration_is_keyed_by_the_models_real_input_name():
    cls = ppocr_calib.calibration("cls", 3, seed=4)
    assert list(cls) == [ppocr.INPUT_NAME] and cls["x"].shape == (3, 3, 48, 192)
    assert cls["x"].tobytes() == ppocr_calib.text_lines(3, seed=4)["x"].tobytes()
    det = ppocr_calib.calibration("det", 2, seed=4, size=(64, 64))
    assert list(det) == [ppocr.INPUT_NAME] and det["x"].shape == (2, 3, 64, 64)
    rec = ppocr_calib.calibration("rec", 2, seed=4)
    assert list(rec) == [ppocr.INPUT_NAME] and rec["x"].shape == (2, *ppocr_calib.REC_SHAPE)
    upright = ppocr_calib.text_lines(2, seed=4, height=48, width=320, flipped=0.0)
    assert rec["x"].tobytes() == upright["x"].tobytes()
    with pytest.raises(ValueError, match="kind must be"):
        ppocr_calib.calibration("table", 2)
    with pytest.raises(ValueError, match=r"unknown size option\(s\) \['size'\]"):
        ppocr_calib.calibration("cls", 2, size=(64, 64))


# --- end to end: compress the real models from rendered data -------------------------------------

E2E = dict(method="smof", target_flops=0.5, epochs=1, finetune_epochs=1, batch_size=8, val_split=0.25,
           threads=1, progress_bars=False)


@pytest.mark.slow  # trains or runs end to end
def test_compress_cls_end_to_end_from_rendered_lines():
    """64 lines, 48 train / 16 held out. Measured: 12 s on 1 thread, FLOPs ratio 0.499,
    gate max rel err 4e-7."""
    from smof_onnx import api

    _, report = api.compress(str(ppocr.ppocr_path("cls")), data=ppocr_calib.calibration("cls", 64),
                             input_shapes={"x": [1, 3, 48, 192]}, **E2E)
    assert report["flops"]["ratio"] <= 0.51, report["flops"]
    assert report["params"]["after"] < report["params"]["before"]
    assert report["verify"]["max_rel_err"] <= 1e-5
    q = report["quality"]
    assert q["metric"] == "top1_agreement" and q["split"] == "val" and q["samples"] == 16
    assert 0.0 <= q["top1_agreement"] <= 1.0


@pytest.mark.slow  # trains or runs end to end
def test_compress_det_end_to_end_from_rendered_pages():
    """32 pages of 64x64, 24 train / 8 held out. Measured: 8 s on 1 thread, FLOPs ratio 0.49999,
    gate max rel err 4.4e-6. The output is a probability map, so agreement is the whole-map relative error and the mask IoU."""
    from smof_onnx import api

    _, report = api.compress(str(ppocr.ppocr_path("det")), data=ppocr_calib.calibration("det", 32, size=(64, 64)),
                             input_shapes={"x": [1, 3, 64, 64]}, **E2E)
    assert report["flops"]["ratio"] <= 0.51, report["flops"]
    assert report["params"]["after"] < report["params"]["before"]
    assert report["verify"]["max_rel_err"] <= 1e-5
    q = report["quality"]
    assert q["metric"] == "relative_rms_error" and q["split"] == "val" and q["samples"] == 8
    assert 0 <= q["relative_rms_error"] <= q["relative_error"] * np.sqrt(8 * 64 * 64)
    assert 0.0 <= q["mask_iou"] <= 1.0  # the det map is a sigmoid output, so a probability map
