"""Rendered, label-free calibration images for the PP-OCR cls, rec and det models.

The rapidocr wheel ships models but no images, so we draw our own with Pillow (the ``images``
extra). Nothing here is a label the compressor needs: ``compress`` distils from the original
model's outputs; the ``flipped`` flags and text masks exist only so tests can check that the
real models read the renderings the way they read real crops and pages; ``text_lines`` also
returns the rendered strings, which the real rec model reads back (tests check how well).

What is rendered
- ``text_lines``: one text line per image, as the det stage would crop it: a random string of
  4..24 characters (Latin letters, digits, a little punctuation; CJK only when a found font has
  the glyphs, DejaVu has none), a random TrueType font of 18..40 px, random light-on-dark or
  dark-on-light colours, a 1..6 px margin, a rotation of at most 2 degrees, Gaussian noise with
  sigma 0..8. A ``flipped`` share is turned by 180 degrees: the cls model's two classes are
  labels ['0', '180'] (config.yaml ``Cls.label_list``), output index 1 = upside down.
- ``pages``: a document page of H x W (multiples of 32) with 3..10 non-overlapping horizontal
  lines of random size, colour and position on a light, slightly tinted background with noise.
  ``pages_with_masks`` also returns the union of the lines' boxes (what DB's probability map
  marks as text).

Preprocessing, exactly as rapidocr-onnxruntime 1.4.4 does it (``config.yaml`` and the code
next to it in the wheel). Images are loaded by OpenCV, so channels are in **BGR** order.
- cls (``ch_ppocr_cls/text_cls.py::resize_norm_img``, ``Cls.cls_image_shape: [3, 48, 192]``):
  resize to height 48 keeping the aspect ratio, width ``min(192, ceil(48 * w / h))``
  (bilinear), then ``(x / 255 - 0.5) / 0.5`` in CHW, then pad on the right with 0 to width 192.
- rec (``ch_ppocr_rec/text_recognize.py::resize_norm_img``, ``Rec.rec_img_shape: [3, 48,
  320]``): the same resize / normalise / pad as cls at 48 x 320 (rapidocr widens a batch to its
  widest line's ratio; a line up to 320/48 wide, as rendered here, keeps width 320).
- det (``ch_ppocr_det/utils.py::DetPreProcess``, ``Det.mean: [0.5, 0.5, 0.5]``,
  ``Det.std: [0.5, 0.5, 0.5]``): ``(x / 255 - mean) / std``, HWC -> CHW. rapidocr first resizes
  the page so its short side is ``Det.limit_side_len: 736`` rounded to multiples of 32; we
  render directly at the requested size (multiples of 32), which that resize leaves unchanged
  in kind: text of a few to a few tens of pixels on a page the network sees whole.

Same seed -> same bytes (given the same fonts): all randomness comes from one
``numpy.random.default_rng(seed)`` and Pillow's drawing is deterministic.
"""
from __future__ import annotations

import dataclasses
import math
import string
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["text_lines", "pages", "pages_with_masks", "calibration", "find_fonts", "FONT_DIRS",
           "CLS_SHAPE", "REC_SHAPE", "DET_MEAN", "DET_STD"]

# rapidocr-onnxruntime 1.4.4 config.yaml: Cls.cls_image_shape, Rec.rec_img_shape, Det.mean, Det.std.
CLS_SHAPE = (3, 48, 192)
REC_SHAPE = (3, 48, 320)
DET_MEAN = (0.5, 0.5, 0.5)
DET_STD = (0.5, 0.5, 0.5)

FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype", "/usr/share/fonts",
             "/Library/Fonts", "C:/Windows/Fonts")
_LATIN = string.ascii_letters + string.digits + "  .,:-/()%#"
# frequent simplified-Chinese characters, drawn only when a font has them
_CJK = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动"
        "同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自"
        "二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日")


@dataclasses.dataclass(frozen=True)
class Fonts:
    """TrueType font files found on this machine, and whether one of them draws CJK.

    ``paths`` empty means only Pillow's built-in font (``ImageFont.load_default(size=...)``).
    """

    paths: tuple[str, ...]
    cjk: tuple[str, ...] = ()

    def load(self, rng: np.random.Generator, size: int, cjk: bool = False):
        from PIL import ImageFont

        pool = self.cjk if cjk and self.cjk else self.paths
        if not pool:
            return ImageFont.load_default(size=size)
        return ImageFont.truetype(pool[int(rng.integers(len(pool)))], size=size)


