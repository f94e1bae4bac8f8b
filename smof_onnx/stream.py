"""Calibration arrays read a batch at a time: image folders, memory-mapped ``.npy`` / ``.npz``.

A :class:`LazyRows` stands where :class:`smof_onnx.data.CalibrationData` holds an array: it has
``shape``, ``dtype``, ``ndim`` and ``len``, and ``rows[idx]`` (an int, a slice or an index array
along axis 0) returns those samples as a NumPy array of ``dtype``, read then and not kept. So
the memory a run needs does not grow with the number of samples: only the batches in flight
are in memory (:func:`smof_onnx.learn.loader.batch_loader` reads them in worker processes).
``rows.take(index)`` is a view on a subset (no read); ``numpy.asarray(rows)`` reads every row
(for small sets and tests).

Sources:
- :class:`ArrayRows`: an array on disk, memory-mapped (``numpy.load(mmap_mode="r")`` for a
  ``.npy``; :func:`npz_member` for a ``.npz`` member stored uncompressed, as ``numpy.savez``
  writes them: the member's bytes are one contiguous run of the archive, so it maps like a
  ``.npy``). Rows are converted to ``dtype`` when read. A member of ``numpy.savez_compressed``
  cannot be mapped (it is deflated); :func:`npz_member` returns None and the caller reads it
  whole (:mod:`smof_onnx.data` says so in its docstring).
- :class:`ImageRows`: a list of image files decoded with Pillow when read: converted to RGB (or
  L for one channel), resized to ``size`` (H, W; bilinear), channel order RGB or BGR, scaled to
  [0, 1], then ``(x - mean) / std`` per channel, laid out NCHW or NHWC. A file Pillow cannot
  decode raises :class:`smof_onnx.errors.DataError` naming it.

This module imports no torch.
"""
from __future__ import annotations

import dataclasses
import struct
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import DataError

__all__ = ["LazyRows", "ArrayRows", "ImageRows", "ImageFormat", "npz_member", "read_image", "check_image_header"]


class LazyRows:
    """Samples along axis 0, read when indexed (module docstring)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _positions(self, idx) -> np.ndarray:
        if isinstance(idx, slice):
            return np.arange(len(self))[idx]
        pos = np.asarray(idx)
        if pos.dtype == bool:
            pos = np.flatnonzero(pos)
        return pos.astype(np.int64)

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            return self._read(np.array([int(idx)]))[0]
        return self._read(self._positions(idx))

    def __array__(self, dtype=None, copy=None):
        out = self._read(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype)

    def _read(self, pos: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def take(self, index) -> "LazyRows":
        raise NotImplementedError


class ArrayRows(LazyRows):
    """Rows of an array on disk (usually a ``numpy.memmap``), converted to ``dtype`` when read."""

    def __init__(self, array: np.ndarray, dtype, index: np.ndarray | None = None):
        self.array = array
        self.dtype = np.dtype(dtype)
        self.index = None if index is None else np.asarray(index, np.int64)
        n = len(array) if self.index is None else len(self.index)
        self.shape = (n, *array.shape[1:])

    def _read(self, pos: np.ndarray) -> np.ndarray:
        rows = pos if self.index is None else self.index[pos]
        return np.ascontiguousarray(np.asarray(self.array[rows]).astype(self.dtype, copy=False))

    def take(self, index) -> "ArrayRows":
        pos = self._positions(index)
        return ArrayRows(self.array, self.dtype, pos if self.index is None else self.index[pos])


@dataclasses.dataclass(frozen=True)
class ImageFormat:
    """How an image file becomes one sample (module docstring)."""

    size: tuple[int, int]
    channels: int
    channel_order: str = "RGB"
    layout: str = "NCHW"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def sample_shape(self) -> tuple[int, int, int]:
        h, w = self.size
        return (self.channels, h, w) if self.layout == "NCHW" else (h, w, self.channels)


def check_image_header(path: Path) -> None:
    """Open ``path`` far enough to know it is an image Pillow can decode (format and size read,
    pixels not decoded); else :class:`DataError` naming it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - reading the header is the check
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _image_error(path, exc) from exc


def _image_error(path: Path, exc: BaseException) -> DataError:
    from PIL import Image

    too_big = isinstance(exc, Image.DecompressionBombError)
    return DataError(f"{path}: {'too large to read safely' if too_big else 'not a readable image'} ({exc})"
                     + ("; resize it or take it out of the data folder" if too_big else
                        "; replace it or take it out of the data folder"))


def read_image(path: Path, fmt: ImageFormat) -> np.ndarray:
    """One sample (float32, ``fmt.sample_shape()``) from the image file ``path``."""
    from PIL import Image

    h, w = fmt.size
    try:
        with Image.open(path) as im:
            im = im.convert("L" if fmt.channels == 1 else "RGB").resize((w, h), Image.BILINEAR)
            px = np.asarray(im, dtype=np.float32).reshape(h, w, fmt.channels)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _image_error(path, exc) from exc
    if fmt.channels == 3 and fmt.channel_order == "BGR":
        px = px[..., ::-1]
    px = (px / 255.0 - np.asarray(fmt.mean, np.float32)) / np.asarray(fmt.std, np.float32)
    return np.ascontiguousarray(px.transpose(2, 0, 1) if fmt.layout == "NCHW" else px, dtype=np.float32)


class ImageRows(LazyRows):
    """Image files decoded per read (module docstring)."""

    def __init__(self, files: Sequence[Path], fmt: ImageFormat):
        self.files = list(files)
        self.format = fmt
        self.dtype = np.dtype(np.float32)
        self.shape = (len(self.files), *fmt.sample_shape())

    def _read(self, pos: np.ndarray) -> np.ndarray:
        out = np.empty((len(pos), *self.shape[1:]), np.float32)
        for k, i in enumerate(pos):
            out[k] = read_image(self.files[int(i)], self.format)
        return out

    def take(self, index) -> "ImageRows":
        return ImageRows([self.files[int(i)] for i in self._positions(index)], self.format)


_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # the zip format's local file header (30 bytes)


def npz_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray | None:
    """The ``.npy`` member ``info`` of the archive ``path`` memory-mapped read-only, or None when
    it cannot be (deflated, encrypted, an object or Fortran-order array): the caller reads it."""
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(_LOCAL_HEADER.size)
        if len(head) != _LOCAL_HEADER.size:
            return None
        fields = _LOCAL_HEADER.unpack(head)
        if fields[0] != b"PK\x03\x04":
            return None
        name_len, extra_len = fields[-2], fields[-1]
        start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        f.seek(start)
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
        except (ValueError, EOFError, OSError):
            return None
        offset = f.tell()
    if fortran or dtype.hasobject:
        return None
    count = int(np.prod(shape, dtype=np.int64))
    if offset - start + count * dtype.itemsize > info.file_size or count == 0:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))
