"""Calibration data: ``.npz`` / ``.npy`` / a folder of images, checked against the model's inputs.

``load_data(path, model, input_shapes=None, **image_options) -> CalibrationData``

Formats (design 5):
- ``.npz``: one array per model input, keyed by the input's name, or a single array for a
  single-input model (any key); an optional integer array ``labels`` [N].
- ``.npy``: one array, for a single-input model.
- a directory of images (png, jpg, jpeg, bmp, gif, tif, tiff, webp), read with Pillow when it is
  installed, sorted by path. Preprocessing (:class:`DataOptions`, the CLI's ``--image-size``,
  ``--mean``, ``--std``, ``--channel-order``, ``--layout``, ``--labels-from-folders``):
  ``image_size`` (H, W; default the model's static spatial dims; a size that contradicts a
  static dim is refused), ``mean`` / ``std`` (1 or one value per channel, applied to pixels
  scaled to [0, 1]; default 0 / 1; std > 0), ``channel_order`` ("RGB" or "BGR"; one-channel
  models read grayscale), ``layout`` ("NCHW" or "NHWC"; default NCHW unless only the last axis
  looks like channels), ``labels_from_folders`` (class sub-folders, sorted by name, give labels
  0..K-1). ``max_samples``: a seeded (seed 0) random subset of at most that many samples, in
  file order, for every format. ``workers``: DataLoader worker processes that decode batches
  while the learning stage trains (:mod:`smof_onnx.learn.loader`).

Streaming (:mod:`smof_onnx.stream`): image folders, ``.npy`` files and the members of a ``.npz``
stored uncompressed (``numpy.savez``) are not read into memory: they are memory-mapped or
decoded a batch at a time when the learning stage reads them, so memory does not grow with the
number of samples. A member of ``numpy.savez_compressed`` is deflated and is read whole (save
with ``numpy.savez`` to stream it); so is any array given in memory.

A file is read as what its first bytes say it is (a zip archive: .npz; the .npy magic: .npy),
whichever of the two suffixes it has; anything else (text, a pickle, an empty file) is refused
with a :class:`DataError` saying how to save the arrays.

Before an array is read, the shape and dtype its header declares are checked: more bytes than
the file (or the zip member) holds is a truncated or corrupt file, and more than the memory
available (:func:`smof_onnx.checks.available_memory`, counting the float32 copy) is refused with
both sizes -- neither reaches an allocation (a streamed array is not held, so only a
compressed ``.npz`` member is checked against memory). Every image file's header is read (format
and size, no pixels) and the first batch is decoded before any training; an image over Pillow's
decompression-bomb limit, or one Pillow cannot identify or decode (then, or later while
training), is refused naming the file.

Every array is checked before any training starts, and a mismatch raises :class:`DataError`
naming the file, the input and the expected vs found shape or dtype:
- every model input has an array (names listed when one is missing);
- the rank equals the input's rank; axis 0 is the sample axis (any count); every other axis
  equals the input's static dim, or the dim given in ``input_shapes``;
- the dtype converts to the input's dtype without changing kind (ints -> floats is fine,
  floats -> ints is not), values are finite (a streamed array is scanned a chunk at a time;
  images: the first batch), all arrays hold the same number of samples;
- ``labels`` is integer-valued, 1-D, with one label per sample.
In-memory arrays are converted to the input dtypes (C-contiguous) once, here; streamed ones
when each batch is read.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import zipfile
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import onnx

from .errors import DataError, UsageError
from .stream import ArrayRows, ImageFormat, ImageRows, LazyRows, check_image_header, npz_member

__all__ = ["CalibrationData", "DataError", "DataOptions", "load_data", "as_calibration", "model_inputs",
           "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    dims: tuple[int | None, ...]  # None where symbolic


_IMAGE_ONLY = ("image_size", "mean", "std", "channel_order", "layout", "labels_from_folders")


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """How ``--data`` is read (module docstring): the image preprocessing, ``max_samples`` and the
    DataLoader's ``workers``. One configuration for ``cut`` and ``compress``; values are checked
    here (a :class:`UsageError` naming the option) and against the model in :func:`load_data`."""

    image_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channel_order: str = "RGB"
    layout: str | None = None
    labels_from_folders: bool = False
    max_samples: int | None = None
    workers: int = 0

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - normalising a frozen dataclass
        if self.image_size is not None:
            size = _numbers(self.image_size, "--image-size")
            if len(size) == 1:
                size = size * 2
            if len(size) != 2 or any(v != int(v) or v < 1 for v in size):
                raise UsageError(f"--image-size {_show(self.image_size)}: give H,W (or one size for both) as "
                                 "whole numbers >= 1, e.g. 224,224")
            set_("image_size", (int(size[0]), int(size[1])))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is None:
                continue
            vals = _numbers(value, f"--{name}")
            if len(vals) == 0 or not all(math.isfinite(v) for v in vals):
                raise UsageError(f"--{name} {_show(value)}: give finite numbers, one or one per channel "
                                 "(e.g. 0.485,0.456,0.406)")
            if name == "std" and any(v <= 0 for v in vals):
                raise UsageError(f"--std {_show(value)}: every value must be > 0 (pixels are divided by it)")
            set_(name, tuple(vals))
        order = str(self.channel_order).upper()
        if order not in ("RGB", "BGR"):
            raise UsageError(f"--channel-order {self.channel_order}: must be RGB or BGR")
        set_("channel_order", order)
        if self.layout is not None:
            layout = str(self.layout).upper()
            if layout not in ("NCHW", "NHWC"):
                raise UsageError(f"--layout {self.layout}: must be NCHW or NHWC")
            set_("layout", layout)
        for name, low in (("max_samples", 1), ("workers", 0)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low):
                raise UsageError(f"--{name.replace('_', '-')} {v!r}: must be a whole number >= {low}")

    def image_options(self) -> dict:
        """The preprocessing options that differ from the defaults (they apply to image folders only)."""
        default = DataOptions()
        return {k: getattr(self, k) for k in _IMAGE_ONLY if getattr(self, k) != getattr(default, k)}

    def settings(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def _numbers(value, flag: str) -> list[float]:
    if isinstance(value, str):
        value = [v for v in value.replace("x", ",").split(",") if v.strip()]
    elif isinstance(value, numbers.Real):
        value = [value]
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError):
        raise UsageError(f"{flag} {_show(value)}: give comma-separated numbers") from None


def _show(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def data_options(options: "DataOptions | Mapping | None" = None, **given) -> DataOptions:
    """A :class:`DataOptions` from one (or a dict of its fields), updated by the keywords that are
    not None; an unknown name is a :class:`UsageError`."""
    if isinstance(options, Mapping):
        given = {**options, **given}
        options = None
    known = {f.name for f in dataclasses.fields(DataOptions)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise UsageError(f"unknown data option(s) {unknown}; known: {sorted(known)}")
    given = {k: v for k, v in given.items() if v is not None}
    return dataclasses.replace(options or DataOptions(), **given)


@dataclasses.dataclass(frozen=True)
class CalibrationData:
    """Validated arrays keyed by model input name (axis 0 = samples) and optional labels.

    An input may be a :class:`smof_onnx.stream.LazyRows` (read per batch); ``workers``: the
    DataLoader worker processes that read batches for the learning stage."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = "<arrays>"
    workers: int = 0

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def streamed(self) -> bool:
        """Whether any input is read per batch (not held in memory)."""
        return any(isinstance(v, LazyRows) for v in self.inputs.values())

    def subset(self, index: np.ndarray) -> "CalibrationData":
        return CalibrationData({k: v.take(index) if isinstance(v, LazyRows) else v[index] for k, v in self.inputs.items()},
                               None if self.labels is None else self.labels[index], self.source, self.workers)

    def split(self, val_fraction: float, seed: int = 0) -> tuple["CalibrationData", "CalibrationData | None"]:
        """(train, val): a seeded random ``val_fraction`` of the samples held out (None when 0).

        At least one sample stays on each side; a set of one sample cannot be split.
        """
        if not 0 <= val_fraction < 1:
            raise DataError(f"{self.source}: the validation fraction must be in [0, 1), got {val_fraction}")
        n = len(self)
        n_val = int(round(n * val_fraction))
        if val_fraction > 0:
            n_val = min(max(n_val, 1), n - 1)
        if n_val <= 0:
            return self, None
        perm = np.random.default_rng(seed).permutation(n)
        return self.subset(np.sort(perm[n_val:])), self.subset(np.sort(perm[:n_val]))

    def batches(self, batch_size: int, shuffle: bool = False,
                seed: int = 0) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """(inputs, labels) per batch; the last one may be smaller. Shuffling is seeded."""
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        n = len(self)
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            yield ({k: v[idx] for k, v in self.inputs.items()},
                   None if self.labels is None else self.labels[idx])


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else np.dtype(np.float32)
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)
        specs.append(InputSpec(inp.name, dtype, dims))
    return specs


