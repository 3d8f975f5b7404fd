"""Generated images as encoded bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, PngImagePlugin


def png_bytes(image: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """One uint8 (H, W, C) image (C = 1 or 3) as PNG bytes, with `text` as tEXt chunks (e.g. the model)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"expected a uint8 (H, W, 1|3) image, got {image.dtype} {image.shape}")
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, str(value))
    buf = io.BytesIO()
    pil.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
