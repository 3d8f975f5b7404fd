"""VAE training objective: the evidence lower bound, optionally importance-weighted, class-conditional.

Per image, ELBO = E_q[log p(x | z)] - KL(q(z | x) || N(0, I)), the KL in closed form and the first term
from one reparameterised draw. Three knobs against the VAE's usual failure, a posterior that collapses
onto the prior before the decoder has learnt anything: `beta` weights the KL (beta-VAE, Higgins et al.
2017), `kl_warmup_steps` ramps that weight from 0 (Bowman et al. 2016; Sønderby et al. 2016), and
`free_bits` stops pushing a latent dimension's mean KL below that many nats (Kingma et al. 2016).
With `iw_samples` = k > 1 the bound is IWAE's (Burda et al. 2016), log (1/k) sum_i p(x, z_i) / q(z_i | x),
tighter with k, and the three knobs do not apply.

Bernoulli likelihood: grey images are binarised afresh each time they are seen (dynamic binarisation),
which is how the literature's MNIST nats are measured; the held-out set is binarised once, with a
fixed seed. The logistic likelihood models the 8-bit values themselves, so its NLL is in bits/dim.

The same functions score held-out data for `genforge eval` (evaluation/likelihood.py drives them):
`elbo_terms` and `importance_log_likelihood`, the estimate log p(x) ~ log (1/k) sum_i w_i, which is
a lower bound in expectation that rises towards log p(x) as k grows.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from genforge.data import load_image_dataset, to_model_range
from genforge.data.dataset import evenly_spaced
from genforge.errors import UserError
from genforge.methods.base import DataSpec, MethodConfig, OnnxGraph, SampleOption
from genforge.methods.images import ImageData, ImageMethod
from genforge.models.vae import VAE, gaussian_kl, gaussian_log_prob

VAL_BINARIZE_SEED = 1234  # the one fixed binarisation of held-out images


class VAEConfig(MethodConfig):
    latent_dim: int = Field(32, ge=1, description="size of z")
    width: int = Field(32, ge=4, description="channels of the first encoder convolution (doubling per 2x stage)")
    hidden: int = Field(512, ge=8, description="width of the fully connected layer on each side of z")
    likelihood: Literal["bernoulli", "logistic"] = Field(
        "bernoulli", description="bernoulli: binarised grey images (NLL in nats, the MNIST literature's protocol); "
                                 "logistic: discretised logistic (mixture) over 8-bit values, grey or colour (bits/dim)")
    mixtures: int = Field(1, ge=1, le=10, description="logistic components per pixel, shared by its channels (logistic only)")
    conditional: bool = Field(False, description="the class label goes to the encoder and the decoder (conditional VAE)")
    beta: float = Field(1.0, ge=0, description="weight of the KL term (1 = the ELBO; >1 = beta-VAE)")
    kl_warmup_steps: int = Field(0, ge=0, description="ramp the KL weight linearly from 0 to beta over this many steps")
    free_bits: float = Field(0.0, ge=0, description="nats per latent dimension (batch mean) below which the KL is not pushed")
    iw_samples: int = Field(1, ge=1, le=64, description="importance samples per image; > 1 trains the IWAE bound")
    grad_clip: float = Field(0.0, ge=0, description="clip the gradient norm to this (0: off)")
    init: Literal["scaled", "torch"] = Field(
        "scaled", description="scaled: fan-in normal weights with SiLU's gain, small output layer (deep nets such as "
                              "CIFAR's need it, or z carries nothing); torch: PyTorch's defaults (faster on the shallow MNIST VAE)")


def _noise(shape, rng: torch.Generator, device) -> torch.Tensor:
    return torch.randn(shape, generator=rng).to(device)


def binarize(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """x in [-1, 1] -> {0, 1}, each pixel 1 with probability equal to its intensity."""
    u = torch.rand(x.shape, generator=rng).to(x.device)
    return (u < (x.float() + 1) / 2).float()


def model_input(kind: str, target: torch.Tensor) -> torch.Tensor:
    """What the encoder sees of a target: binary images as {-1, 1}, 8-bit ones as they are."""
    return target * 2 - 1 if kind == "bernoulli" else target


class VAEMethod(ImageMethod):
    family = "vae"
    Config = VAEConfig
    exported = "vae"
    self_evaluates = True  # held-out ELBO at train.eval_every; the best weights are kept
    sample_options = {
        "temperature": SampleOption(float, 1.0, 0.0, 10.0, "standard deviation of the prior that z is drawn from "
                                                         "(1 = the model's prior; lower: blander, more typical images)"),
    }

    # -- data ---------------------------------------------------------------------------------------------
    @classmethod
    def prepare_data(cls, cfg, data_dir, run_dir, resume, accelerator) -> ImageData:
        mcfg = cls.Config.model_validate(cfg.model)
        data = super().prepare_data(cfg, data_dir, run_dir, resume, accelerator)
        cls._check(mcfg, data.spec)
        # Held-out images for the in-training score: `eval_samples` of the test split evenly strided across it
        # (its files are often ordered: the JPEG copy of CIFAR-10 by class), else (a folder) of the training images.
        n_val = cfg.train.eval_samples
        try:
            with accelerator.main_process_first():
                val = load_image_dataset(cfg.data.dataset, data_dir, "test", image_size=cfg.data.image_size,
                                         channels=cfg.data.channels)
            pool, pool_labels, source = val.images, val.labels, "test"
        except UserError:
            pool, pool_labels, source = data.images, data.labels, "train (no test split; not held out)"
        idx = evenly_spaced(len(pool), n_val)
        images = pool[idx.to(pool.device)].cpu()
        labels = pool_labels[idx.to(pool_labels.device)].cpu() if pool_labels is not None else None
        x = to_model_range(images.cpu())
        if mcfg.likelihood == "bernoulli":
            x = binarize(x, torch.Generator().manual_seed(VAL_BINARIZE_SEED))
        data.val = (x.to(accelerator.device), labels.to(accelerator.device) if labels is not None else None)
        data.meta = {**data.meta, "validation": f"{len(x)} images evenly strided across {source}"}
        return data

    @staticmethod
    def _check(cfg: VAEConfig, spec: DataSpec) -> None:
        if cfg.likelihood == "bernoulli" and spec.channels != 1:
            raise UserError(f"model.likelihood=bernoulli binarises grey images; this data has {spec.channels} channels. "
                            "Fix: set model.likelihood=logistic, or data.channels=1.")
        if cfg.mixtures > 1 and cfg.likelihood != "logistic":
            raise UserError("model.mixtures applies to model.likelihood=logistic. Fix: drop model.mixtures.")
        if cfg.conditional and not spec.num_classes:
            raise UserError("model.conditional=true needs a labelled dataset (class sub-folders); this one has no labels.")
        if cfg.iw_samples > 1 and (cfg.beta != 1 or cfg.free_bits or cfg.kl_warmup_steps):
            raise UserError("model.iw_samples > 1 trains the IWAE bound, which has no separate KL term to weight: "
                            "drop model.beta, model.free_bits and model.kl_warmup_steps, or set model.iw_samples=1.")

    # -- networks -----------------------------------------------------------------------------------------
    @classmethod
    def build_exported(cls, cfg: VAEConfig, spec: DataSpec) -> VAE:
        if spec.height != spec.width:
            raise UserError(f"The VAE needs square images, got {spec.height}x{spec.width}; set data.image_size.")
        cls._check(cfg, spec)
        return VAE(spec.height, spec.channels, cfg.latent_dim, cfg.width, cfg.hidden,
                   spec.num_classes if cfg.conditional else 0, cfg.likelihood, cfg.mixtures, cfg.init)

    def setup(self, train_cfg) -> None:
        net = self.build_exported(self.cfg, self.spec)
        self.networks = {"vae": net}
        self.optimizers = {"vae": torch.optim.Adam(net.parameters(), lr=train_cfg.lr,
                                                   betas=(train_cfg.beta1, train_cfg.beta2), fused=True)}

    # -- training -----------------------------------------------------------------------------------------
    def kl_weight(self) -> float:
        warm = self.cfg.kl_warmup_steps
        return self.cfg.beta * (min(1.0, (self.step + 1) / warm) if warm else 1.0)

    def training_step(self, accelerator, micro_batches, rng):
        net, opt, cfg = self.networks["vae"], self.optimizers["vae"], self.cfg
        k, n_mb = cfg.iw_samples, len(micro_batches)
        kl_weight = self.kl_weight()
        losses, recs, kls = [], [], []
        for i, (x, y) in enumerate(micro_batches):
            y = y if cfg.conditional else None
            target = binarize(x, rng) if cfg.likelihood == "bernoulli" else x
            eps = _noise((k, len(x), cfg.latent_dim) if k > 1 else (len(x), cfg.latent_dim), rng, x.device)
            with accelerator.no_sync(net) if i < n_mb - 1 else nullcontext():
                with accelerator.autocast():
                    params, z, mu, logvar = net(model_input(cfg.likelihood, target), y, eps)
                kl = gaussian_kl(mu, logvar)  # (N, D), in fp32 from here on
                if k == 1:
                    rec = -_unwrap(net).log_prob(params, target)
                    kl_term = kl.mean(0).clamp(min=cfg.free_bits).sum() if cfg.free_bits else kl.sum(1).mean()
                    loss = rec.mean() + kl_weight * kl_term
                else:
                    log_w = _log_weights(_unwrap(net), params, z, mu, logvar, target)
                    loss = -(torch.logsumexp(log_w, 0) - math.log(k)).mean()
                    rec = -_unwrap(net).log_prob(params[: len(x)], target)
                accelerator.backward(loss / n_mb)
            losses.append(loss.detach())
            recs.append(rec.detach().mean())
            kls.append(kl.detach().sum(1).mean())
        if cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        rec, kl = torch.stack(recs).mean(), torch.stack(kls).mean()
        return {"loss": torch.stack(losses).mean(), "rec": rec, "kl": kl, "neg_elbo": rec + kl}

    @classmethod
    def validation_score(cls, net, data, accelerator) -> dict[str, float]:
        x, y = data.val
        rec, kl = elbo_terms(net, x, y, torch.Generator().manual_seed(0))
        nelbo = float((rec + kl).mean())
        return {"eval_score": nelbo, "val_neg_elbo": nelbo, "val_rec": float(rec.mean()), "val_kl": float(kl.mean())}

    # -- generation -----------------------------------------------------------------------------------------
    @classmethod
    def latents(cls, net, n, rng, device, temperature: float = 1.0) -> torch.Tensor:
        return _noise((n, net.latent_dim), rng, device) * temperature

    @classmethod
    def decode(cls, net, z, labels) -> torch.Tensor:
        return net.mean(net.decode(z, _labels_for(net, labels, z.device)))

    @classmethod
    def encode(cls, net, x, labels) -> torch.Tensor:
        """The posterior mean of z for images x (float NCHW in [-1, 1])."""
        return net.encode(x, _labels_for(net, labels, x.device))[0]

    @classmethod
    def onnx_graphs(cls, net):
        """The decoder (z -> the likelihood's mean image, what `decode` renders) and the encoder (images -> the
        posterior mean, for reconstructions)."""
        labels = {"labels": torch.zeros(2, dtype=torch.long)} if net.num_classes else {}
        images = torch.zeros(2, net.channels, net.image_size, net.image_size)
        return {"decoder": OnnxGraph(_Decoder(net), {"z": torch.zeros(2, net.latent_dim), **labels}, ["images"]),
                "encoder": OnnxGraph(_Encoder(net), {"images": images, **labels}, ["z"])}

    @classmethod
    def runtime_config(cls, net):
        return {"latent_dim": net.latent_dim, "num_classes": net.num_classes}

    @classmethod
    def draw(cls, net, spec, n, labels, rng, temperature: float = 1.0, edit: bool = False, **_):
        drawn = {"z": cls.latents(net, n, rng, "cpu", temperature)}
        if net.num_classes:
            drawn["labels"] = (torch.arange(n) % net.num_classes if labels is None else labels).cpu()
        return drawn

    # Editing. Inpainting is a decoder-side completion: the hole starts as the decoding of the row's prior
    # draw z (a random digit) and is refilled `iterations` times with decode(encode(x)) of the current image,
    # the known pixels put back each time (iterated conditional modes on the posterior mean, cf. the imputation
    # of Rezende et al. 2014). It converges to the decodable image nearest the known pixels: as blurry as the
    # VAE's reconstructions, and deterministic but for the starting fill: several results for one input differ only
    # where different fills settle at different fixed points (often they settle at the same one).
    # Variations: z = sqrt(1 - s) mu(x) + sqrt(s) z_prior, decoded: s = 0 returns the input itself, 1 a prior
    # sample that ignores it.
    edit_options = {
        "inpaint": {"iterations": SampleOption(int, 30, 1, 500, "encode-decode rounds that refill the masked region")},
        "vary": {"strength": SampleOption(float, 0.3, 0.0, 1.0, "how far from the input's posterior mean, 0 (the "
                                                                "input) .. 1 (a prior sample: ignores it)")},
    }

    @classmethod
    def edit_tasks(cls, model_cfg: dict) -> tuple[str, ...]:
        return ("inpaint", "vary")

    @classmethod
    def render(cls, net, drawn, device, iterations: int = 30, strength: float = 0.3, **options):
        labels = drawn.get("labels")
        z = drawn["z"].to(device)
        if "keep" in drawn:
            known, keep = drawn["known"].to(device).float(), drawn["keep"].to(device).float()
            x = keep * known + (1 - keep) * cls.decode(net, z, labels).float()
            for _ in range(iterations):
                x = keep * known + (1 - keep) * cls.decode(net, cls.encode(net, x, labels), labels).float()
            return x
        if "start" in drawn:
            start = drawn["start"].to(device).float()
            if strength <= 0:
                return start
            return cls.decode(net, (1 - strength) ** 0.5 * cls.encode(net, start, labels) + strength**0.5 * z, labels)
        return cls.decode(net, z, labels)

    @classmethod
    def write_samples(cls, net, data, path, seed, accelerator) -> Path:
        out = super().write_samples(net, data, path, seed, accelerator)
        # and beside it, held-out images over their reconstructions: what the encoder keeps
        from genforge.data import from_model_range
        from genforge.visual import save_grid

        x, y = data.val[0][:32], (data.val[1][:32] if data.val[1] is not None else None)
        was_training = net.training
        net.eval()
        with torch.no_grad():
            x_img = model_input(net.likelihood, x)
            rec = cls.decode(net, cls.encode(net, x_img, y), y)
        net.train(was_training)
        pairs = torch.stack([x_img.float(), rec.float()], 1).flatten(0, 1)  # input, reconstruction, input, ...
        save_grid(from_model_range(pairs).cpu().numpy(), Path(path).with_name(Path(path).name + "-reconstructions.png"),
                  nrow=16, scale=2)
        return out

    # -- likelihood (genforge eval) ---------------------------------------------------------------------------
    @classmethod
    def likelihood_unit(cls, net) -> str:
        """'nats' for binarised images (per image, as the literature quotes them), 'bits/dim' for 8-bit ones."""
        return "nats" if net.likelihood == "bernoulli" else "bits/dim"

    @classmethod
    def likelihood_targets(cls, net, images_uint8: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """Real images as the likelihood scores them: binarised once (Bernoulli) or as they are."""
        x = to_model_range(images_uint8)
        return binarize(x, rng) if net.likelihood == "bernoulli" else x

    @classmethod
    def likelihood_terms(cls, net, target, labels, k: int, rng) -> dict[str, torch.Tensor]:
        """Per image: the k-sample importance estimate of log p(x), and the ELBO's two terms, in nats."""
        rec, kl = elbo_terms(net, target, labels, rng)
        return {"log_likelihood": importance_log_likelihood(net, target, labels, k, rng), "rec": rec, "kl": kl}


