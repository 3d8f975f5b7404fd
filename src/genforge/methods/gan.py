"""GAN training objective: DCGAN with the non-saturating loss, optionally class-conditional.

Per step: D learns to tell real from G(z) (BCE on logits), then G learns to make D say "real"
(the non-saturating loss of Goodfellow et al. 2014, -log D(G(z))). The fake batch is generated once
and reused for both updates, as in the PyTorch DCGAN example. The settings (`GANConfig`) are in gan_config.py.

Stabilised objectives (`loss`, `gp_weight`, `r1_weight`, `n_critic`, `diffaugment`; the loss and penalty
functions are in `gan_losses.py`, the augmentation in `diffaugment.py`): hinge (SNGAN) or Wasserstein losses,
the WGAN-GP gradient penalty on real/fake interpolates, R1 on reals. Penalties look at D's input gradient
per image, so D must not use BatchNorm with them (`d_norm`). They run in fp32 whatever the precision (forward,
input gradient and backward), as their own backward before the loss's, which is the one that all-reduces
under DDP. With DiffAugment, D always sees augmented images, and the penalties are taken at those augmented
images: D is kept smooth where it is evaluated.

n_critic (D updates per G update, WGAN's critic iterations): one training step is one G update and the
n_critic D updates before it, each on its own real batch. The data yields n_critic batches per step
(`CriticSteps`: loop step s holds the image loader's steps s*n .. s*n+n-1), so a step needs nothing from
the steps before it; checkpoints, resume and the EMA (once per G update) work as for n_critic=1. train.max_steps
counts G updates; an epoch is still one pass over the images, n_critic times fewer steps. (Updating G only on
every n-th loop step would also resume exactly, from the step count, but would tie the EMA, the logged
losses and max_steps to D updates.)

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
from safetensors.torch import load_file

from genforge.data import from_model_range
from genforge.errors import UserError
from genforge.files import save_tensors
from genforge.methods.base import DataSpec, OnnxGraph
from genforge.methods.diffaugment import diff_augment
from genforge.methods.gan_config import GANConfig
from genforge.methods.gan_losses import d_loss, g_loss, gradient_penalty, r1_penalty
from genforge.methods.images import ImageData, ImageMethod
from genforge.models.dcgan import Discriminator, Generator, init_weights, resolve_d_norm, sample_latent
from genforge.models.video_gan import ClipDiscriminator, ClipGenerator

CLUSTERS_FILE = "clusters.safetensors"  # self-conditioning: each training image's cluster, kept for resume
MAX_CODE_ROWS = 32  # InfoGAN sample grid: one row per code value, at most this many


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
        if spec.frames:  # clips: content + motion, each frame drawn by the DCGAN generator (models/video_gan.py)
            if cfg.latent_codes or cfg.clusters or cfg.diffaugment:
                raise UserError("model.latent_codes, model.clusters and model.diffaugment are for images; a video GAN "
                                "takes labels (model.conditional) only. Set them to 0 / \"\".")
            if cfg.motion_dim >= cfg.z_dim:
                raise UserError(f"model.motion_dim={cfg.motion_dim} must be below model.z_dim={cfg.z_dim}: the rest of z "
                                "is the clip's content.")
            return ClipGenerator(spec.height, spec.channels, spec.frames, cfg.z_dim, cfg.motion_dim, cfg.g_width,
                                 classes, cfg.embed_dim, cfg.extra_layers, motion=cfg.clip_motion)
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
        if (cfg.gp_weight or cfg.r1_weight) and resolve_d_norm(cfg.d_norm, cfg.d_spectral_norm) == "batch":
            raise UserError("model.gp_weight / model.r1_weight penalise D's gradient image by image, but BatchNorm in D "
                            "mixes the images of a batch. Set model.d_norm=layer (or none), or model.d_spectral_norm=true.")
        if cfg.loss == "wgan" and not (cfg.gp_weight or cfg.d_spectral_norm):
            raise UserError("model.loss=wgan needs a Lipschitz D, or its scores grow without bound: set model.gp_weight=10 "
                            "(WGAN-GP, with model.d_norm=layer) or model.d_spectral_norm=true.")
        if cfg.real_label != 1.0 and cfg.loss != "ns":
            raise UserError(f"model.real_label (label smoothing) applies to loss=ns only; with loss={cfg.loss} set "
                            "model.real_label=1.0.")

    @staticmethod
    def _num_labels(cfg: GANConfig, spec: DataSpec) -> int:
        """How many labels G and D are conditioned on: classes, clusters, or none."""
        return cfg.clusters or (spec.num_classes if cfg.conditional else 0)

    @classmethod
    def prepare_data(cls, cfg, data_dir, run_dir, resume, accelerator) -> ImageData | CriticSteps:
        data = cls._prepare_images(cfg, data_dir, run_dir, resume, accelerator)
        n_critic = cls.Config.model_validate(cfg.model).n_critic
        if n_critic == 1:
            return data
        if data.steps_per_epoch < n_critic:
            raise UserError(f"model.n_critic={n_critic} needs {n_critic} batches per step, but the dataset holds "
                            f"{data.steps_per_epoch}. Lower train.batch_size or model.n_critic.")
        return CriticSteps(data, n_critic)

    @classmethod
    def _prepare_images(cls, cfg, data_dir, run_dir, resume, accelerator) -> ImageData:
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
        if train_cfg.compile and (cfg.gp_weight or cfg.r1_weight):
            raise UserError("model.gp_weight / model.r1_weight differentiate D twice, which torch.compile does not "
                            "support (no double backward). Set train.compile=false.")
        G = self.build_exported(cfg, spec)
        if spec.frames:
            D = ClipDiscriminator(spec.height, spec.channels, cfg.d_width, self._num_labels(cfg, spec),
                                  cfg.d_spectral_norm, cfg.d_hidden, cfg.d_norm)
        else:
            D = Discriminator(spec.height, spec.channels, cfg.d_width, self._num_labels(cfg, spec),
                              cfg.extra_layers, cfg.d_spectral_norm, cfg.d_hidden, cfg.latent_codes, cfg.d_norm)
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

    def _penalize(self, accelerator, D, real, fake, y, rng, k: int) -> dict[str, torch.Tensor]:
        """Backward of one micro-batch's gradient penalties, at the images D saw; returns them unweighted.

        fp32 throughout (D's forward, its input gradient and the backward of both: under autocast the
        backward's matmuls would run in bf16 too), and never the backward that all-reduces: a penalty gives
        some of D's weights (its last bias) no gradient, and DDP would wait for them. The loss's backward,
        after this one, reaches every weight and syncs them all."""
        critic = (lambda img: D(img, y, fp32=True)) if y is not None else (lambda img: D(img, fp32=True))
        terms = {}
        with torch.autocast(accelerator.device.type, enabled=False), accelerator.no_sync(D):
            if self.cfg.gp_weight:
                eps = torch.rand(real.shape[0], generator=rng, device=rng.device)  # one point per real/fake pair
                terms["loss_gp"] = gradient_penalty(critic, real, fake, eps)
            if self.cfg.r1_weight:
                terms["loss_r1"] = r1_penalty(critic, real)
            weights = {"loss_gp": self.cfg.gp_weight, "loss_r1": self.cfg.r1_weight}
            accelerator.backward(sum(weights[name] * v for name, v in terms.items()) / k)
        return {name: v.detach() for name, v in terms.items()}

    def training_step(self, accelerator, micro_batches, rng):
        G, D = self.networks["generator"], self.networks["discriminator"]
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        cfg = self.cfg
        cond = cfg.conditional or cfg.clusters > 0  # fakes take the labels (or clusters) of the real batch
        k = len(micro_batches) // cfg.n_critic  # micro-batches per D update (gradient accumulation)
        critic_steps = [micro_batches[j * k:(j + 1) * k] for j in range(cfg.n_critic)]
        # With one micro-batch the fakes made for D's (last) update are reused for G's (one G forward per step).
        # With several, DDP must see each network's forward and backward inside the same no_sync window,
        # so the fakes are made without a graph for D and made again, from the same noise, for G.
        reuse = k == 1
        info = cfg.latent_codes > 0
        penalized = cfg.gp_weight > 0 or cfg.r1_weight > 0
        augment = (lambda img: diff_augment(img, cfg.diffaugment, rng)) if cfg.diffaugment else (lambda img: img)
        noises, fakes, losses_d, losses_g, losses_q = [], [], [], [], []
        penalties: dict[str, list[torch.Tensor]] = {}

        def window(sync: bool, *nets):
            stack = ExitStack()
            if not sync:  # gradients are all-reduced by the last backward of an update only
                for net in nets:
                    stack.enter_context(accelerator.no_sync(net))
            return stack

        for j, batches in enumerate(critic_steps):
            last = j == cfg.n_critic - 1  # G's update follows, on this update's noise and labels
            # Discriminator: real -> 1, fake -> 0. One autocast region around D's whole update: its weights are
            # cast to bf16 once and reused for the real and the fake batch (autocast caches casts until the region
            # ends, which is before D's weights change), instead of once per call.
            with accelerator.autocast():
                for i, (x, y) in enumerate(batches):
                    y = y if cond else None
                    z, c = sample_latent(x.shape[0], cfg.z_dim, cfg.latent_codes, rng)
                    z, c = z.to(x.device, non_blocking=True), c.to(x.device) if info else None
                    if last:
                        noises.append((z, c))
                    if reuse and last:
                        fake = G(z, y) if cond else G(z)
                        fakes.append(fake)
                    else:
                        with torch.no_grad():
                            fake = G(z, y) if cond else G(z)
                    x_d, fake_d = augment(x), augment(fake.detach())  # what D sees, real and fake alike
                    if penalized:  # its own backward, in fp32 and without gradient sync (see _penalize)
                        for name, v in self._penalize(accelerator, D, x_d, fake_d, y, rng, k).items():
                            penalties.setdefault(name, []).append(v)
                    with window(i == k - 1, D):
                        if info:
                            d_real = D(x_d, y) if cond else D(x_d)
                            d_fake, q = D(fake_d, code_logits=True)
                            loss_q = self._info_loss(q, c)
                            losses_q.append(loss_q.detach())
                        else:  # real and fake through D's convolutions at once, each with its own BatchNorm statistics
                            both = torch.cat([x_d, fake_d])
                            d_both = D(both, torch.cat([y, y]), groups=2) if cond else D(both, groups=2)
                            (d_real, d_fake), loss_q = d_both.chunk(2), 0.0
                        loss_d = d_loss(cfg.loss, d_real, d_fake, cfg.real_label)
                        accelerator.backward((loss_d + loss_q) / k)
                    losses_d.append(loss_d.detach())
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)

        # Generator, judged by the updated D (non-saturating: make D say "real"; hinge/wgan: raise D's score).
        # D's weights get no gradient here (frozen, and outside DDP's gradient sync), which saves its
        # weight-gradient convolutions and an all-reduce.
        D.requires_grad_(False)
        try:
            for i, ((x, y), (z, c)) in enumerate(zip(critic_steps[-1], noises)):
                y = y if cond else None
                with window(i == k - 1, G), accelerator.no_sync(D):
                    fake = fakes[i] if reuse else (G(z, y) if cond else G(z))
                    fake_d = augment(fake)  # differentiable: G learns through the augmentation
                    if info:  # G is also rewarded for making its code recognisable
                        d_out, q = D(fake_d, code_logits=True)
                        loss_g = g_loss(cfg.loss, d_out) + self._info_loss(q, c)
                    else:
                        loss_g = g_loss(cfg.loss, D(fake_d, y) if cond else D(fake_d))
                    accelerator.backward(loss_g / k)
                losses_g.append(loss_g.detach())
        finally:
            D.requires_grad_(True)
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        out = {"loss_d": torch.stack(losses_d).mean(), "loss_g": torch.stack(losses_g).mean()}
        if info:
            out["loss_info"] = torch.stack(losses_q).mean()
        for name, values in penalties.items():  # unweighted, as the papers plot them
            out[name] = torch.stack(values).mean()
        return out

    @classmethod
    def write_samples(cls, net, data, path, seed, accelerator) -> Path:
        """InfoGAN (latent_codes > 0): row i is code i, each column one z shared by all rows, so a row shows what
        code i learned (the first MAX_CODE_ROWS codes). Other models: ImageMethod's grid."""
        codes = getattr(net, "codes", 0)
        if not codes:
            return super().write_samples(net, data, path, seed, accelerator)
        from genforge.visual import save_grid

        rows, cols = min(codes, MAX_CODE_ROWS), 8
        z = torch.randn(cols, net.z_dim, generator=torch.Generator().manual_seed(seed))
        code = torch.arange(rows).repeat_interleave(cols)
        latent = torch.cat([z.repeat(rows, 1), F.one_hot(code, codes).to(z.dtype)], 1)
        was_training = net.training
        net.eval()
        with torch.no_grad(), accelerator.autocast():
            x = net(latent.to(accelerator.device))
        net.train(was_training)
        out = Path(path).with_suffix(".png")
        save_grid(from_model_range(x.float()).cpu().numpy(), out, cols, scale=2)
        return out

    @classmethod
    def draw(cls, net, spec, n, labels, rng, **options):
        drawn = {"z": sample_latent(n, net.z_dim, getattr(net, "codes", 0), rng)[0]}
        if net.num_classes:
            if labels is None and net.label_prior is not None:  # self-conditioned: clusters as often as in the data
                labels = torch.multinomial(net.label_prior.float().cpu(), n, replacement=True, generator=rng)
            elif labels is None:
                labels = torch.arange(n) % net.num_classes
            drawn["labels"] = labels.cpu()
        return drawn

    @classmethod
    def render(cls, net, drawn, device, **options):
        z = drawn["z"].to(device)
        labels = drawn["labels"].to(device) if net.num_classes else None
        if getattr(net, "frames", 0):
            return net(z, labels, options.get("frames"))
        return net(z, labels) if net.num_classes else net(z)

    @classmethod
    def onnx_graphs(cls, net):
        inputs = {"z": torch.zeros(2, net.z_dim + getattr(net, "codes", 0))}
        if net.num_classes:
            inputs["labels"] = torch.zeros(2, dtype=torch.long)
        if getattr(net, "frames", 0):  # the clip length is the length of a frame-index input (a dynamic dimension)
            inputs["frame_index"] = torch.arange(net.frames)
            dynamic = {"z": {0: "batch"}, "labels": {0: "batch"}, "frame_index": {0: "frames"}}
            if not net.num_classes:
                del dynamic["labels"]
            module = _ClipExport(net) if net.num_classes else _UnconditionalClipExport(net)
            return {"generator": OnnxGraph(module, inputs, ["images"], dynamic)}
        return {"generator": OnnxGraph(net, inputs, ["images"])}

    @classmethod
    def runtime_config(cls, net):
        prior = net.label_prior
        return {"z_dim": net.z_dim, "codes": getattr(net, "codes", 0), "num_classes": net.num_classes,
                "frames": getattr(net, "frames", 0),
                "label_prior": prior.float().cpu().tolist() if prior is not None else None}

    @classmethod
    def latents(cls, net, n, rng, device, **options):
        """G's input: Gaussian z, followed by the one-hot InfoGAN code when the model has one."""
        return sample_latent(n, net.z_dim, getattr(net, "codes", 0), rng)[0].to(device)

    @classmethod
    def decode(cls, net, z, labels):
        if net.num_classes:
            if labels is None:  # a walk stays in one class: the first, or a self-conditioned G's largest cluster
                first = int(net.label_prior.argmax()) if net.label_prior is not None else 0
                labels = torch.full((len(z),), first, dtype=torch.long)
            return net(z, labels.to(z.device))
        return net(z)


class _ClipExport(torch.nn.Module):
    """The clip generator with the frames to draw given as a tensor of their indices (an ONNX graph's inputs are
    tensors)."""

    def __init__(self, net: ClipGenerator):
        super().__init__()
        self.net = net

    def forward(self, z, labels, frame_index):
        return self.net(z, labels, times=frame_index.float())


class _UnconditionalClipExport(_ClipExport):
    def forward(self, z, frame_index):
        return self.net(z, None, times=frame_index.float())


class CriticSteps:
    """Image data served n_critic loader steps at a time: loop step s is the loader's steps s*n .. s*n+n-1, in
    order, so each of the step's n_critic D updates gets its own real batch (see the module docstring)."""

    def __init__(self, data: ImageData, n_critic: int):
        self.data, self.n_critic = data, n_critic
        self.items_per_step = data.items_per_step * n_critic
        self.steps_per_epoch = data.steps_per_epoch // n_critic

    def __getattr__(self, name):  # spec, meta, unit, images, labels, ... are the wrapped data's
        if name == "data":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.data, name)

    def micro_batches(self, step: int, rng: torch.Generator) -> list:
        return [mb for i in range(self.n_critic) for mb in self.data.micro_batches(step * self.n_critic + i, rng)]