def load_data(path: str | os.PathLike, model: onnx.ModelProto,
              input_shapes: Mapping[str, Sequence[int]] | None = None, options: DataOptions | None = None,
              **image_options) -> CalibrationData:
    """Read ``path`` (see the module docstring) and validate it against ``model``'s inputs.

    ``options``: a :class:`DataOptions`; its fields may also be given as keywords."""
    opts = data_options(options, **image_options)
    path = Path(path)
    specs = model_inputs(model)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        arrays, labels = _read_images(path, specs, input_shapes, opts)
    else:
        given = opts.image_options()
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise UsageError(f"{flags}: image preprocessing applies to a folder of images, but --data {path} is a "
                             "file of arrays (preprocess the arrays before saving them, or leave the option out)")
        if path.suffix.lower() == ".npz":
            arrays, labels = _read_npz(path, specs)
        elif path.suffix.lower() == ".npy":
            arrays, labels = _read_npy(path, specs), None
        else:
            raise DataError(f"{path}: unknown data format '{path.suffix}'; give a .npz, a .npy or a folder of images")
    data = validate(arrays, labels, specs, input_shapes, str(path))
    return _limited(data, opts)


def _limited(data: CalibrationData, opts: DataOptions) -> CalibrationData:
    """``data`` cut to a seeded subset of ``max_samples`` (file order kept), with ``workers``."""
    if opts.max_samples is not None and len(data) > opts.max_samples:
        keep = np.sort(np.random.default_rng(0).choice(len(data), opts.max_samples, replace=False))
        data = data.subset(keep)
    return dataclasses.replace(data, workers=opts.workers)


