"""Generated images as files and bytes: PNG, JPEG or WebP, each with its XMP provenance (and a C2PA manifest
when a signer is given); grids for people to look at; raw arrays for pipelines."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from genforge.media.provenance import Record, Signer, c2pa_sign, xmp_packet

JPEG_QUALITY = 100  # the default: the mark then survives a later JPEG-75 re-encode (100% measured; written at
# 95: 91-94%; written at 75 and re-encoded at 75: 26%, the decoder's clipping makes the second pass differ)
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"expected a uint8 (H, W, 1|3) image, got {image.dtype} {image.shape}")
    return image


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def encode(image: np.ndarray, fmt: str = "PNG", record: Record | None = None, signer: Signer | None = None,
           quality: int | None = None, text: dict[str, str] | None = None, sources: list[bytes] | None = None) -> bytes:
    """One uint8 (H, W, C) image as PNG, JPEG or WebP bytes with `record` as XMP (PNG iTXt XML:com.adobe.xmp,
    JPEG APP1, WebP XMP chunk), then signed with C2PA when `signer` is given. JPEG and WebP at `quality`
    (WebP lossless at 100); by default JPEG 100 and lossless WebP, what the keyed image mark survives best
    (benchmarks/RESULTS.md). `text`: extra PNG tEXt chunks. `sources`: an edit's source files (one per
    `record.ingredients`), embedded as the C2PA manifest's ingredients when signing."""
    fmt = fmt.upper().replace("JPG", "JPEG")
    if fmt not in MIME:
        raise ValueError(f"image format {fmt!r}: use png, jpeg or webp")
    pil = to_pil(check_image(image))
    buf = io.BytesIO()
    xmp = xmp_packet(record) if record is not None else None
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        if xmp is not None:
            info.add_itxt("XML:com.adobe.xmp", xmp.decode(), zip=False)
        for key, value in (text or {}).items():
            info.add_text(key, str(value))
        pil.save(buf, format="PNG", pnginfo=info)
    else:
        if quality is None:
            quality = JPEG_QUALITY if fmt == "JPEG" else 100
        options = {"quality": quality}
        if fmt == "WEBP" and quality >= 100:
            options = {"lossless": True}
        pil.save(buf, format=fmt, **options, **({"xmp": xmp} if xmp is not None else {}))
    data = buf.getvalue()
    if signer is not None and record is not None:
        data = c2pa_sign(data, MIME[fmt], record, signer, sources)
    return data


def png_bytes(image: np.ndarray, text: dict[str, str] | None = None, record: Record | None = None,
              signer: Signer | None = None) -> bytes:
    return encode(image, "PNG", record, signer, text=text)


def decode(data: bytes) -> tuple[np.ndarray, bytes | None, str]:
    """Encoded image bytes -> (uint8 (H, W, C) pixels, its XMP packet or None, the format name).
    Raises ValueError for bytes that are not an image Pillow reads."""
    try:
        pil = Image.open(io.BytesIO(data))
        pil.load()
    except Exception as e:  # Pillow raises several types for a corrupt or foreign file
        raise ValueError(f"not an image Pillow can read ({type(e).__name__}: {e})") from e
    xmp = pil.info.get("xmp") or pil.info.get("XML:com.adobe.xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode()
    fmt = pil.format or "?"
    if pil.mode not in ("L", "RGB"):
        pil = pil.convert("RGB" if pil.mode not in ("1", "I", "I;16", "F", "LA") else "L")
    pixels = np.asarray(pil)
    return (pixels[..., None] if pixels.ndim == 2 else pixels), xmp, fmt


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 (N, H, W, C) -> one uint8 (H', W', C) image, `nrow` images per row, `pad` pixels of gap."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, H, W, C), got {images.shape}")
    n, h, w, c = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y: y + h, x: x + w] = img
    return grid


def save_grid(images: np.ndarray, path: str | Path, nrow: int | None = None, scale: int = 1,
              record: Record | None = None, signer: Signer | None = None, sources: list[bytes] | None = None) -> Path:
    """A grid of uint8 (N, H, W, C) images as one PNG, JPEG or WebP (by `path`'s suffix); `scale` enlarges small
    images for viewing (nearest neighbour)."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower(), "PNG")
    grid = make_grid(images, nrow)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    if record is not None:
        n, h, w, _ = np.asarray(images).shape
        cols = nrow or max(1, math.ceil(math.sqrt(n)))
        record = record.with_(parameters={**record.parameters, "grid": {"images": n, "columns": cols, "tile": [h, w],
                                                                        "pad": 2, "scale": scale}})
    _write(path, encode(grid, fmt, record, signer, sources=sources))
    return path


def write_images(images: np.ndarray, out: str, record: Record | None = None, nrow: int | None = None,
                 signer: Signer | None = None, fmt: str = "png", quality: int | None = None,
                 sources: list[bytes] | None = None) -> str:
    """Write generated images where `out` says: x.png / x.jpg / x.webp: one grid (a single image: itself, no
    border); x.npy: the uint8 array (N, H, W, C), no metadata (a pipeline's intermediate, not a media file); a
    folder (existing, or ending in /): one file each in `fmt`, each with its own record (its seed is the batch
    seed + its index). `sources`: an edit's source files, C2PA ingredients of every file signed.
    Returns what was written, for the user."""
    path = Path(out)
    as_dir = out.endswith(("/", "\\")) or path.is_dir()
    if as_dir:
        path.mkdir(parents=True, exist_ok=True)
        fmt = fmt.upper().replace("JPG", "JPEG")
        suffix = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}.get(fmt)
        if suffix is None:
            raise ValueError(f"image format {fmt!r}: use png, jpeg or webp")
        for i, img in enumerate(images):
            rec = None
            if record is not None:
                rec = record.with_(parameters={**record.parameters, "index": i})
            _write(path / f"{i:05d}.{suffix}", encode(img, fmt, rec, signer, quality, sources=sources))
        return f"wrote {len(images)} {suffix.upper()}s to {path}"
    if path.suffix.lower() == ".npy":
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, images)
        return f"wrote {path} {images.shape} uint8"
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"--out must end in .png, .jpg or .webp (a grid), .npy (array) or / (a folder); got '{out}'.")
    if len(images) == 1:
        _write(path, encode(images[0], FORMATS[path.suffix.lower()], record, signer, quality, sources=sources))
        h, w = images.shape[1:3]
        return f"wrote {path} ({w}x{h})"
    save_grid(images, path, nrow, record=record, signer=signer, sources=sources)
    return f"wrote {path} ({len(images)} images)"


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
