"""GAN training objective: DCGAN with the non-saturating loss, optionally class-conditional.

Per step: D learns to tell real from G(z) (BCE on logits), then G learns to make D say "real"
(the non-saturating loss of Goodfellow et al. 2014, -log D(G(z))). The fake batch is generated once
and reused for both updates, as in the PyTorch DCGAN example.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch
import torch.nn.functional as F
from pydantic import Field

from genforge.methods.base import DataSpec, MethodConfig
from genforge.methods.images import ImageMethod
from genforge.models.dcgan import Discriminator, Generator, init_weights


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


class GANConfig(MethodConfig):
    architecture: str = Field("dcgan", pattern="^dcgan$")
    conditional: bool = Field(False, description="label embedding in G, projection discriminator")
    z_dim: int = Field(100, ge=1)
    g_width: int = Field(64, ge=4, description="channels of G's last hidden layer (doubling towards the input)")
    d_width: int = Field(64, ge=4, description="channels of D's first layer (doubling towards the output)")
    embed_dim: int = Field(50, ge=1, description="size of G's label embedding (conditional only)")
    real_label: float = Field(1.0, gt=0.5, le=1.0, description="D's target for real images; 0.9 = one-sided label smoothing (Salimans et al. 2016)")


class GANMethod(ImageMethod):
    family = "gan"
    Config = GANConfig
    exported = "generator"

    @classmethod
    def build_exported(cls, cfg: GANConfig, spec: DataSpec) -> Generator:
        if spec.height != spec.width:
            raise ValueError(f"DCGAN needs square images, got {spec.height}x{spec.width}; set data.image_size")
        classes = spec.num_classes if cfg.conditional else 0
        if cfg.conditional and not classes:
            from genforge.errors import UserError

            raise UserError("model.conditional=true needs a labelled dataset (class sub-folders); this one has no labels.")
        return Generator(spec.height, spec.channels, cfg.z_dim, cfg.g_width, classes, cfg.embed_dim)

    def setup(self, train_cfg) -> None:
        cfg, spec = self.cfg, self.spec
        G = self.build_exported(cfg, spec)
        D = Discriminator(spec.height, spec.channels, cfg.d_width, spec.num_classes if cfg.conditional else 0)
        init_weights(G)
        init_weights(D)
        betas = (train_cfg.beta1, train_cfg.beta2)
        self.networks = {"generator": G, "discriminator": D}
        self.optimizers = {
            "generator": torch.optim.Adam(G.parameters(), lr=train_cfg.lr, betas=betas, fused=True),
            "discriminator": torch.optim.Adam(D.parameters(), lr=train_cfg.lr_d or train_cfg.lr, betas=betas, fused=True),
        }

    def _noise(self, n: int, rng: torch.Generator, device) -> torch.Tensor:
        return torch.randn(n, self.cfg.z_dim, generator=rng).to(device, non_blocking=True)

    def training_step(self, accelerator, micro_batches, rng):
        G, D = self.networks["generator"], self.networks["discriminator"]
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        cond = self.cfg.conditional
        k = len(micro_batches)
        # With one micro-batch the fakes made for D's update are reused for G's (one G forward per step).
        # With several, DDP must see each network's forward and backward inside the same no_sync window,
        # so the fakes are made without a graph for D and made again, from the same noise, for G.
        reuse = k == 1
        noises, fakes, losses_d, losses_g = [], [], [], []

        def window(i: int, *nets):
            stack = ExitStack()
            if i < k - 1:  # gradients are all-reduced on the last micro-batch only
                for net in nets:
                    stack.enter_context(accelerator.no_sync(net))
            return stack

        # Discriminator: real -> 1, fake -> 0.
        for i, (x, y) in enumerate(micro_batches):
            y = y if cond else None
            z = self._noise(x.shape[0], rng, x.device)
            noises.append(z)
            with window(i, D):
                if reuse:
                    fake = G(z, y) if cond else G(z)
                    fakes.append(fake)
                else:
                    with torch.no_grad():
                        fake = G(z, y) if cond else G(z)
                d_real = D(x, y) if cond else D(x)
                d_fake = D(fake.detach(), y) if cond else D(fake.detach())
                loss_d = _bce(d_real, self.cfg.real_label) + _bce(d_fake, 0.0)
                accelerator.backward(loss_d / k)
            losses_d.append(loss_d.detach())
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)

        # Generator: non-saturating loss, judged by the updated D. D's weights get no gradient here (frozen,
        # and outside DDP's gradient sync), which saves its weight-gradient convolutions and an all-reduce.
        D.requires_grad_(False)
        try:
            for i, ((x, y), z) in enumerate(zip(micro_batches, noises)):
                y = y if cond else None
                with window(i, G), accelerator.no_sync(D):
                    fake = fakes[i] if reuse else (G(z, y) if cond else G(z))
                    d_out = D(fake, y) if cond else D(fake)
                    loss_g = _bce(d_out, 1.0)
                    accelerator.backward(loss_g / k)
                losses_g.append(loss_g.detach())
        finally:
            D.requires_grad_(True)
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        return {"loss_d": torch.stack(losses_d).mean(), "loss_g": torch.stack(losses_g).mean()}

    @classmethod
    def sample(cls, net, spec, n, labels, rng, device):
        z_dim = net.z_dim
        z = torch.randn(n, z_dim, generator=rng).to(device)
        if net.num_classes:
            if labels is None:
                labels = torch.arange(n) % net.num_classes
            return net(z, labels.to(device))
        return net(z)
