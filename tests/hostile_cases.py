"""The files of the hostile-input suite (tests/test_hostile.py), built into one folder per case.

:func:`build` writes tiny models and data: a good model and its calibration data, models with
NaN / inf weights, broken external data (missing, a symlink, hard-linked, an absolute location,
one outside the model's folder), a .npy / .npz whose header declares 10^11 samples, a PNG whose
header declares 400 megapixels, text posing as data, a FIFO and a link to /dev/null as outputs.
Every file is a few kB, so a case costs its run only.
"""
from __future__ import annotations

import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx.parser

from tests.test_api import zeroed_net


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR declares width x height RGB pixels and no pixel data (Pillow reads the
    size from the header, so opening it is where a decompression bomb is caught)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def _huge_npy_header(shape) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue() + b"\0" * 1024


def _with_nan(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    for init in model.graph.initializer:
        if init.name == name:
            w = onh.to_array(init).copy()
            w.flat[0] = np.nan
            init.CopyFrom(onh.from_array(w, name))
    return model


def _constant_inf() -> onnx.ModelProto:
    """zeroed_net whose conv1 bias comes from a Constant node holding an inf."""
    m = zeroed_net()
    b1 = next(i for i in m.graph.initializer if i.name == "b1")
    value = onh.to_array(b1).copy()
    value[1] = np.inf
    m.graph.initializer.remove(b1)
    m.graph.node.insert(0, oh.make_node("Constant", [], ["b1"], name="bias_const", value=onh.from_array(value, "b1")))
    return m


def _external(folder: Path, name: str, location: str) -> Path:
    """zeroed_net with its weights in external data at ``location`` (relative to ``folder``)."""
    path = folder / name
    onnx.save_model(zeroed_net(), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path


def _relocate(path: Path, location: str, out: Path) -> None:
    raw = onnx.load(str(path), load_external_data=False)
    for t in raw.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(raw, out)


def build(d: Path) -> None:
    """Every file a case may name, under ``d``."""
    onnx.save(zeroed_net(), d / "m.onnx")
    onnx.save(zeroed_net(spatial=("N", 3, "H", "W")), d / "sym.onnx")
    onnx.save(zeroed_net(zero_ring=False, zero_filters=False), d / "eight.onnx")
    onnx.save(zeroed_net(cout=5), d / "other.onnx")  # another interface: 5 output channels
    rng = np.random.default_rng(0)
    np.savez(d / "calib.npz", x=rng.standard_normal((16, 3, 8, 8)).astype(np.float32))
    (d / "imgs").mkdir()
    for i in range(2):
        _png_header_only(d / "imgs" / f"a{i}.png", 8, 8)  # broken (no data), but named as images
    (d / "bomb").mkdir()
    _png_header_only(d / "bomb" / "huge.png", 20000, 20000)  # 400 megapixels
    (d / "big.npy").write_bytes(_huge_npy_header((10**11, 3, 8, 8)))
    with zipfile.ZipFile(d / "big.npz", "w") as z:
        z.writestr("x.npy", _huge_npy_header((10**11, 3, 8, 8)))
    (d / "notes.npz").write_text("these are my calibration images, honest\n")
    (d / "text.onnx").write_text("not a model\n")
    onnx.save(_with_nan(zeroed_net(), "w2"), d / "nan.onnx")
    onnx.save(_constant_inf(), d / "constinf.onnx")
    relu = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]> g (float[N,3,8,8] x) => '
                                   '(float[N,3,8,8] y) { y = Relu(x) }')
    onnx.save(relu, d / "relu.onnx")
    vec = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]> g (float[16] x) => (float[8] y) '
                                  '<float[16,8] w = {%s}> { y = MatMul(x, w) }' % ",".join(["0.5"] * 128))
    onnx.save(vec, d / "vec.onnx")
    np.save(d / "vec.npy", rng.standard_normal((4, 16)).astype(np.float32))

    # External data, broken five ways.
    _external(d, "ext_missing.onnx", "gone.data")
    (d / "gone.data").unlink()
    _external(d, "ext_link.onnx", "real.data")
    os.rename(d / "real.data", d / "target.data")
    (d / "real.data").symlink_to(d / "target.data")
    _external(d, "ext_hard.onnx", "hard.data")
    os.link(d / "hard.data", d / "hard2.data")
    good = _external(d, "ext_ok.onnx", "ok.data")
    _relocate(good, str(d / "ok.data"), d / "ext_abs.onnx")
    (d / "sub").mkdir()
    _relocate(good, "../ok.data", d / "sub" / "ext_up.onnx")

    # Outputs that are not regular files.
    os.mkfifo(d / "fifo")
    (d / "devnull").symlink_to("/dev/null")
