"""A video GAN: MoCoGAN's split of a clip into content and motion (Tulyakov et al. 2018), drawn with the DCGAN
blocks of models/dcgan.py.

Generator: z = [content | motion]. The content part (and the label) is shared by every frame; the motion part sets
the coefficients of a Fourier series in time, whose value at frame t is that frame's motion code. Each frame is the
DCGAN generator's image of [content, motion code t]. MoCoGAN draws motion codes with a GRU fed fresh noise every
frame; Moving MNIST's motion is a deterministic function of where and how fast a digit starts, and a bouncing
coordinate is a triangle wave, which a few harmonics describe. So randomness enters once (a clip is a function
of z), any number of frames can be drawn, and the network has no recurrence: it exports to ONNX with the clip
length free (an exported GRU fixes the batch and sequence sizes it was traced with). The frequencies are learnt,
starting at periods from 2 to 64 frames.

`motion="shift"`: the series gives each frame a shift (dx, dy) instead of a code, and the DCGAN generator draws
one image per clip, which the frames show moved (bilinear, background coming in at the edges). Content then
cannot change between frames by construction; the motion is translation only, which is Moving MNIST's (and a
camera pan's) but not a turning or deforming object's. On `moving-mnist-gan`, "latent" kept a clip's digit in
only about half of its frames (identity consistency 0.49 after an hour); "shift" kept it by construction, but in
a 15-minute trial its D won and it drew two or three shapes for all digits (docs/design-notes.md).

Discriminator: MoCoGAN's two critics as one module with two outputs per clip, [clip score, mean frame score]
(the losses average them): the DCGAN discriminator on every frame (is each frame a digit?) and a 3-D
convolutional one on the whole clip (is the motion right?), each a projection discriminator when conditional.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genforge.models.dcgan import Discriminator, Generator, resolve_d_norm, stages_for

MOTIONS = ("latent", "shift")


class ClipGenerator(nn.Module):
    def __init__(self, image_size: int, channels: int, frames: int, z_dim: int = 100, motion_dim: int = 16,
                 width: int = 64, num_classes: int = 0, embed_dim: int = 50, extra_layers: int = 0, harmonics: int = 8,
                 motion: str = "latent"):
        super().__init__()
        if not 0 < motion_dim < z_dim:
            raise ValueError(f"motion_dim must be within 1..z_dim-1 ({z_dim - 1}); got {motion_dim}")
        if motion not in MOTIONS:
            raise ValueError(f"motion must be one of {', '.join(MOTIONS)}; got {motion!r}")
        self.z_dim, self.motion_dim, self.frames, self.num_classes = z_dim, motion_dim, frames, num_classes
        self.motion, self.codes, self.label_prior = motion, 0, None
        self.omega = nn.Parameter(2 * math.pi / torch.logspace(math.log10(2), math.log10(64), harmonics))
        out = motion_dim if motion == "latent" else 2  # a motion code per frame, or a shift (dx, dy) per frame
        self.series = nn.Linear(motion_dim, out * (2 * harmonics + 1))  # cos, sin and a constant per output
        frame_in = z_dim if motion == "latent" else z_dim - motion_dim
        self.frame = Generator(image_size, channels, frame_in, width, num_classes, embed_dim, extra_layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, frames: int | None = None,
                times: torch.Tensor | None = None) -> torch.Tensor:
        """z (N, z_dim) -> clips (N, T, C, H, W) in [-1, 1]: frames 0..T-1, T = `frames` or the trained length
        (or the frame indices `times`, a float tensor (T,))."""
        n = z.shape[0]  # not len(z), which the exporter reads as a constant
        if times is None:
            times = torch.arange(frames or self.frames, device=z.device, dtype=torch.float32)
        t = times.shape[0]
        content, motion = z[:, : self.z_dim - self.motion_dim], z[:, self.z_dim - self.motion_dim :]
        phase = times[:, None] * self.omega[None]  # (T, K)
        basis = torch.cat([torch.cos(phase), torch.sin(phase), torch.ones_like(phase[:, :1])], 1)  # (T, 2K+1)
        coeffs = self.series(motion).view(n, -1, basis.shape[1])  # (N, D, 2K+1)
        steps = (coeffs @ basis.to(coeffs.dtype).t()).transpose(1, 2)  # (N, T, D): the series at each frame
        if self.motion == "shift":  # one image per clip, moved: the content cannot change between frames
            image = self.frame(content, labels)  # (N, C, H, W)
            return shifted(image, torch.tanh(steps))
        codes = torch.cat([content[:, None].expand(n, t, content.shape[1]), steps], 2).flatten(0, 1)
        x = self.frame(codes, labels[:, None].expand(n, t).flatten() if labels is not None else None)
        return x.unflatten(0, (n, t))


def shifted(image: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """image (N, C, H, W) in [-1, 1] moved by offsets (N, T, 2) (x, y in units of half the frame, as grid_sample's
    coordinates) -> (N, T, C, H, W); what comes in from outside the frame is background (-1). Bilinear, so the
    shift is differentiable and sub-pixel."""
    n, t = offsets.shape[:2]
    h, w = image.shape[-2:]
    ys = (torch.arange(h, device=image.device, dtype=offsets.dtype) * 2 + 1) / h - 1
    xs = (torch.arange(w, device=image.device, dtype=offsets.dtype) * 2 + 1) / w - 1
    base = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], -1)  # (H, W, 2): x, y
    grid = base[None] - offsets.reshape(n * t, 1, 1, 2)  # sampling at p - offset moves the image by +offset
    frames = image[:, None].expand(n, t, *image.shape[1:]).flatten(0, 1) + 1  # background 0 for zero padding
    out = F.grid_sample(frames, grid.to(frames.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    return (out - 1).unflatten(0, (n, t))


class ClipDiscriminator(nn.Module):
    def __init__(self, image_size: int, channels: int, width: int = 64, num_classes: int = 0,
                 spectral_norm: bool = False, hidden: int = 0, norm: str | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.frame = Discriminator(image_size, channels, width, num_classes, 0, spectral_norm, hidden, 0, norm)
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        layer_norm = resolve_d_norm(norm, spectral_norm) != "none"  # batch statistics across clips: layer norm here
        layers: list[nn.Module] = []
        ch_in, ch = channels, width
        for i in range(stages_for(image_size)):  # halve space, keep time; 3 frames of context per layer
            layers.append(sn(nn.Conv3d(ch_in, ch, (3, 4, 4), (1, 2, 2), (1, 1, 1))))
            if i > 0 and layer_norm:
                layers.append(nn.GroupNorm(1, ch))
            layers.append(nn.LeakyReLU(0.2))
            ch_in, ch = ch, ch * 2
        self.clip = nn.Sequential(*layers)
        self.clip_head = sn(nn.Linear(ch_in, 1))
        if num_classes:
            self.clip_embed = nn.Embedding(num_classes, ch_in)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, code_logits: bool = False,
                groups: int = 1, fp32: bool = False) -> torch.Tensor:
        """x (N, T, C, H, W) -> (N, 2): [clip score, mean of the frames' scores]. `groups`/`fp32` as the image D's."""
        if code_logits:
            raise ValueError("a video discriminator has no InfoGAN code head")
        if fp32:
            with torch.autocast(x.device.type, enabled=False):
                return self._scores(x.float(), labels, groups)
        return self._scores(x, labels, groups)

    def _scores(self, x, labels, groups):
        n, t = x.shape[:2]
        frame_labels = labels.repeat_interleave(t) if labels is not None else None
        frame = self.frame(x.flatten(0, 1), frame_labels, groups=groups).view(n, t).mean(1)
        h = self.clip(x.transpose(1, 2)).mean((2, 3, 4))  # (N, C): pooled over time and space, any length
        clip = self.clip_head(h).squeeze(1)
        if self.num_classes:
            if labels is None:
                raise ValueError("this discriminator is class-conditional: pass labels")
            clip = clip + (self.clip_embed(labels) * h).sum(1)
        return torch.stack([clip, frame], 1)
