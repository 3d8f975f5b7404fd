"""The everyday handling a picture meets between a generator and a detector, as functions: re-encoding (JPEG,
WebP, AVIF where Pillow can write it), resizing (kept at the new size, or there and back), cropping, small
rotations, brightness and contrast, sensor-like noise and a screenshot. numpy + Pillow.

Every attack maps one uint8 (H, W, C) image (C = 1 or 3; grey stays grey) to a uint8 (H', W', C) image and is
deterministic given its `seed` (only crops and noise draw anything). `grid("full")` is the benchmark's grid
(benchmarks/mark_attacks.py), `grid("small")` a few points of each kind for tests; each entry is an `Attack`
(family, label, strength, apply), a named tuple, and `attack.apply(image, seed=0)` runs it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import PIL
from PIL import Image, ImageEnhance, features

RESAMPLE = {"bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS, "nearest": Image.NEAREST,
            "bilinear": Image.BILINEAR}


def _pil(image: np.ndarray) -> Image.Image:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 (H, W, 1 or 3), got {image.dtype} {image.shape}")
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _array(pil: Image.Image, channels: int) -> np.ndarray:
    out = np.asarray(pil.convert("L" if channels == 1 else "RGB"))
    return out[..., None] if out.ndim == 2 else out


def can_write(fmt: str) -> bool:
    """Whether this Pillow can encode `fmt` ("JPEG", "WEBP", "AVIF")."""
    Image.init()
    if fmt.upper() not in Image.SAVE:
        return False
    feature = {"WEBP": "webp", "AVIF": "avif"}.get(fmt.upper())
    return features.check(feature) if feature else True


# --------------------------------------------------------------------------------------------------- codecs

def encode_round_trip(image: np.ndarray, fmt: str, **options) -> np.ndarray:
    """Written as `fmt` with Pillow's `options` and read back (same size and channels)."""
    buf = io.BytesIO()
    _pil(image).save(buf, fmt, **options)
    buf.seek(0)
    return _array(Image.open(buf), image.shape[-1])


def jpeg(image: np.ndarray, quality: int = 75) -> np.ndarray:
    """A JPEG round trip at `quality` (Pillow's default 4:2:0 chroma subsampling for colour)."""
    return encode_round_trip(image, "JPEG", quality=int(quality))


def webp(image: np.ndarray, quality: int = 80) -> np.ndarray:
    """A lossy WebP round trip at `quality`."""
    return encode_round_trip(image, "WEBP", quality=int(quality))


def avif(image: np.ndarray, quality: int = 75) -> np.ndarray:
    """A lossy AVIF round trip at `quality` (needs a Pillow built with AVIF write support: `can_write("AVIF")`)."""
    return encode_round_trip(image, "AVIF", quality=int(quality))


def h264(image: np.ndarray, crf: int = 23) -> np.ndarray:
    """One frame through H.264 (libx264 via PyAV, yuv420p, `crf`) and back: what a still meets inside a video.
    Odd sides are padded by one edge pixel for the codec and cut again. Not in `grid` (a video attack; needs
    PyAV with libx264)."""
    import av

    h, w, c = image.shape
    rgb = np.repeat(image, 3, axis=-1) if c == 1 else image
    rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
        stream.options = {"crf": str(int(crf)), "preset": "medium"}
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    buf.seek(0)
    with av.open(buf) as src:
        frame = next(src.decode(video=0)).to_ndarray(format="rgb24")[:h, :w]
    if c == 1:
        return np.asarray(Image.fromarray(frame).convert("L"))[..., None]
    return frame


# ---------------------------------------------------------------------------------------------------- geometry

def _size(h: int, w: int, factor: float) -> tuple[int, int]:
    return max(1, round(h * factor)), max(1, round(w * factor))


def resize(image: np.ndarray, factor: float, method: str = "bicubic") -> np.ndarray:
    """Resized by `factor` (each side rounded) with Pillow's `method` and kept at the new size."""
    h, w = image.shape[:2]
    nh, nw = _size(h, w, factor)
    return _array(_pil(image).resize((nw, nh), RESAMPLE[method]), image.shape[-1])


def resize_round_trip(image: np.ndarray, factor: float, method: str = "bicubic") -> np.ndarray:
    """Resized by `factor` and back to the original size, both with `method`."""
    h, w = image.shape[:2]
    small = resize(image, factor, method)
    return _array(_pil(small).resize((w, h), RESAMPLE[method]), image.shape[-1])


