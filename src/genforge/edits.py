"""What an image edit is given, checked and put in the model's terms: torch-free, shared by `genforge.load`'s
generators, the runtime of an export, the CLI and the server.

Three tasks: `inpaint` (fill a masked region), `vary` (image-to-image: variations of an input) and `upscale`
(super-resolution). Inputs are uint8 images (H, W, C) or (N, H, W, C); masks are True (or nonzero) where the
image is to be edited, (H, W) or (N, H, W[, 1]). An image of another size or colour mode than the model's is
converted, with a one-line notice (a warning); a mask follows its image (nearest neighbour).

The arrays handed to a family's `render` (as rows of its drawn inputs, so a server batches edits as it batches
generations):
- inpaint: `known` (the image, float (N, C, H, W) in [-1, 1]) and `keep` (float (N, 1, H, W): 1 known, 0 edit);
- vary: `start` (the image in [-1, 1]);
- upscale: `low` (the low-resolution image in [-1, 1]).
Each input is repeated `n` times (n results per input, input-major).
"""

from __future__ import annotations

import warnings

import numpy as np

from genforge.errors import UserError

TASKS = ("inpaint", "vary", "upscale")
VERBS = {"inpaint": "inpaint (fill a masked region)", "vary": "make variations", "upscale": "upscale"}


def check_task(task: str, tasks: tuple[str, ...], family: str) -> None:
    if task not in TASKS:
        raise UserError(f"Unknown edit {task!r}: one of {', '.join(TASKS)}.")
    if task not in tasks:
        if task == "upscale":
            why = ("only a super-resolution model upscales (a diffusion run trained with model.upscale_from, e.g. the "
                   "mnist-sr or cifar10-sr-cpu presets)")
        elif tasks == ("upscale",):
            why = "this is a super-resolution model: it upscales (genforge upscale) but does not inpaint or vary"
        elif family == "gan":
            why = ("a GAN has no encoder to map an image into its latent space (GAN inversion is not built): "
                   "inpaint and vary with a diffusion or VAE run")
        else:
            why = f"{family} models of this kind cannot"
        raise UserError(f"This model cannot {VERBS[task]}: {why}.")


def as_batch(images) -> np.ndarray:
    """uint8 (N, H, W, C) from one image or a batch (numpy or torch), 1 or 3 channels; (H, W) grey is accepted."""
    x = np.asarray(images.cpu() if hasattr(images, "cpu") else images)
    if x.ndim == 2:
        x = x[None, :, :, None]
    elif x.ndim == 3 and x.shape[-1] not in (1, 3, 4):
        x = x[..., None]  # a batch of grey (N, H, W)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.dtype != np.uint8 or x.shape[-1] not in (1, 3, 4):
        raise UserError(f"Images must be uint8 (H, W, C) or (N, H, W, C) with 1, 3 or 4 channels; got {x.dtype} {x.shape}.")
    if x.shape[-1] == 4:  # RGBA: the alpha is a mask's business, not the picture's
        x = x[..., :3]
    return x


def conform(images: np.ndarray, height: int, width: int, channels: int, what: str = "image") -> np.ndarray:
    """uint8 (N, H, W, C) in the model's size and colour mode, converted (Pillow: Lanczos, ITU-R 601 luma) with a
    notice when they differ; a non-square image for a square model is refused (cropping is the user's choice)."""
    n, h, w, c = images.shape
    if (h, w, c) == (height, width, channels):
        return images
    if (h, w) != (height, width) and h * width != w * height:
        raise UserError(f"The {what} is {w}x{h} but the model takes {width}x{height} and the shapes differ; crop it to "
                        f"{'a square' if height == width else f'{width}:{height}'} first.")
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    out = []
    for img in images:
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        pil = pil.convert(mode)
        if (h, w) != (height, width):
            pil = pil.resize((width, height), Image.Resampling.LANCZOS)
        a = np.asarray(pil)
        out.append(a[..., None] if a.ndim == 2 else a)
    changed = [f"{w}x{h} -> {width}x{height}" if (h, w) != (height, width) else "",
               f"{c} -> {channels} channels" if c != channels else ""]
    warnings.warn(f"converted the {what} to the model's size and colour mode ({', '.join(s for s in changed if s)})")
    return np.stack(out)


def as_masks(masks, count: int, height: int, width: int) -> np.ndarray:
    """bool (N, H, W), True where to edit, from one mask or one per image (bool, or numbers: nonzero edits)."""
    m = np.asarray(masks.cpu() if hasattr(masks, "cpu") else masks)
    if m.ndim == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise UserError(f"A mask must be (H, W) or (N, H, W), True where the image is to be edited; got shape {m.shape}.")
    m = m.astype(bool) if m.dtype == bool else m > (127 if m.dtype == np.uint8 and m.max() > 1 else 0)
    if len(m) == 1 and count > 1:
        m = np.repeat(m, count, 0)
    if len(m) != count:
        raise UserError(f"Got {len(m)} masks for {count} images: give one mask, or one per image.")
    if m.shape[1:] != (height, width):
        if m.shape[1] * width != m.shape[2] * height:
            raise UserError(f"The mask is {m.shape[2]}x{m.shape[1]}, its image {width}x{height}: they must match.")
        from PIL import Image

        warnings.warn(f"resized the mask from {m.shape[2]}x{m.shape[1]} to the model's {width}x{height} (nearest)")
        m = np.stack([np.asarray(Image.fromarray(x.astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST)) > 127
                      for x in m])
    if not m.any():
        warnings.warn("the mask marks no pixel to edit: the images come back unchanged")
    return m


def model_range(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [-1, 1] (the exact inverse of the outputs' rounding)."""
    return (images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(127.5) - np.float32(1.0)).astype(np.float32)


def area_downsample(images: np.ndarray, side: int) -> np.ndarray:
    """uint8 (N, H, W, C) -> uint8 (N, side, side, C), the mean of each whole block rounded: how a
    super-resolution model's training inputs were made (methods/diffusion.py `downsample`)."""
    n, h, w, c = images.shape
    f = h // side
    x = images.astype(np.float64).reshape(n, side, f, side, f, c).mean(axis=(2, 4))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def prepare(task: str, images, masks, n: int, image_shape: tuple[int, int, int], low_res: int = 0) -> dict[str, np.ndarray]:
    """The rows an edit adds to a family's drawn inputs (see the module's docstring), each input repeated n times."""
    if n < 1:
        raise UserError(f"n must be at least 1, got {n}.")
    h, w, c = image_shape
    x = as_batch(images)
    if task == "upscale":
        if x.shape[1:3] == (h, w) and low_res != h:  # a full-size image: its low-resolution version, as in training
            warnings.warn(f"the image is already {w}x{h}, the model's output size: upscaling its {low_res}x{low_res} "
                          "area-averaged version")
            x = area_downsample(conform(x, h, w, c), low_res)
        rows = {"low": model_range(conform(x, low_res, low_res, c, "low-resolution image"))}
    else:
        x = conform(x, h, w, c)
        if task == "inpaint":
            if masks is None:
                raise UserError("Inpainting needs a mask: True (or white, or transparent in an alpha mask) where to edit.")
            keep = ~as_masks(masks, len(x), h, w)
            rows = {"known": model_range(x), "keep": keep[:, None].astype(np.float32)}
        else:
            rows = {"start": model_range(x)}
    return {k: np.repeat(v, n, axis=0) for k, v in rows.items()}
