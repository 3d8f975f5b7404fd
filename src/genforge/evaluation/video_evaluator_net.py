"""The Moving-MNIST evaluator's network (see video_evaluator.py for what it is for): the recipe, the frame CNN
with its digit and position heads, the frames' input conversion and the training augmentation.

- Input: one frame, grayscale, at the run's frame size, in [-1, 1].
- Network: conv stages, then features from the flattened map (where) and its global max (what).
- Heads: 1 digit: 10-way digit identity and the digit's top-left (x, y) regressed in [0, 1] (0 = touching the
  left/top wall, 1 = the right/bottom wall, i.e. canvas pixels / (canvas - 28)); reported in canvas pixels.
  2 digits: multi-label presence of each digit 0-9 (two overlapping digits are not told apart by order, so no
  position head: the motion metrics are for 1-digit clips only).
- Augmentation: intensity gain and white noise, so generated frames are judged by the digit, not by noise.
- 32 features: the per-clip Fréchet distance fits a covariance to 3 x 32 = 96 clip features from a few
  hundred clips; more dimensions would make that estimate much noisier (see audio_classifier_net.py's note on
  the Marchenko-Pastur law) while 32 already carry 10 digits and a position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_linear_bn_eval

from genforge.evaluation.evaluator_cache import _LUMA
from genforge.evaluation.evaluator_net import _conv_bn_relu, _fold_batchnorm


@dataclass(frozen=True)
class VideoRecipe:
    """Network and training schedule of the Moving-MNIST evaluator.

    Network: VideoEvaluatorNet with stages of `widths` channels for frames up to 32 px (see `arch`), each
    `convs_per_stage` conv-BN-ReLU and a 2x max pool, `feature_dim` features, a digit and a position head.
    Loss: cross-entropy with `label_smoothing` (1 digit) or binary cross-entropy per digit (2 digits), plus
    `position_weight` x smooth-L1 (`position_beta`; None: squared error) of the normalised position; AdamW under
    a one-cycle schedule. The position weight is a balance: the position is learnt far faster than the digit,
    and a larger weight starves the digit head of the shared features (measured: weight 20 -> 31% digits).
    Data: `train_clips` clips of `frames_per_clip` frames (all frames used); `test_clips` test clips.
    Augmentation per frame: gain in `gain` on the brightness above black, white noise of a std drawn in
    (0, `noise_std`) with probability `noise_p`.
    """

    widths: tuple[int, ...] = (16, 32, 64)
    convs_per_stage: int = 1
    feature_dim: int = 32
    train_clips: int = 8000
    frames_per_clip: int = 4
    test_clips: int = 500
    epochs: float = 4
    batch_size: int = 128
    max_lr: float = 3e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.05
    position_weight: float = 5.0
    position_beta: float | None = 0.05
    gain: tuple[float, float] = (0.7, 1.0)
    noise_p: float = 0.5
    noise_std: float = 0.15

    def arch(self, size: int) -> dict:
        """`widths` are for frames up to 32 px; each doubling above adds a stage of half the first width in
        front, so a 64-px evaluator costs ~1.5x a 32-px one, not 4x, and its last map stays as small."""
        widths = list(self.widths)
        for _ in range(max(0, math.ceil(math.log2(size / 32)))):
            widths.insert(0, max(4, widths[0] // 2))
        return {"widths": widths, "convs_per_stage": self.convs_per_stage, "feature_dim": self.feature_dim}


VIDEO_RECIPE = VideoRecipe()


class VideoEvaluatorNet(nn.Module):
    """Conv stages as EvaluatorNet's (conv-BN-ReLU, 2x max pool) -> [the flattened last map, its channels' global
    max] -> Linear-BN-ReLU to the features -> a 10-logit digit `head` and, for 1 digit, a `position` head.

    The flattened map says where things are; the global max says what is there wherever it is, so the digit
    head need not learn every digit at every position (with the flattened map alone it learns far slower)."""

    def __init__(self, size: int, arch: dict, positions: bool):
        super().__init__()
        layers: list[nn.Module] = []
        ch, side = 1, size
        for w in arch["widths"]:
            for _ in range(arch["convs_per_stage"]):
                layers += _conv_bn_relu(ch, w)
                ch = w
            layers.append(nn.MaxPool2d(2))
            side //= 2
        self.body = nn.Sequential(*layers)
        self.embed = nn.Linear(ch * side * side + ch, arch["feature_dim"], bias=False)
        self.embed_bn = nn.BatchNorm1d(arch["feature_dim"])
        self.head = nn.Linear(arch["feature_dim"], 10)
        self.position = nn.Linear(arch["feature_dim"], 2) if positions else None

    @staticmethod
    def pooled(h: torch.Tensor) -> torch.Tensor:
        return torch.cat([h.flatten(1), h.amax(dim=(2, 3))], 1)

    def forward(self, x: torch.Tensor):
        f = F.relu(self.embed_bn(self.embed(self.pooled(self.body(x)))))
        return f, self.head(f), (self.position(f) if self.position is not None else None)


class _FusedVideoNet(nn.Module):
    """Inference copy: each BatchNorm folded into the layer before it (as evaluator._FusedEvaluator), same outputs."""

    def __init__(self, net: VideoEvaluatorNet):
        super().__init__()
        net = net.eval()
        self.body = _fold_batchnorm(net.body)
        self.embed = fuse_linear_bn_eval(net.embed, net.embed_bn)
        self.head, self.position = net.head, net.position

    def forward(self, x: torch.Tensor):
        f = F.relu(self.embed(VideoEvaluatorNet.pooled(self.body(x))))
        return f, self.head(f), (self.position(f) if self.position is not None else None)


def frames_to_input(clips, size: int) -> torch.Tensor:
    """uint8 (N, T, H, W, C) or (M, H, W, C) -> float (N*T, 1, size, size) in [-1, 1] (luma, area-resized)."""
    x = torch.as_tensor(np.asarray(clips))
    if x.dtype != torch.uint8 or x.dim() not in (4, 5) or x.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 clips (N, T, H, W, C) with C in (1, 3), got {x.dtype} {tuple(x.shape)}")
    x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).float() / 127.5 - 1
    if x.shape[1] == 3:
        x = (x * torch.tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.contiguous()


def augment_frames(x: torch.Tensor, r: VideoRecipe, g: torch.Generator) -> torch.Tensor:
    """A seeded copy of the (M, 1, H, W) batch with a brightness gain and, sometimes, white noise."""
    m = len(x)
    gain = torch.empty(m, 1, 1, 1).uniform_(*r.gain, generator=g)
    x = (x + 1) * gain - 1
    std = torch.rand(m, 1, 1, 1, generator=g) * r.noise_std * (torch.rand(m, 1, 1, 1, generator=g) < r.noise_p)
    return (x + std * torch.randn(x.shape, generator=g)).clamp(-1, 1)
