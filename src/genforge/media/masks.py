"""Inpainting masks from files: the two conventions people bring, read into one (True where to edit).

- `alpha` (OpenAI's images/edits): a PNG with an alpha channel, transparent where the image is to be edited
  (alpha below 128 counts as transparent, so a soft brush's edge is taken by its middle). Without a separate
  mask, the image's own transparent pixels are the mask, as OpenAI's API does.
- `white` (the black-and-white masks of diffusers, LaMa and most painting tools): white where to edit, black
  where to keep; judged by luma, 128 and above is white, any alpha ignored.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from genforge.errors import UserError

KINDS = ("alpha", "white")


def _open(source: bytes | str | Path, what: str) -> Image.Image:
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as e:
        raise UserError(f"{what} {source}: cannot read it ({e.strerror}).") from None
    try:
        pil = Image.open(io.BytesIO(data))
        pil.load()
    except Exception as e:  # Pillow raises several types for a corrupt or foreign file
        raise UserError(f"{what}: not an image Pillow can read ({type(e).__name__}). Send a PNG.") from None
    return pil


def has_transparency(source: bytes | str | Path) -> bool:
    """Whether an image file has an alpha channel with at least one transparent pixel (alpha < 128)."""
    pil = _open(source, "image")
    if pil.mode == "P" and "transparency" in pil.info:
        pil = pil.convert("RGBA")
    if pil.mode not in ("RGBA", "LA", "PA"):
        return False
    return bool((np.asarray(pil.getchannel("A")) < 128).any())


def read_mask(source: bytes | str | Path, kind: str = "alpha") -> np.ndarray:
    """bool (H, W), True where to edit, from a mask file (bytes or a path) of convention `kind`."""
    if kind not in KINDS:
        raise UserError(f"mask kind {kind!r}: one of {', '.join(KINDS)}.")
    pil = _open(source, "mask")
    if kind == "alpha":
        if pil.mode == "P" and "transparency" in pil.info:
            pil = pil.convert("RGBA")
        if pil.mode not in ("RGBA", "LA", "PA"):
            raise UserError(f"The mask has no alpha channel (mode {pil.mode}): an alpha mask is a PNG that is "
                            "transparent where to edit. For a black-and-white mask (white = edit) pass --bw-mask "
                            "(mask_kind=white).")
        return np.asarray(pil.getchannel("A")) < 128
    return np.asarray(pil.convert("L")) >= 128