def crop(image: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """`fraction` of each side cut off (at least one pixel), split between the two ends at random (seeded): the
    pixels lost off the top are uniform in 0..cut, the rest off the bottom; likewise left and right. The crop
    keeps its smaller size."""
    h, w = image.shape[:2]
    rng = np.random.default_rng(seed)
    cut_h, cut_w = max(1, round(fraction * h)), max(1, round(fraction * w))
    top, left = int(rng.integers(0, cut_h + 1)), int(rng.integers(0, cut_w + 1))
    return np.ascontiguousarray(image[top:top + h - cut_h, left:left + w - cut_w])


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotated by `degrees` (counter-clockwise) about the centre, bicubic, same size, corners filled black."""
    pil = _pil(image)
    fill = 0 if pil.mode == "L" else (0, 0, 0)
    return _array(pil.rotate(degrees, resample=Image.BICUBIC, expand=False, fillcolor=fill), image.shape[-1])


# ------------------------------------------------------------------------------------------------------ tone

def brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """Pillow's ImageEnhance.Brightness: every value times `factor` (1.1 = +10%), clipped."""
    return _array(ImageEnhance.Brightness(_pil(image)).enhance(factor), image.shape[-1])


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Pillow's ImageEnhance.Contrast: values pulled towards (factor < 1) or pushed from the mean grey level."""
    return _array(ImageEnhance.Contrast(_pil(image)).enhance(factor), image.shape[-1])


def gaussian_noise(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Independent N(0, sigma^2) added to every value (seeded), rounded and clipped."""
    rng = np.random.default_rng(seed)
    noisy = image.astype(np.float64) + rng.normal(0.0, sigma, image.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def screenshot(image: np.ndarray, factor: float = 1.5, quality: int = 80) -> np.ndarray:
    """What a screenshot of a displayed picture tends to be: resized by `factor` (bilinear, as a browser scales)
    and saved as JPEG at `quality`; kept at the new size."""
    return jpeg(resize(image, factor, "bilinear"), quality)


# ------------------------------------------------------------------------------------------------------ grids

class Attack(NamedTuple):
    """One point of the grid: `family` (a curve of the plots), `label` (readable), `strength` (the number on
    the curve's x axis) and `apply(image, seed=0)`."""

    family: str
    label: str
    strength: float
    apply: Callable[..., np.ndarray]


def _fixed(fn, **kw) -> Callable[..., np.ndarray]:
    def apply(image: np.ndarray, seed: int = 0) -> np.ndarray:
        return fn(image, **kw)

    apply.__name__ = f"{fn.__name__}({', '.join(f'{k}={v}' for k, v in kw.items())})"
    return apply


def _seeded(fn, **kw) -> Callable[..., np.ndarray]:
    def apply(image: np.ndarray, seed: int = 0) -> np.ndarray:
        return fn(image, seed=seed, **kw)

    apply.__name__ = f"{fn.__name__}({', '.join(f'{k}={v}' for k, v in kw.items())})"
    return apply


def _none(image: np.ndarray, seed: int = 0) -> np.ndarray:
    return np.asarray(image).copy()


FULL = {
    "jpeg": (30, 40, 50, 60, 70, 75, 80, 90, 95),
    "webp": (50, 60, 70, 80, 90, 95),
    "avif": (50, 75, 90),
    "resize": (0.5, 0.75, 1.5, 2.0),
    "crop": (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25),
    "rotate": (-5, -3, -2, -1, 1, 2, 3, 5),
    "tone": (0.8, 0.9, 1.1, 1.2),
    "noise": (2, 4, 8),
    "screenshot": (0.75, 1.5),
    "methods": ("bicubic", "lanczos", "nearest"),
}
SMALL = {
    "jpeg": (50, 75, 90),
    "webp": (80,),
    "avif": (75,),
    "resize": (0.5, 2.0),
    "crop": (0.05, 0.1),
    "rotate": (-1, 2),
    "tone": (0.9, 1.2),
    "noise": (4,),
    "screenshot": (1.5,),
    "methods": ("bicubic",),
}


def grid(scale: str = "full") -> list[Attack]:
    """The attacks of benchmarks/mark_attacks.py ("full") or a few of each kind ("small", for tests). The first
    entry is "none" (the image as found). AVIF is included only where `can_write("AVIF")`; `skipped(scale)`
    says what was left out and why."""
    if scale not in ("full", "small"):
        raise ValueError(f"scale: 'full' or 'small', not {scale!r}")
    g = FULL if scale == "full" else SMALL
    out = [Attack("none", "none", 0.0, _none)]
    out += [Attack("jpeg", f"JPEG {q}", q, _fixed(jpeg, quality=q)) for q in g["jpeg"]]
    if can_write("WEBP"):
        out += [Attack("webp", f"WebP {q}", q, _fixed(webp, quality=q)) for q in g["webp"]]
    if can_write("AVIF"):
        out += [Attack("avif", f"AVIF {q}", q, _fixed(avif, quality=q)) for q in g["avif"]]
    for m in g["methods"]:
        out += [Attack(f"resize {m}", f"x{f:g} {m}", f, _fixed(resize, factor=f, method=m)) for f in g["resize"]]
    for m in g["methods"]:
        out += [Attack(f"resize and back {m}", f"x{f:g} and back {m}", f,
                       _fixed(resize_round_trip, factor=f, method=m)) for f in g["resize"]]
    out += [Attack("crop", f"crop {c:.0%} of each side", c * 100, _seeded(crop, fraction=c)) for c in g["crop"]]
    out += [Attack("rotate", f"rotate {d:+g} deg", d, _fixed(rotate, degrees=d)) for d in g["rotate"]]
    out += [Attack("brightness", f"brightness {f - 1:+.0%}", round((f - 1) * 100), _fixed(brightness, factor=f))
            for f in g["tone"]]
    out += [Attack("contrast", f"contrast {f - 1:+.0%}", round((f - 1) * 100), _fixed(contrast, factor=f))
            for f in g["tone"]]
    out += [Attack("noise", f"Gaussian noise sigma {s}", s, _seeded(gaussian_noise, sigma=s)) for s in g["noise"]]
    out += [Attack("screenshot", f"screenshot x{f:g} bilinear + JPEG 80", f, _fixed(screenshot, factor=f, quality=80))
            for f in g["screenshot"]]
    return out


def skipped(scale: str = "full") -> dict[str, str]:
    """The attack families `grid(scale)` leaves out on this machine, with the reason."""
    out = {}
    for fmt, family in (("WEBP", "webp"), ("AVIF", "avif")):
        if not can_write(fmt):
            out[family] = f"this Pillow ({PIL.__version__}) cannot write {fmt}"
    return out


ATTACKS: dict[str, Attack] = {a.label: a for a in grid("full")}
