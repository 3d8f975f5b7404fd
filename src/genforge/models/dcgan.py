"""DCGAN generator and discriminator, sized from the image shape, with an optional class condition.

Radford et al. 2016: transposed convolutions with BatchNorm + ReLU in G, strided convolutions with
LeakyReLU(0.2) in D, no pooling, tanh output. The number of 2x up/down-sampling stages follows the
image side: 28 -> 7x7 start (2 stages), 32 -> 4x4 (3 stages), 64 -> 4x4 (4 stages).

Conditioning (so a user can ask for "digit 7"): G concatenates a learned label embedding to z; D is a
projection discriminator (Miyato & Koyama 2018): logit = psi(h) + <embed(y), h>. A self-conditioned G
(labels are k-means clusters, not classes) also keeps `label_prior`, each cluster's share of the data, to
draw clusters from when nobody asks for one.

Options beyond the paper, each measured on unconditional MNIST (benchmarks/RESULTS.md): `hidden`, a fully
connected layer before D's output (as in InfoGAN's MNIST D), so D judges the whole digit and not a
linear sum of local strokes; it lifted precision 0.66 -> 0.74 at 2 epochs. `spectral_norm` in D,
`extra_layers` of 3x3 convolutions, and `codes`, InfoGAN's categorical latent code with D's Q head.
D's `norm` can also be layer norm or none: gradient penalties (WGAN-GP, R1) need each image's logit to
depend on that image alone, which BatchNorm breaks; `forward(..., fp32=True)` runs D in fp32 for them.
"""

from __future__ import annotations

import torch
from torch import nn


def stages_for(side: int) -> int:
    """How many 2x stages take a 3..7 pixel start to `side` (halve while even and the result stays >= 4)."""
    stages = 0
    while side % 2 == 0 and side // 2 >= 4:
        side //= 2
        stages += 1
    if stages == 0 or side > 8:
        raise ValueError(
            f"DCGAN needs an image side that halves down to 4..8 pixels (e.g. 28, 32, 64, 128); got {side * 2**stages}. "
            "Set data.image_size to such a value."
        )
    return stages