def as_calibration(data, model: onnx.ModelProto,
                   input_shapes: Mapping[str, Sequence[int]] | None = None,
                   options: DataOptions | None = None) -> CalibrationData | None:
    """None, a path, a dict of arrays, a single array or CalibrationData -> validated CalibrationData.

    ``options`` (:class:`DataOptions`) applies to a path; to arrays only ``max_samples`` and
    ``workers`` (already validated CalibrationData keeps its own)."""
    if data is None:
        return None
    opts = options or DataOptions()
    if isinstance(data, CalibrationData):
        out = validate(dict(data.inputs), data.labels, model_inputs(model), input_shapes, data.source)
        return dataclasses.replace(out, workers=data.workers if options is None else opts.workers)
    if isinstance(data, (str, os.PathLike)):
        return load_data(data, model, input_shapes, opts)
    specs = model_inputs(model)
    if isinstance(data, np.ndarray):
        if len(specs) != 1:
            raise DataError(f"a single array needs a single-input model; the inputs are {[s.name for s in specs]}")
        return _limited(validate({specs[0].name: data}, None, specs, input_shapes, "<array>"), opts)
    if isinstance(data, Mapping):
        arrays = {k: v for k, v in data.items() if k != "labels"}
        return _limited(validate(arrays, data.get("labels"), specs, input_shapes, "<arrays>"), opts)
    if hasattr(data, "inputs"):
        return _limited(validate(dict(data.inputs), getattr(data, "labels", None), specs, input_shapes, "<arrays>"),
                        opts)
    raise DataError(f"calibration data must be a path, a dict of arrays or CalibrationData, "
                    f"not {type(data).__name__}")


# ------------------------------------------------------------------------ readers

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive's first entry / an empty archive
_NPY_MAGIC = b"\x93NUMPY"
_SAVE_HINT = ("save the arrays with numpy.savez(path, <input name>=array, labels=...) for a .npz, or "
              "numpy.save(path, array) for a .npy")