def _unwrap(net):
    """The VAE itself under a DDP or torch.compile wrapper (for its likelihood, which has no weights)."""
    while hasattr(net, "module") or hasattr(net, "_orig_mod"):
        net = getattr(net, "module", None) or net._orig_mod
    return net


class _Decoder(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, z, labels=None):
        return self.net.mean(self.net.decode(z, labels))


class _Encoder(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, images, labels=None):
        return self.net.encode(images, labels)[0]


def _labels_for(net, labels, device):
    """Labels for a conditional VAE (None for an unconditional one, whatever was passed)."""
    return labels.to(device) if net.num_classes and labels is not None else None


def _log_weights(net: VAE, params, z, mu, logvar, target) -> torch.Tensor:
    """log p(x | z_i) + log p(z_i) - log q(z_i | x), (K, N), for z (K, N, D) decoded into params (K*N, ...)."""
    k = z.shape[0]
    log_px = net.log_prob(params, target.repeat(k, 1, 1, 1)).view(k, -1)
    return log_px + gaussian_log_prob(z) - gaussian_log_prob(z, mu, logvar)


@torch.no_grad()
def elbo_terms(net: VAE, target, labels, rng, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction term -log p(x | z) (one draw) and KL, per image, in nats, eval mode."""
    was_training = net.training
    net.eval()
    recs, kls = [], []
    try:
        for s in range(0, len(target), batch):
            t = target[s : s + batch]
            lab = _labels_for(net, labels[s : s + batch] if labels is not None else None, t.device)
            params, _, mu, logvar = net(model_input(net.likelihood, t), lab, _noise((len(t), net.latent_dim), rng, t.device))
            recs.append(-net.log_prob(params, t))
            kls.append(gaussian_kl(mu, logvar).sum(1))
    finally:
        net.train(was_training)
    return torch.cat(recs), torch.cat(kls)


@torch.no_grad()
def importance_log_likelihood(net: VAE, target, labels, k: int, rng, max_batch: int = 4096) -> torch.Tensor:
    """log p(x) estimated with k importance samples from q(z | x), per image, in nats (Burda et al. 2016).

    Images are taken `max_batch // k` at a time (one at a time, in slices of samples, when k is larger)."""
    was_training = net.training
    net.eval()
    out = []
    per = max(1, max_batch // k)  # images per chunk
    draws = min(k, max_batch)  # samples per decoder call, per image
    try:
        for s in range(0, len(target), per):
            t = target[s : s + per]
            lab = _labels_for(net, labels[s : s + per] if labels is not None else None, t.device)
            mu, logvar = net.encode(model_input(net.likelihood, t), lab)
            logs = []
            for d in range(0, k, draws):
                m = min(draws, k - d)
                z = mu + torch.exp(0.5 * logvar) * _noise((m, len(t), net.latent_dim), rng, t.device)
                params = net.decode(z.flatten(0, 1), lab.repeat(m) if lab is not None else None)
                logs.append(_log_weights(net, params, z, mu, logvar, t))
            out.append(torch.logsumexp(torch.cat(logs), 0) - math.log(k))
    finally:
        net.train(was_training)
    return torch.cat(out)
