"""The GAN's model settings (`model.*` of a gan run): architecture, objective, penalties, DiffAugment, clips and
self-conditioning. What each does in training is in gan.py's docstring."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from genforge.methods.base import MethodConfig
from genforge.methods.diffaugment import parse_policy


class GANConfig(MethodConfig):
    architecture: str = Field("dcgan", pattern="^dcgan$")
    conditional: bool = Field(False, description="label embedding in G, projection discriminator")
    z_dim: int = Field(100, ge=1)
    g_width: int = Field(64, ge=4, description="channels of G's last hidden layer (doubling towards the input)")
    d_width: int = Field(64, ge=4, description="channels of D's first layer (doubling towards the output)")
    embed_dim: int = Field(50, ge=1, description="size of G's label embedding (conditional only)")
    extra_layers: int = Field(0, ge=0, le=4, description="3x3 stride-1 conv layers added in G (before its last upsampling) and D (after its first layer)")
    d_hidden: int = Field(0, ge=0, description="a fully connected hidden layer of this size before D's output (0: none)")
    latent_codes: int = Field(0, ge=0, description="a categorical latent code with this many values, learned without "
                              "labels (InfoGAN, Chen et al. 2016): gives an unconditional G separate modes, e.g. digits")
    info_weight: float = Field(1.0, ge=0, description="weight of InfoGAN's code-prediction loss (latent_codes > 0)")
    d_spectral_norm: bool = Field(False, description="spectral norm on D's layers (Miyato et al. 2018); with d_norm=auto "
                                  "it replaces BatchNorm")
    d_norm: Literal["auto", "batch", "layer", "none"] = Field(
        "auto", description="normalisation in D after its first layer: batch (DCGAN), layer (per image: use it with "
                            "gradient penalties, as WGAN-GP does), none; auto = batch, or none with d_spectral_norm")
    real_label: float = Field(1.0, gt=0.5, le=1.0, description="D's target for real images; 0.9 = one-sided label smoothing "
                              "(Salimans et al. 2016); loss=ns only")
    loss: Literal["ns", "hinge", "wgan"] = Field(
        "ns", description="ns: non-saturating BCE (Goodfellow et al. 2014); hinge: D relu(1-D(x)) + relu(1+D(G(z))), "
                          "G -D(G(z)) (SNGAN, Miyato et al. 2018); wgan: D D(G(z))-D(x), G -D(G(z)) (Arjovsky et al. "
                          "2017), needs gp_weight > 0 or d_spectral_norm")
    gp_weight: float = Field(0.0, ge=0, description="WGAN-GP gradient penalty (Gulrajani et al. 2017; 10 in the paper): "
                             "(||grad D(xhat)|| - 1)^2 at random points xhat between real and generated images, in fp32. "
                             "Needs a D without BatchNorm (d_norm layer or none, or d_spectral_norm); 0: off")
    r1_weight: float = Field(0.0, ge=0, description="R1 penalty gamma (Mescheder et al. 2018): gamma/2 ||grad D(x)||^2 on "
                             "real images, in fp32; e.g. 10 for 32x32 (StyleGAN2 uses 0.01-10 by resolution). Needs a D "
                             "without BatchNorm; 0: off")
    n_critic: int = Field(1, ge=1, description="D updates per G update (WGAN: 5), each on a fresh real batch; one training "
                          "step is one G update and uses n_critic batches of images")
    diffaugment: str = Field("", description="DiffAugment (Zhao et al. 2020), for small datasets (a few thousand images): "
                             "D sees real and generated images augmented alike and differentiably, in its update and in G's; "
                             "a comma-separated policy of color, translation, cutout, e.g. \"translation,cutout\" or "
                             "\"color,translation,cutout\"; \"\": off")
    motion_dim: int = Field(16, ge=1, description="clips: the part of z that drives motion (the coefficients of a "
                            "Fourier series in time, MoCoGAN's content/motion split); the rest is content shared by "
                            "every frame. Must be below z_dim")
    clip_motion: Literal["latent", "shift"] = Field(
        "latent", description="clips: how motion enters (models/video_gan.py): latent, a motion code per frame "
                              "into the frame generator (MoCoGAN); shift, one image per clip moved by a per-frame "
                              "shift (content constant by construction, translation only)")
    clusters: int = Field(0, ge=0, description="self-conditioning (Liu et al. 2020): k-means the training images into "
                          "this many clusters and condition G and D on the cluster, as a cGAN is on labels; samples "
                          "draw clusters by their share of the data. Unconditional models only; 0: off")

    @field_validator("diffaugment")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        parse_policy(v)  # ValueError names the known policies
        return v