def sample_latent(n: int, z_dim: int, codes: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """G's input: n Gaussian vectors, followed by a one-hot categorical code when `codes` (InfoGAN), and the codes."""
    z = torch.randn(n, z_dim, generator=rng)
    if not codes:
        return z, None
    c = torch.randint(codes, (n,), generator=rng)
    return torch.cat([z, nn.functional.one_hot(c, codes).to(z.dtype)], 1), c


class Generator(nn.Module):
    def __init__(self, image_size: int, channels: int, z_dim: int = 100, width: int = 64,
                 num_classes: int = 0, embed_dim: int = 50, extra_layers: int = 0, codes: int = 0,
                 label_prior: bool = False):
        super().__init__()
        self.z_dim, self.num_classes, self.codes = z_dim, num_classes, codes
        if label_prior:  # saved with the weights, so a loaded model samples clusters as often as training saw them
            self.register_buffer("label_prior", torch.full((num_classes,), 1.0 / num_classes))
        else:
            self.label_prior = None
        n = stages_for(image_size)
        self.start = image_size // 2**n
        self.start_ch = width * 2 ** (n - 1)
        in_dim = z_dim + codes
        if num_classes:
            self.embed = nn.Embedding(num_classes, embed_dim)
            in_dim += embed_dim
        self.project = nn.Sequential(
            nn.Linear(in_dim, self.start_ch * self.start**2, bias=False),
            nn.BatchNorm1d(self.start_ch * self.start**2),
            nn.ReLU(True),
        )
        layers: list[nn.Module] = []
        ch = self.start_ch
        for i in range(n):
            last = i == n - 1
            out = channels if last else ch // 2
            if last:
                for _ in range(extra_layers):
                    layers += [nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
            layers.append(nn.ConvTranspose2d(ch, out, 4, 2, 1, bias=last))
            layers += [nn.Tanh()] if last else [nn.BatchNorm2d(out), nn.ReLU(True)]
            ch = out
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass labels")
            z = torch.cat([z, self.embed(labels)], dim=1)
        # Features are laid out height, width, channel: the permuted view is channels_last in memory, so
        # no layout conversion happens between the linear layer and channels_last convolutions.
        h = self.project(z).view(-1, self.start, self.start, self.start_ch).permute(0, 3, 1, 2)
        return self.net(h)


class Discriminator(nn.Module):
    def __init__(self, image_size: int, channels: int, width: int = 64, num_classes: int = 0,
                 extra_layers: int = 0, spectral_norm: bool = False, hidden: int = 0, codes: int = 0,
                 norm: str | None = None):
        super().__init__()
        n = stages_for(image_size)
        self.norm = resolve_d_norm(norm, spectral_norm)
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        bias = self.norm == "none"  # a normalisation's shift makes the convolution's bias redundant
        layers: list[nn.Module] = []
        ch_in, ch = channels, width
        for i in range(n):
            layers.append(sn(nn.Conv2d(ch_in, ch, 4, 2, 1, bias=i == 0 or bias)))
            if i > 0:  # DCGAN: no normalisation on the input layer
                layers += _norm_layer(self.norm, ch)
            layers.append(nn.LeakyReLU(0.2))
            if i == 0:
                for _ in range(extra_layers):
                    layers.append(sn(nn.Conv2d(ch, ch, 3, 1, 1, bias=bias)))
                    layers += _norm_layer(self.norm, ch)
                    layers.append(nn.LeakyReLU(0.2))
            ch_in, ch = ch, ch * 2
        self.net = nn.Sequential(*layers)
        feat = ch_in * (image_size // 2**n) ** 2
        self.hidden = nn.Sequential(sn(nn.Linear(feat, hidden)), nn.LeakyReLU(0.2)) if hidden else nn.Identity()
        feat = hidden or feat
        self.head = sn(nn.Linear(feat, 1))
        self.code_head = nn.Linear(feat, codes) if codes else None  # InfoGAN's Q: which code made this image
        self.num_classes = num_classes
        if num_classes:
            self.embed = nn.Embedding(num_classes, feat)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, code_logits: bool = False,
                groups: int = 1, fp32: bool = False):
        """D's logit for each image; with `code_logits`, also Q's logits over the latent codes.

        `groups` > 1: `x` is that many batches stacked (real and fake), each normalised with its own
        BatchNorm statistics, in order, exactly as if D ran on each alone; the convolutions then run
        once on the whole stack, which is faster than once per batch.

        `fp32`: run in float32 even inside autocast (gradient penalties differentiate D w.r.t. its input
        twice; bf16/fp16 gradients are too coarse for that). It is switched off here, inside forward,
        because Accelerate wraps a prepared network's forward in its own autocast.
        """
        if fp32:
            with torch.autocast(x.device.type, enabled=False):
                return self._logits(x.float(), labels, code_logits, groups)
        return self._logits(x, labels, code_logits, groups)

    def _logits(self, x, labels, code_logits, groups):
        if groups == 1:
            h = self.net(x)
        else:
            h = x
            for layer in self.net:
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    h = torch.cat([layer(part) for part in h.chunk(groups)])
                else:
                    h = layer(h)
        h = self.hidden(h.permute(0, 2, 3, 1).flatten(1))  # HWC order: a view (no copy) for channels_last
        logit = self.head(h).squeeze(1)
        if self.num_classes:
            if labels is None:
                raise ValueError("this discriminator is class-conditional: pass labels")
            logit = logit + (self.embed(labels) * h).sum(1)
        if code_logits:
            return logit, self.code_head(h)
        return logit


D_NORMS = ("auto", "batch", "layer", "none")


def resolve_d_norm(norm: str | None, spectral_norm: bool) -> str:
    """D's normalisation: "batch", "layer" or "none"; "auto" (or None) is BatchNorm, none with spectral norm."""
    if norm in (None, "auto"):
        return "none" if spectral_norm else "batch"
    if norm not in D_NORMS:
        raise ValueError(f"unknown discriminator normalisation {norm!r}; known: {', '.join(D_NORMS)}")
    return norm


def _norm_layer(norm: str, ch: int) -> list[nn.Module]:
    """BatchNorm; or layer norm over (C, H, W) of each image (GroupNorm with one group, per-channel scale and
    shift), which keeps every image's logit a function of that image alone, as gradient penalties assume."""
    if norm == "batch":
        return [nn.BatchNorm2d(ch)]
    if norm == "layer":
        return [nn.GroupNorm(1, ch)]
    return []


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) weights, BatchNorm scale N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)
