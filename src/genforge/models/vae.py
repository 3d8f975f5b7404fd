"""Convolutional VAE (Kingma & Welling 2014), optionally class-conditional (Sohn et al. 2015).

Sized from the image shape like the DCGAN: the encoder halves the image to a 4..8 pixel map in
strided convolutions (28 -> 14 -> 7, 32 -> 16 -> 8 -> 4), each followed by a 3x3 convolution, then a
fully connected layer gives the mean and log-variance of q(z | x); the decoder mirrors it with
transposed convolutions, the last of which emits the likelihood's parameters per pixel
(models/likelihoods.py).
No BatchNorm: the encoder must treat every image alone (a likelihood is per image), and the decoder
must sample the same in batches of one as of a thousand. Without normalisation the initialisation has to
keep the signal alive: PyTorch's default (weights of standard deviation 1/sqrt(3 fan-in)) shrinks it about
3.5x per SiLU layer, so through the CIFAR encoder's six convolutions and two linear layers the posterior
mean did not depend on the image at all, nor the decoder's output on z; the KL then collapsed before the
decoder could learn to use z (a colour VAE stuck at the pixel histogram, ~7.9 bits/dim). Hence
`_init_weights`: fan-in scaled normal weights with the SiLU gain, zero biases, and a small last layer
(every pixel starts with about the same broad distribution). The shallow MNIST VAE learns faster with
PyTorch's default (`init="torch"`: 89.4 against 86.3 nats after 10 minutes, benchmarks/RESULTS.md), so its
presets keep that; the choice is `model.init`.

Conditioning ("digit 7"): the one-hot label joins the encoder's flattened features and z.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genforge.models import likelihoods
from genforge.models.dcgan import stages_for


class VAE(nn.Module):
    def __init__(self, image_size: int, channels: int, latent_dim: int = 32, width: int = 32, hidden: int = 512,
                 num_classes: int = 0, likelihood: str = "bernoulli", mixtures: int = 1, init: str = "scaled"):
        super().__init__()
        self.latent_dim, self.num_classes, self.channels, self.image_size = latent_dim, num_classes, channels, image_size
        self.likelihood, self.mixtures = likelihood, mixtures  # what decode()'s output parameterises
        out_params = likelihoods.num_params(likelihood, channels, mixtures)
        n = stages_for(image_size)
        self.start = image_size // 2**n
        chans = [width * 2**i for i in range(n)]  # e.g. 32, 64 for 28x28
        act = nn.SiLU
        enc: list[nn.Module] = []
        c_in = channels
        for c in chans:
            enc += [nn.Conv2d(c_in, c, 4, 2, 1), act(), nn.Conv2d(c, c, 3, 1, 1), act()]
            c_in = c
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        feat = chans[-1] * self.start**2
        self.enc_fc = nn.Sequential(nn.Linear(feat + num_classes, hidden), act(), nn.Linear(hidden, 2 * latent_dim))
        self.dec_fc = nn.Sequential(nn.Linear(latent_dim + num_classes, hidden), act(), nn.Linear(hidden, feat), act())
        self.dec_start = chans[-1]
        dec: list[nn.Module] = []
        for i in reversed(range(1, n)):
            dec += [nn.ConvTranspose2d(chans[i], chans[i - 1], 4, 2, 1), act(), nn.Conv2d(chans[i - 1], chans[i - 1], 3, 1, 1), act()]
        # As in the DCGAN's G, the last upsampling emits the output itself: full-resolution hidden layers
        # would cost more than the rest of the decoder together, for little likelihood.
        dec.append(nn.ConvTranspose2d(chans[0], out_params, 4, 2, 1))
        self.decoder = nn.Sequential(*dec)
        if init == "scaled":
            self._init_weights()
        elif init != "torch":
            raise ValueError(f"unknown init {init!r}: scaled or torch")

    def _init_weights(self) -> None:
        """Weights N(0, (gain / sqrt(fan-in))^2), biases 0: the gain of SiLU after every hidden layer, 1 for the
        first layer (it sees pixels, not activations); the decoder's last layer scaled by 0.1, so that every
        pixel starts with about the same distribution: Bernoulli p near 1/2, logistic means near 0 with
        the scale that `likelihoods.initial_bias` sets."""
        layers = [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
        for m in layers:
            w = m.weight
            if isinstance(m, nn.ConvTranspose2d):  # weight (in, out, kh, kw); an output sees in * kh*kw / stride^2
                fan_in = w.shape[0] * w.shape[2] * w.shape[3] / (m.stride[0] * m.stride[1])
            else:
                fan_in = w[0].numel()
            gain = 1.0 if m is layers[0] else _SILU_GAIN
            if m is self.decoder[-1]:
                gain *= 0.1
            nn.init.normal_(w, 0.0, gain / math.sqrt(fan_in))
            nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.decoder[-1].bias.copy_(likelihoods.initial_bias(self.likelihood, self.channels, self.mixtures))

    def _with_label(self, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if not self.num_classes:
            return h
        if labels is None:
            raise ValueError("this VAE is class-conditional: pass labels")
        return torch.cat([h, F.one_hot(labels.to(h.device), self.num_classes).to(h.dtype)], 1)

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | x), each (N, latent_dim)."""
        h = self._with_label(self.encoder(x), labels)
        mu, logvar = self.enc_fc(h).chunk(2, dim=1)
        return mu, logvar.clamp(-30, 20)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The likelihood's parameters per pixel, (N, likelihoods.num_params(...), H, W)."""
        h = self.dec_fc(self._with_label(z, labels))
        return self.decoder(h.view(-1, self.dec_start, self.start, self.start))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, eps: torch.Tensor | None = None):
        """(decoder params, z, mu, logvar) for reparameterised draws z = mu + sigma * eps.

        `eps` (N, D) gives one draw per image; (K, N, D) gives K per image (importance weighting), decoded
        as one batch of K * N with z of shape (K, N, D). One call runs both halves, as DDP wants."""
        mu, logvar = self.encode(x, labels)
        eps = torch.randn_like(mu) if eps is None else eps.to(mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        if z.dim() == 3:
            k = z.shape[0]
            params = self.decode(z.flatten(0, 1), labels.repeat(k) if labels is not None else None)
        else:
            params = self.decode(z, labels)
        return params, z, mu, logvar

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | z) per image, in nats, for decoder output `params`."""
        return likelihoods.log_prob(self.likelihood, params, x, self.mixtures)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The expected image under decoder output `params`, float NCHW in [-1, 1]."""
        return likelihoods.mean(self.likelihood, params, self.channels, self.mixtures)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per latent dimension, closed form, (N, D)."""
    return 0.5 * (mu.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float())


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor | None = None, logvar: torch.Tensor | None = None) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dimension (standard normal when mu is None)."""
    z = z.float()
    if mu is None:
        return (-0.5 * (z**2 + _LOG_2PI)).sum(-1)
    return (-0.5 * ((z - mu.float()) ** 2 * torch.exp(-logvar.float()) + logvar.float() + _LOG_2PI)).sum(-1)


_LOG_2PI = float(torch.log(torch.tensor(2 * torch.pi)))
_SILU_GAIN = 1.676  # 1 / sqrt(E[silu(z)^2]) for z ~ N(0, 1): keeps unit variance through a SiLU layer
