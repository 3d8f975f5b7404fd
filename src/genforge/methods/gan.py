"""GAN training objective: DCGAN with the non-saturating loss, optionally class-conditional.

Per step: D learns to tell real from G(z) (BCE on logits), then G learns to make D say "real"
(the non-saturating loss of Goodfellow et al. 2014, -log D(G(z))). The fake batch is generated once
and reused for both updates, as in the PyTorch DCGAN example.

Self-conditioning (`clusters`, Liu et al. 2020): an unconditional run clusters its training images with
k-means and trains exactly like the class-conditional GAN with the cluster ids as labels; samples draw a
cluster by its share of the data. No labels are used, yet G no longer has to stretch one Gaussian over
every mode, which is where unconditional samples turn into blends of two digits.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors.torch import load_file

from genforge.errors import UserError
from genforge.files import save_tensors
from genforge.methods.base import DataSpec, MethodConfig
from genforge.methods.images import ImageData, ImageMethod
from genforge.models.dcgan import Discriminator, Generator, init_weights, sample_latent

CLUSTERS_FILE = "clusters.safetensors"  # self-conditioning: each training image's cluster, kept for resume


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
    extra_layers: int = Field(0, ge=0, le=4, description="3x3 stride-1 conv layers added in G (before its last upsampling) and D (after its first layer)")
    d_hidden: int = Field(0, ge=0, description="a fully connected hidden layer of this size before D's output (0: none)")
    latent_codes: int = Field(0, ge=0, description="a categorical latent code with this many values, learned without "
                              "labels (InfoGAN, Chen et al. 2016): gives an unconditional G separate modes, e.g. digits")
    info_weight: float = Field(1.0, ge=0, description="weight of InfoGAN's code-prediction loss (latent_codes > 0)")
    d_spectral_norm: bool = Field(False, description="spectral norm on D's layers instead of BatchNorm (Miyato et al. 2018)")
    real_label: float = Field(1.0, gt=0.5, le=1.0, description="D's target for real images; 0.9 = one-sided label smoothing (Salimans et al. 2016)")
    clusters: int = Field(0, ge=0, description="self-conditioning (Liu et al. 2020): k-means the training images into "
                          "this many clusters and condition G and D on the cluster, as a cGAN is on labels; samples "
                          "draw clusters by their share of the data. Unconditional models only; 0: off")


class GANMethod(ImageMethod):
    family = "gan"
    Config = GANConfig
    exported = "generator"

    @classmethod
    def build_exported(cls, cfg: GANConfig, spec: DataSpec) -> Generator:
        if spec.height != spec.width:
            raise ValueError(f"DCGAN needs square images, got {spec.height}x{spec.width}; set data.image_size")
        cls._check(cfg)
        classes = cls._num_labels(cfg, spec)
        if cfg.conditional and not classes:
            raise UserError("model.conditional=true needs a labelled dataset (class sub-folders); this one has no labels.")
        G = Generator(spec.height, spec.channels, cfg.z_dim, cfg.g_width, classes, cfg.embed_dim,
                      cfg.extra_layers, cfg.latent_codes, label_prior=cfg.clusters > 0)
        if cfg.clusters and spec.label_counts:
            counts = torch.tensor(spec.label_counts, dtype=torch.float32)
            G.label_prior.copy_(counts / counts.sum())
        return G

    @staticmethod
    def _check(cfg: GANConfig) -> None:
        if cfg.latent_codes and (cfg.conditional or cfg.clusters):
            raise UserError("model.latent_codes (InfoGAN) is for unconditional models without clusters; set "
                            "model.latent_codes=0, or model.conditional=false and model.clusters=0.")
        if cfg.conditional and cfg.clusters:
            raise UserError("model.clusters (self-conditioning) is for unconditional models: a conditional model "
                            "already has labels. Set model.clusters=0 or model.conditional=false.")

    @staticmethod
    def _num_labels(cfg: GANConfig, spec: DataSpec) -> int:
        """How many labels G and D are conditioned on: classes, clusters, or none."""
        return cfg.clusters or (spec.num_classes if cfg.conditional else 0)

    @classmethod
    def prepare_data(cls, cfg, data_dir, run_dir, resume, accelerator) -> ImageData:
        data = super().prepare_data(cfg, data_dir, run_dir, resume, accelerator)
        mcfg = cls.Config.model_validate(cfg.model)
        if not mcfg.clusters:
            return data
        cls._check(mcfg)
        from genforge.data.clusters import image_clusters

        # Computed once per run and kept in the run directory: a resumed run (or the other processes of a
        # distributed one) trains on exactly the same pseudo-labels.
        path = Path(run_dir) / CLUSTERS_FILE
        n = len(data.images)
        if mcfg.clusters > n:
            raise UserError(f"model.clusters={mcfg.clusters} is more than the {n} training images; use fewer clusters.")
        with accelerator.main_process_first():
            if accelerator.is_main_process and not (resume and path.exists()):
                assign = image_clusters(data.images.cpu(), mcfg.clusters, seed=cfg.train.seed)
                path.parent.mkdir(parents=True, exist_ok=True)
                save_tensors(path, {"assignment": assign}, metadata={"clusters": str(mcfg.clusters)})
            assign = load_file(str(path))["assignment"]
        if len(assign) != n or int(assign.max()) >= mcfg.clusters:
            raise UserError(f"{path} does not match this run's data or model.clusters; delete it and start the run again.")
        counts = torch.bincount(assign, minlength=mcfg.clusters)
        data.labels = assign.to(data.images.device)
        data.spec = replace(data.spec, num_classes=mcfg.clusters, label_counts=tuple(counts.tolist()))
        data.meta = {**data.meta, "clusters": mcfg.clusters, "cluster_counts": counts.tolist()}
        return data

    def setup(self, train_cfg) -> None:
        cfg, spec = self.cfg, self.spec
        G = self.build_exported(cfg, spec)
        D = Discriminator(spec.height, spec.channels, cfg.d_width, self._num_labels(cfg, spec),
                          cfg.extra_layers, cfg.d_spectral_norm, cfg.d_hidden, cfg.latent_codes)
        init_weights(G)
        init_weights(D)
        betas = (train_cfg.beta1, train_cfg.beta2)
        self.networks = {"generator": G, "discriminator": D}
        self.optimizers = {
            "generator": torch.optim.Adam(G.parameters(), lr=train_cfg.lr, betas=betas, fused=True),
            "discriminator": torch.optim.Adam(D.parameters(), lr=train_cfg.lr_d or train_cfg.lr, betas=betas, fused=True),
        }

    def _info_loss(self, code_logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """InfoGAN's lower bound on I(code; G(z, code)), up to a constant: Q's cross-entropy, weighted."""
        return self.cfg.info_weight * F.cross_entropy(code_logits.float(), codes)

    def training_step(self, accelerator, micro_batches, rng):
        G, D = self.networks["generator"], self.networks["discriminator"]
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        cond = self.cfg.conditional or self.cfg.clusters > 0  # fakes take the labels (or clusters) of the real batch
        k = len(micro_batches)
        # With one micro-batch the fakes made for D's update are reused for G's (one G forward per step).
        # With several, DDP must see each network's forward and backward inside the same no_sync window,
        # so the fakes are made without a graph for D and made again, from the same noise, for G.
        reuse = k == 1
        info = self.cfg.latent_codes > 0
        noises, fakes, losses_d, losses_g, losses_q = [], [], [], [], []

        def window(i: int, *nets):
            stack = ExitStack()
            if i < k - 1:  # gradients are all-reduced on the last micro-batch only
                for net in nets:
                    stack.enter_context(accelerator.no_sync(net))
            return stack

        # Discriminator: real -> 1, fake -> 0. One autocast region around D's whole update: its weights are cast
        # to bf16 once and reused for the real and the fake batch (autocast caches casts until the region ends,
        # which is before D's weights change), instead of once per call.
        with accelerator.autocast():
            for i, (x, y) in enumerate(micro_batches):
                y = y if cond else None
                z, c = sample_latent(x.shape[0], self.cfg.z_dim, self.cfg.latent_codes, rng)
                z, c = z.to(x.device, non_blocking=True), c.to(x.device) if info else None
                noises.append((z, c))
                with window(i, D):
                    if reuse:
                        fake = G(z, y) if cond else G(z)
                        fakes.append(fake)
                    else:
                        with torch.no_grad():
                            fake = G(z, y) if cond else G(z)
                    if info:
                        d_real = D(x, y) if cond else D(x)
                        d_fake, q = D(fake.detach(), code_logits=True)
                        loss_q = self._info_loss(q, c)
                        losses_q.append(loss_q.detach())
                    else:  # real and fake through D's convolutions at once, each with its own BatchNorm statistics
                        both = torch.cat([x, fake.detach()])
                        d_both = D(both, torch.cat([y, y]), groups=2) if cond else D(both, groups=2)
                        (d_real, d_fake), loss_q = d_both.chunk(2), 0.0
                    loss_d = _bce(d_real, self.cfg.real_label) + _bce(d_fake, 0.0)
                    accelerator.backward((loss_d + loss_q) / k)
                losses_d.append(loss_d.detach())
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)

        # Generator: non-saturating loss, judged by the updated D. D's weights get no gradient here (frozen,
        # and outside DDP's gradient sync), which saves its weight-gradient convolutions and an all-reduce.
        D.requires_grad_(False)
        try:
            for i, ((x, y), (z, c)) in enumerate(zip(micro_batches, noises)):
                y = y if cond else None
                with window(i, G), accelerator.no_sync(D):
                    fake = fakes[i] if reuse else (G(z, y) if cond else G(z))
                    if info:  # G is also rewarded for making its code recognisable
                        d_out, q = D(fake, code_logits=True)
                        loss_g = _bce(d_out, 1.0) + self._info_loss(q, c)
                    else:
                        loss_g = _bce(D(fake, y) if cond else D(fake), 1.0)
                    accelerator.backward(loss_g / k)
                losses_g.append(loss_g.detach())
        finally:
            D.requires_grad_(True)
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        out = {"loss_d": torch.stack(losses_d).mean(), "loss_g": torch.stack(losses_g).mean()}
        if info:
            out["loss_info"] = torch.stack(losses_q).mean()
        return out

    @classmethod
    def sample(cls, net, spec, n, labels, rng, device):
        z = sample_latent(n, net.z_dim, getattr(net, "codes", 0), rng)[0].to(device)
        if net.num_classes:
            if labels is None and net.label_prior is not None:  # self-conditioned: clusters as often as in the data
                labels = torch.multinomial(net.label_prior.float().cpu(), n, replacement=True, generator=rng)
            elif labels is None:
                labels = torch.arange(n) % net.num_classes
            return net(z, labels.to(device))
        return net(z)