def find_fonts(dirs: Sequence[str] | None = None) -> Fonts:
    """TrueType fonts in the first of ``dirs`` (default :data:`FONT_DIRS`) that has any, sorted
    so the draw order is reproducible; math / symbol / emoji / extra-light faces, which lack
    ordinary or legible glyphs, are left out. None found: Pillow's built-in font is used."""
    from PIL import ImageFont

    found: list[str] = []
    for d in FONT_DIRS if dirs is None else dirs:
        p = Path(d)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*.ttf")
                           if not any(s in f.name.lower() for s in ("math", "symbol", "emoji", "extralight")))
            if found:
                break
    cjk = []
    for f in found:
        try:
            font = ImageFont.truetype(f, size=20)
        except OSError:
            continue
        # a font without the glyph draws .notdef: same mask for two different characters
        if font.getmask("的").getbbox() and bytes(font.getmask("的")) != bytes(font.getmask("是")):
            cjk.append(f)
    return Fonts(tuple(found), tuple(cjk))


def _random_text(rng: np.random.Generator, lo: int, hi: int, cjk: bool) -> str:
    n = int(rng.integers(lo, hi + 1))
    alphabet = _CJK if cjk else _LATIN
    chars = [alphabet[int(i)] for i in rng.integers(0, len(alphabet), n)]
    text = "".join(chars).strip()
    return text if len(text) >= 2 else "ab" + text