def _sniff(path: Path) -> str:
    """What the file holds, by its first bytes: "npz" (zip), "npy", or raise :class:`DataError`
    saying what it is instead (empty, a pickle, text, ...) and how to write a proper file."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if head.startswith(_ZIP_MAGIC):
        return "npz"
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if not head:
        raise DataError(f"{path}: the file is empty, not an .npz (zip) / .npy file; {_SAVE_HINT}")
    if head[:1] == b"\x80":
        raise DataError(f"{path}: is a Python pickle, not an .npz (zip) / .npy file; pickles are not accepted "
                        f"(loading one can run code): {_SAVE_HINT}")
    raise DataError(f"{path}: is not an .npz (zip) / .npy file (it starts with {head!r}); {_SAVE_HINT}")


def _declared(stream, where: str, holds: int, held: bool = True) -> None:
    """Check the .npy header at the start of ``stream`` against the ``holds`` bytes of its file,
    and, for an array read whole (``held``: not memory-mapped), against the available memory."""
    try:
        version = np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(stream)
    except (ValueError, EOFError, OSError):
        return  # np.load says what is wrong with the header
    if dtype.hasobject:
        return  # refused by np.load (allow_pickle=False) with its own message
    count = float(np.prod(shape, dtype=np.float64))
    declared = count * dtype.itemsize
    body = holds - stream.tell()
    if declared > body:
        raise DataError(f"{where}: its header declares an array of shape {list(shape)} ({_size(declared)}), but the "
                        f"file holds {_size(max(body, 0))} after the header: the file is truncated or corrupt; "
                        f"{_SAVE_HINT}")
    if not held:
        return
    from .checks import available_memory

    need = count * max(dtype.itemsize, 4) * 2  # the read and its float32 copy
    avail = available_memory()
    if avail is not None and need > avail:
        raise DataError(f"{where}: an array of shape {list(shape)} needs about {_size(need)} of memory to use, more "
                        f"than the {_size(avail)} available; use fewer samples")


def _size(n: float) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{int(n)} bytes"


def _check_npz_headers(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.filename.endswith(".npy"):
                    with z.open(info) as member:
                        _declared(member, f"{path} (array '{info.filename[:-4]}')", info.file_size,
                                  held=info.compress_type != zipfile.ZIP_STORED)
    except (OSError, EOFError, zipfile.BadZipFile, ValueError):
        return  # np.load reports the broken archive


def _mapped_members(path: Path) -> dict[str, np.ndarray]:
    """The members of the archive stored uncompressed, memory-mapped (:func:`smof_onnx.stream.npz_member`)."""
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.filename.endswith(".npy"):
                    arr = npz_member(path, info)
                    if arr is not None:
                        out[info.filename[:-4]] = arr
    except (OSError, EOFError, zipfile.BadZipFile, ValueError):
        return {}  # np.load reports the broken archive
    return out


def _read_npz(path: Path, specs: list[InputSpec]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    if _sniff(path) == "npy":  # a single array under a .npz name: read it as the .npy it is
        return _read_npy(path, specs), None
    _check_npz_headers(path)
    try:
        mapped = _mapped_members(path)
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: mapped[k] if k in mapped else npz[k] for k in npz.files}
    except ValueError as exc:
        raise DataError(f"{path}: cannot read the arrays ({exc}); object/pickled arrays are not accepted: "
                        "convert them to numeric arrays (e.g. a.astype(numpy.float32)) and save them again") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc}); the file may be truncated: {_SAVE_HINT}") from exc
    labels = arrays.pop("labels", None)
    names = [s.name for s in specs]
    if not arrays:
        raise DataError(f"{path}: holds no input arrays (only {['labels'] if labels is not None else []})")
    matched = {k: v for k, v in arrays.items() if k in names}
    if len(matched) == len(names):
        return matched, labels
    if len(arrays) == 1 and len(names) == 1:
        return {names[0]: next(iter(arrays.values()))}, labels
    missing = [n for n in names if n not in arrays]
    raise DataError(f"{path}: no array for model input(s) {missing}; the file holds {sorted(arrays)}. "
                    f"Key the arrays by the model's input names {names}")


def _read_npy(path: Path, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    if _sniff(path) == "npz":  # an archive under a .npy name: read it as the .npz it is
        arrays, labels = _read_npz(path, specs)
        if labels is not None:
            raise DataError(f"{path}: is an .npz archive (with labels) named .npy; rename it to .npz")
        return arrays
    with open(path, "rb") as f:
        _declared(f, str(path), os.fstat(f.fileno()).st_size, held=False)
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as exc:
        raise DataError(f"{path}: cannot read the array ({exc}); object/pickled arrays are not accepted: "
                        "convert them to numeric arrays (e.g. a.astype(numpy.float32)) and save them again") from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy file ({exc}); the file may be truncated: {_SAVE_HINT}") from exc
    if len(specs) != 1:
        raise DataError(f"{path}: a .npy holds one array, but the model has inputs {[s.name for s in specs]}; "
                        "use a .npz keyed by input name")
    return {specs[0].name: array}


def _read_images(path: Path, specs: list[InputSpec], input_shapes,
                 opts: DataOptions) -> tuple[dict[str, LazyRows], np.ndarray | None]:
    try:
        import PIL  # noqa: F401 - decoding happens per batch (:mod:`smof_onnx.stream`)
    except ImportError:
        raise DataError(f"{path}: reading a folder of images needs Pillow, which is not installed "
                        "(`pip install 'smof-onnx[images]'` or `pip install pillow`), or convert the images to a .npz") from None
    if len(specs) != 1:
        raise DataError(f"{path}: a folder of images feeds one input, but the model has {[s.name for s in specs]}")
    spec = specs[0]
    dims = list(input_shapes[spec.name]) if input_shapes and spec.name in input_shapes else list(spec.dims)
    if len(dims) != 4:
        raise DataError(f"{path}: images need a rank-4 input, but '{spec.name}' has shape {_fmt(dims)}")
    layout = opts.layout or ("NHWC" if dims[3] in (1, 3) and dims[1] not in (1, 3) else "NCHW")
    channels, hw = (dims[1], dims[2:4]) if layout == "NCHW" else (dims[3], dims[1:3])
    if channels not in (1, 3):
        raise DataError(f"{path}: images give 1 or 3 channels, but input '{spec.name}' wants {channels} "
                        f"(shape {_fmt(dims)}, layout {layout})")
    if opts.image_size is not None:
        clash = [(a, d, g) for a, d, g in zip(("height", "width"), hw, opts.image_size) if d is not None and d != g]
        if clash:
            raise UsageError(f"--image-size {opts.image_size[0]},{opts.image_size[1]}: the model's input "
                             f"'{spec.name}' has a static {clash[0][0]} of {clash[0][1]} (shape {_fmt(dims)}, layout "
                             f"{layout}); give --image-size {hw[0]},{hw[1]} or leave it out")
    size = list(opts.image_size) if opts.image_size is not None else hw
    if len(size) != 2 or any(s is None for s in size):
        raise DataError(f"{path}: input '{spec.name}' has symbolic spatial dims {_fmt(dims)}; give --image-size H,W")
    fmt = ImageFormat((int(size[0]), int(size[1])), int(channels), opts.channel_order, layout,
                      tuple(_per_channel(opts.mean, 0.0, channels, "--mean")),
                      tuple(_per_channel(opts.std, 1.0, channels, "--std")))

    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    labels = None
    if opts.labels_from_folders:
        classes = sorted({p.relative_to(path).parts[0] for p in files if len(p.relative_to(path).parts) == 2})
        stray = [p for p in files if len(p.relative_to(path).parts) != 2]
        if not classes or stray:
            raise DataError(f"{path}: --labels-from-folders needs every image one level down in a class folder "
                            f"({stray[0] if stray else 'no class folders'} is not)")
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[p.relative_to(path).parts[0]] for p in files], np.int64)
    for f in files:  # the file list: every header readable before any training
        check_image_header(f)
    return {spec.name: ImageRows(files, fmt)}, labels


def _per_channel(value, default: float, channels: int, what: str) -> np.ndarray:
    v = np.asarray(default if value is None else value, np.float32).reshape(-1)
    if v.size not in (1, channels):
        raise UsageError(f"{what} has {v.size} values, but the model's input has {channels} channel(s); give 1 "
                         f"value or {channels}")
    if what.endswith("std") and np.any(v <= 0):
        raise UsageError(f"{what}: every value must be > 0")
    return np.broadcast_to(v, (channels,)).copy()


# ------------------------------------------------------------------------ validation

def _fmt(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def validate(arrays: Mapping[str, np.ndarray], labels, specs: list[InputSpec],
             input_shapes: Mapping[str, Sequence[int]] | None, source: str) -> CalibrationData:
    """Check ``arrays`` / ``labels`` against the model inputs (rules in the module docstring)."""
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(f"{source}: no data for model input(s) {missing}; found {sorted(arrays)}, "
                        f"the model's inputs are {names}")
    out: dict[str, np.ndarray] = {}
    count = None
    for spec in specs:
        a = arrays[spec.name]
        if not isinstance(a, (LazyRows, np.memmap)):
            a = np.asarray(a)
        dims = list(spec.dims)
        if input_shapes and spec.name in input_shapes:
            given = [int(d) for d in input_shapes[spec.name]]
            if len(given) == len(dims):
                dims = [None] + given[1:]
        expected = _fmt(["N"] + dims[1:]) if dims else "[]"
        if (a.ndim == len(dims) + 1 and dims and dims[0] != 1 and all(d is not None for d in dims)
                and list(a.shape[1:]) == dims):
            raise DataError(f"{source}: input '{spec.name}' has shape {_fmt(dims)} with no batch axis, so the model "
                            f"takes one sample of {_fmt(dims)} at a time and the {a.shape[0]} samples of the data "
                            "cannot be fed to it; export the model with a batch axis (e.g. "
                            f"{_fmt(['N'] + dims)}) and run again")
        if a.ndim != len(dims):
            raise DataError(f"{source}: input '{spec.name}' expects rank {len(dims)} {expected}, found an array "
                            f"of shape {list(a.shape)} (rank {a.ndim})")
        bad = [i for i, d in enumerate(dims) if i > 0 and d is not None and a.shape[i] != d]
        if bad:
            raise DataError(f"{source}: input '{spec.name}' expects shape {expected}, found {list(a.shape)} "
                            f"(axis {bad[0]}: expected {dims[bad[0]]}, found {a.shape[bad[0]]})")
        if a.ndim == 0 or a.shape[0] == 0:
            raise DataError(f"{source}: input '{spec.name}' has no samples (shape {list(a.shape)})")
        if not _convertible(a.dtype, spec.dtype):
            raise DataError(f"{source}: input '{spec.name}' expects dtype {spec.dtype.name}, found {a.dtype.name}, "
                            "which does not convert without changing kind")
        if a.dtype.kind in "fc" and not _finite(a):
            raise DataError(f"{source}: input '{spec.name}' contains NaN or infinite values"
                            + (" (in the first batch)" if isinstance(a, ImageRows) else ""))
        if count is not None and a.shape[0] != count:
            raise DataError(f"{source}: input '{spec.name}' has {a.shape[0]} samples, input '{specs[0].name}' "
                            f"has {count}")
        count = a.shape[0]
        if isinstance(a, np.memmap):
            out[spec.name] = ArrayRows(a, spec.dtype)
        elif isinstance(a, LazyRows):
            out[spec.name] = a if a.dtype == spec.dtype else ArrayRows(a, spec.dtype)
        else:
            out[spec.name] = np.ascontiguousarray(a.astype(spec.dtype, copy=False))
    if labels is not None:
        labels = _check_labels(np.asarray(labels), count, source)
    return CalibrationData(out, labels, source)


FIRST_BATCH = 32  # images decoded (and checked) before any training
_SCAN_ROWS = 1 << 22  # values per chunk of the finiteness scan of a memory-mapped array


def _finite(a) -> bool:
    """All values finite: an in-memory array at once, a memory-mapped one a chunk at a time, a
    folder of images on its first batch (decoding it checks the files too)."""
    if isinstance(a, ImageRows):
        return bool(np.all(np.isfinite(a[:FIRST_BATCH])))
    if isinstance(a, (LazyRows, np.memmap)):
        step = max(1, _SCAN_ROWS // max(1, int(np.prod(a.shape[1:]))))
        return all(np.all(np.isfinite(np.asarray(a[i:i + step]))) for i in range(0, len(a), step))
    return bool(np.all(np.isfinite(a)))


def _convertible(found: np.dtype, want: np.dtype) -> bool:
    if found.kind in "OSUV":
        return False
    if want.kind == "f":
        return found.kind in "fiub"
    return bool(np.can_cast(found, want, casting="same_kind"))


def _check_labels(labels: np.ndarray, count: int | None, source: str) -> np.ndarray:
    if labels.ndim != 1:
        raise DataError(f"{source}: 'labels' must be 1-D (one class index per sample), found shape "
                        f"{list(labels.shape)}")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise DataError(f"{source}: 'labels' must be integer class indices, found non-integer floats")
    elif labels.dtype.kind not in "iub":
        raise DataError(f"{source}: 'labels' must be integer class indices, found dtype {labels.dtype.name}")
    if count is not None and len(labels) != count:
        raise DataError(f"{source}: 'labels' has {len(labels)} entries but the inputs have {count} samples")
    if labels.size and labels.min() < 0:
        raise DataError(f"{source}: 'labels' holds negative class indices")
    return labels.astype(np.int64)
