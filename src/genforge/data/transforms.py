"""Pixel conventions and augmentation.

Datasets stay uint8 NHWC in memory (4x smaller than float); batches are converted to the models'
float NCHW [-1, 1] range on the fly, and augmentation runs batched on that tensor (on whatever
device it lives on) instead of per image in Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genforge.errors import UserError

_CHUNK = 2048  # images per step in preprocess: bounds the float copy to a few hundred MB
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, the weights Pillow uses for convert("L")


def _number(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"augment {name} must be a number, got {value!r}. Fix: use e.g. 0.1, or 0 to "
                        "turn it off.") from None


@dataclass(frozen=True)
class Augment:
    """Augmentation settings; everything is off by default.

    crop_padding: random crop of the original size after padding by this many (black) pixels.
    rotation: maximum rotation in degrees, drawn uniformly from [-rotation, rotation].
    scale: maximum relative zoom, drawn uniformly from [1 - scale, 1 + scale].
    hflip: mirror left-right with probability 0.5 (wrong for digits and text; off by default).
    """

    crop_padding: int = 0
    rotation: float = 0.0
    scale: float = 0.0
    hflip: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.crop_padding, bool) or not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise UserError(f"augment crop_padding must be a whole number >= 0, got {self.crop_padding!r}. "
                            "Fix: use e.g. 4 (pixels), or 0 to turn it off.")
        rotation, scale = _number(self.rotation, "rotation"), _number(self.scale, "scale")
        if not 0.0 <= rotation <= 180.0:
            raise UserError(f"augment rotation must be between 0 and 180 degrees, got {self.rotation!r}. "
                            "Fix: use e.g. 10, or 0 to turn it off.")
        if not 0.0 <= scale < 1.0:
            raise UserError(f"augment scale must be >= 0 and < 1 (zoom in [1-scale, 1+scale]), got "
                            f"{self.scale!r}. Fix: use e.g. 0.1, or 0 to turn it off.")

    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.rotation > 0 or self.scale > 0 or bool(self.hflip)


def _check_images(images: torch.Tensor, what: str) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"{what} expects uint8 images of shape (N, H, W, C) with C in (1, 3), got "
                         f"{images.dtype} {tuple(images.shape)}")


def check_preprocess_options(image_size: int | None, channels: int | None) -> None:
    """Validate before any data is read, so a typo fails fast."""
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 1):
        raise UserError(f"image_size must be a positive whole number of pixels, got {image_size!r}. "
                        "Fix: use e.g. 32, or leave it unset to keep the dataset's size.")
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise UserError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}. "
                        "Fix: use 1 or 3, or leave it unset to keep the dataset's channels.")


def preprocess(images: torch.Tensor, image_size: int | None, channels: int | None) -> torch.Tensor:
    """Resize to a square image_size (bilinear, antialiased) and/or convert to 1 or 3 channels.

    Done once at load time so the training loop never resizes. None leaves that property as is;
    when nothing changes the input tensor itself is returned.
    """
    _check_images(images, "preprocess")
    check_preprocess_options(image_size, channels)
    n, h, w, c = images.shape
    size = (h, w) if image_size is None else (image_size, image_size)
    c_out = c if channels is None else channels
    if size == (h, w) and c_out == c:
        return images
    out = torch.empty((n, size[0], size[1], c_out), dtype=torch.uint8, device=images.device)
    luma = torch.tensor(_LUMA, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    for start in range(0, n, _CHUNK):
        x = images[start:start + _CHUNK].permute(0, 3, 1, 2).to(torch.float32)
        if c == 3 and c_out == 1:  # reduce channels before resizing: less to resize
            x = (x * luma).sum(dim=1, keepdim=True)
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        if c == 1 and c_out == 3:
            x = x.expand(-1, 3, -1, -1)
        out[start:start + _CHUNK] = x.round().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return out


def to_model_range(batch_uint8_nhwc: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [-1, 1]; exact inverse of from_model_range."""
    _check_images(batch_uint8_nhwc, "to_model_range")
    x = batch_uint8_nhwc.permute(0, 3, 1, 2).to(dtype=torch.float32, memory_format=torch.contiguous_format)
    return x.div_(127.5).sub_(1.0)


def from_model_range(x_float_nchw: torch.Tensor) -> torch.Tensor:
    """float (N, C, H, W), nominally in [-1, 1] -> uint8 (N, H, W, C), clamped and rounded."""
    if x_float_nchw.dim() != 4 or not x_float_nchw.is_floating_point():
        raise ValueError(f"from_model_range expects a float tensor (N, C, H, W), got "
                         f"{x_float_nchw.dtype} {tuple(x_float_nchw.shape)}")
    x = x_float_nchw.detach().to(torch.float32).nan_to_num(0.0)
    x = ((x + 1.0) * 127.5).round_().clamp_(0, 255)
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def augment_batch(x: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """Randomly augment a float (N, C, H, W) batch in [-1, 1], one draw per image.

    Rotation, zoom, crop shift and flip are folded into one affine warp per image and applied
    with a single grid_sample; a flip-only setting uses an exact torch.where instead. All
    randomness comes from `generator` (on its own device), so a seeded run repeats exactly.
    Areas uncovered by the warp are black (-1), like zero padding of uint8 images.
    """
    if not aug.enabled():
        return x
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"augment_batch expects a float tensor (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    n, _, h, w = x.shape
    gdev = generator.device

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator, device=gdev, dtype=torch.float64) * 2.0 - 1.0) * limit

    flip = (torch.rand(n, generator=generator, device=gdev) < 0.5) if aug.hflip else None
    if not (aug.crop_padding > 0 or aug.rotation > 0 or aug.scale > 0):
        return torch.where(flip.to(x.device).view(n, 1, 1, 1), x.flip(-1), x)

    zeros = torch.zeros(n, dtype=torch.float64, device=gdev)
    angle = uniform(math.radians(aug.rotation)) if aug.rotation > 0 else zeros
    zoom = 1.0 + (uniform(aug.scale) if aug.scale > 0 else zeros)
    if aug.crop_padding > 0:
        p = aug.crop_padding
        shift = torch.randint(-p, p + 1, (n, 2), generator=generator, device=gdev).to(torch.float64)
    else:
        shift = torch.zeros(n, 2, dtype=torch.float64, device=gdev)

    # theta maps output to input coordinates, normalised to [-1, 1] per axis. A rotation in pixel
    # space becomes D R D^-1 with D = diag(2/W, 2/H); zooming in by z samples a region 1/z as large;
    # a crop offset of k pixels is a shift of 2k/size; the flip negates the output x coordinate.
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    fx = torch.where(flip, -1.0, 1.0).to(torch.float64) if flip is not None else torch.ones_like(cos)
    theta = torch.stack([
        torch.stack([cos * fx, -sin * (h / w), 2.0 * shift[:, 0] / w], dim=1),
        torch.stack([sin * (w / h) * fx, cos, 2.0 * shift[:, 1] / h], dim=1),
    ], dim=1)

    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    theta = theta.to(device=x.device, dtype=work.dtype)
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    # Shift to [0, 2] so grid_sample's zero padding means black (-1) after shifting back.
    out = F.grid_sample(work + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.sub_(1.0).clamp_(-1.0, 1.0).to(x.dtype)