def _colours(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(background, ink) with a contrast of at least ~100 grey levels; 1 in 5 is light on dark."""
    light = rng.integers(170, 256, 3)
    dark = rng.integers(0, 80, 3)
    if rng.random() < 0.2:
        light, dark = dark, light
    return tuple(int(v) for v in light), tuple(int(v) for v in dark)


def _noisy(rgb: np.ndarray, rng: np.random.Generator, max_sigma: float) -> np.ndarray:
    sigma = float(rng.uniform(0, max_sigma))
    noise = rng.normal(0.0, sigma, rgb.shape) if sigma > 0 else 0.0
    return np.clip(rgb.astype(np.float64) + noise, 0, 255).round().astype(np.uint8)


def _render_line(rng: np.random.Generator, fonts: Fonts) -> tuple[np.ndarray, str]:
    """One tight text-line crop, RGB uint8 [h, w, 3], and the string drawn on it."""
    from PIL import Image, ImageDraw

    cjk = bool(fonts.cjk) and rng.random() < 0.2
    text = _random_text(rng, 4, 24, cjk)
    font = fonts.load(rng, int(rng.integers(18, 41)), cjk)
    bg, ink = _colours(rng)
    left, top, right, bottom = font.getbbox(text)
    mx, my = (int(v) for v in rng.integers(1, 7, 2))
    img = Image.new("RGB", (right - left + 2 * mx, bottom - top + 2 * my), bg)
    ImageDraw.Draw(img).text((mx - left, my - top), text, font=font, fill=ink)
    angle = float(rng.uniform(-2.0, 2.0))
    img = img.rotate(angle, resample=Image.BILINEAR, fillcolor=bg)
    return _noisy(np.asarray(img), rng, 8.0), text


def _cls_preprocess(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """rapidocr's ``resize_norm_img`` on an RGB crop: BGR, keep aspect, normalise, pad right."""
    from PIL import Image

    h, w = rgb.shape[:2]
    resized_w = min(width, int(math.ceil(height * w / float(h))))
    small = np.asarray(Image.fromarray(rgb).resize((resized_w, height), Image.BILINEAR))
    chw = small[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :resized_w] = (chw - 0.5) / 0.5
    return out


def text_lines(n: int, height: int = 48, width: int = 192, seed: int = 0, flipped: float = 0.5) -> dict:
    """``n`` rendered text-line crops preprocessed like PP-OCR's cls (48 x 192) or rec (48 x 320).

    Returns ``{"x": float32 [n, 3, height, width], "flipped": bool [n], "text": list of n str}``;
    ``flipped[i]`` says crop ``i`` was turned by 180 degrees (what the cls model detects), drawn
    with probability ``flipped``; ``text[i]`` is the string drawn on crop ``i``.
    """
    if n < 1 or height < 8 or width < 8:
        raise ValueError(f"text_lines: need n >= 1 and height, width >= 8; got n={n}, {height}x{width}")
    if not 0 <= flipped <= 1:
        raise ValueError(f"text_lines: flipped is a probability, got {flipped}")
    rng = np.random.default_rng(seed)
    fonts = find_fonts()
    x = np.empty((n, 3, height, width), np.float32)
    flags = rng.random(n) < flipped
    texts = []
    for i in range(n):
        crop, text = _render_line(rng, fonts)
        texts.append(text)
        if flags[i]:
            crop = np.ascontiguousarray(crop[::-1, ::-1])
        x[i] = _cls_preprocess(crop, height, width)
    return {"x": x, "flipped": flags, "text": texts}


def _boxes_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _render_page(rng: np.random.Generator, fonts: Fonts, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 [h, w, 3], bool [h, w] union of the text lines' boxes)."""
    from PIL import Image, ImageDraw

    base = rng.integers(185, 256)
    bg = tuple(int(np.clip(base + t, 0, 255)) for t in rng.integers(-15, 16, 3))
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    mask = np.zeros((h, w), bool)
    boxes: list[tuple[int, int, int, int]] = []
    wanted = int(rng.integers(3, 11))
    for _ in range(8 * wanted):
        if len(boxes) == wanted:
            break
        size = int(rng.integers(10, max(12, h // 7)))
        cjk = bool(fonts.cjk) and rng.random() < 0.2
        font = fonts.load(rng, size, cjk)
        text = _random_text(rng, 3, 30, cjk)
        left, top, right, bottom = font.getbbox(text)
        tw, th = right - left, bottom - top
        if tw >= w - 4 or th >= h - 4:
            continue
        x0, y0 = int(rng.integers(2, w - tw - 1)), int(rng.integers(2, h - th - 1))
        box = (x0, y0, x0 + tw, y0 + th)
        if any(_boxes_overlap(box, b, 3) for b in boxes):
            continue
        ink = tuple(int(v) for v in rng.integers(0, 90, 3))
        draw.text((x0 - left, y0 - top), text, font=font, fill=ink)
        boxes.append(box)
        mask[box[1]:box[3], box[0]:box[2]] = True
    return _noisy(np.asarray(img), rng, 6.0), mask


def _det_preprocess(rgb: np.ndarray) -> np.ndarray:
    """rapidocr's ``DetPreProcess.normalize`` + ``permute`` on an RGB page (BGR channel order)."""
    bgr = rgb[:, :, ::-1].astype(np.float32) / 255
    mean, std = np.asarray(DET_MEAN, np.float32), np.asarray(DET_STD, np.float32)
    return ((bgr - mean) / std).transpose(2, 0, 1)


def pages_with_masks(n: int, size: tuple[int, int] = (256, 256), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [n, 3, H, W] preprocessed like PP-OCR det, bool [n, H, W] text-box masks)."""
    h, w = (int(s) for s in size)
    if n < 1 or h < 32 or w < 32 or h % 32 or w % 32:
        raise ValueError(f"pages: need n >= 1 and H, W positive multiples of 32 (the det network's "
                         f"five stride-2 stages); got n={n}, size={tuple(size)}")
    rng = np.random.default_rng(seed)
    fonts = find_fonts()
    x = np.empty((n, 3, h, w), np.float32)
    masks = np.empty((n, h, w), bool)
    for i in range(n):
        rgb, masks[i] = _render_page(rng, fonts, h, w)
        x[i] = _det_preprocess(rgb)
    return x, masks


def pages(n: int, size: tuple[int, int] = (256, 256), seed: int = 0) -> np.ndarray:
    """``n`` rendered document pages of ``size`` (H, W), preprocessed like PP-OCR det."""
    return pages_with_masks(n, size, seed)[0]


def calibration(kind: str, n: int, seed: int = 0, **sizes) -> dict[str, np.ndarray]:
    """Label-free calibration data for the PP-OCR ``kind`` model, keyed by its real input name.

    ``kind="cls"``: :func:`text_lines` (sizes ``height``, ``width``; default 48 x 192), half of
    them turned by 180 degrees; ``kind="rec"``: upright :func:`text_lines` at 48 x 320 (sizes
    ``height``, ``width``); ``kind="det"``: :func:`pages` (size ``size=(H, W)``). No labels:
    ``compress`` distils from the model.
    """
    allowed = {"cls": {"height", "width"}, "rec": {"height", "width"}, "det": {"size"}}
    if kind not in allowed:
        raise ValueError(f"calibration: kind must be 'cls', 'rec' or 'det', not {kind!r}")
    unknown = sorted(set(sizes) - allowed[kind])
    if unknown:
        raise ValueError(f"calibration({kind!r}): unknown size option(s) {unknown}; known: {sorted(allowed[kind])}")
    if kind == "det":
        x = pages(n, seed=seed, **sizes)
    elif kind == "rec":
        x = text_lines(n, seed=seed, **({"height": REC_SHAPE[1], "width": REC_SHAPE[2]} | sizes), flipped=0.0)["x"]
    else:
        x = text_lines(n, seed=seed, **sizes)["x"]
    from .ppocr import INPUT_NAME  # every PP-OCR model's one input (tests/test_models_ppocr.py checks it)

    return {INPUT_NAME: x}
