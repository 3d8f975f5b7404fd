"""Diffusion training objective: denoising under a noise schedule (Ho et al. 2020), three parameterisations.

Per image: a time t, noise eps, x_t = alpha(t) x0 + sigma(t) eps, and the UNet regresses what its
parameterisation says (`diffusion.training_target`): the noise (eps), v = alpha eps - sigma x0 (Salimans & Ho
2022), or the velocity eps - x0 of the straight flow-matching path (Liu et al. 2022; Lipman et al. 2022). The
loss is their mean squared error. A conditional model sees "no class" instead of its label with probability
`label_dropout`, so one network gives both predictions classifier-free guidance mixes (Ho & Salimans 2022).

Sampling is the samplers' business (`diffusion/samplers.py`): a run trained once is sampled by DDPM, DDIM or
DPM-Solver++ with any number of steps, chosen at sampling time (`sample_options`). `draw` takes the initial
noise and one seed per image for the stochastic samplers' per-step noise, so an image depends on its own seed
alone, whatever shares its batch, and a seed gives the same starting noise under every sampler.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from genforge.diffusion import SAMPLERS, make_schedule, sample as run_sampler, split_prediction, training_target
from genforge.diffusion import editing
from genforge.diffusion.samplers import invert as invert_sampler, is_stochastic, resolve_steps, step_noise
from genforge.errors import UserError
from genforge.methods.base import DataSpec, MethodConfig, OnnxGraph, SampleOption
from genforge.methods.images import ImageMethod
from genforge.models.unet import UNet


class DiffusionConfig(MethodConfig):
    objective: Literal["eps", "v", "flow"] = Field(
        "eps", description="what the UNet predicts: eps (the noise), v (alpha eps - sigma x0) or flow (the velocity "
                           "eps - x0 of the straight path x_t = (1 - t) x0 + t eps, rectified flow)")
    schedule: Literal["linear", "cosine"] = Field("linear", description="noise schedule of eps and v (flow has its own path)")
    timesteps: int = Field(1000, ge=10, le=10_000, description="T, the discrete steps of eps and v (DDPM samples all of them)")
    width: int = Field(32, ge=8, description="channels of the first stage (multiplied by `mults` per stage)")
    mults: list[int] | None = Field(None, description="channel multiplier per stage (default from the image size: "
                                                        "28 px 1,2,2; 32 px 1,2,2,2; 64 px 1,2,2,4)")
    res_blocks: int = Field(1, ge=1, le=4, description="residual blocks per stage")
    attention_below: int = Field(8, ge=0, description="self-attention at feature maps this size or smaller")
    dropout: float = Field(0.0, ge=0, lt=1)
    conditional: bool = Field(False, description="class-conditional (with classifier-free guidance)")
    label_dropout: float = Field(0.1, ge=0, lt=1, description="share of training images shown as 'no class' (conditional)")
    upscale_from: int | None = Field(None, ge=2, description="super-resolution: the side of the low-resolution "
                                     "image the model is conditioned on (e.g. 14 for a 28 px model); training pairs "
                                     "are the data and its area-averaged downsampling (SR3, Saharia et al. 2021)")
    grad_clip: float = Field(1.0, ge=0, description="clip the gradient norm to this (0: off)")
    # defaults for sampling (each can be changed at sampling time)
    sampler: Literal["ddpm", "ddim", "dpmpp2m", "unipc"] = Field("unipc", description="default sampler")
    steps: int = Field(20, ge=1, description="default network calls per sample (ddpm: T)")
    guidance: float = Field(1.0, ge=0, description="default guidance scale: 0 unconditional, 1 conditional, > 1 guided")
    noise_mark: bool = Field(False, description="plant the keyed noise mark (Tree-Ring style, diffusion/noise_mark.py) "
                                                "in the starting noise of every sample when a mark key is set; "
                                                "`genforge verify --model RUN` finds it by inverting the sampler")


class DiffusionMethod(ImageMethod):
    family = "diffusion"
    Config = DiffusionConfig
    exported = "unet"
    sample_options = {
        "sampler": SampleOption(str, "unipc", help="ddpm (ancestral, T steps), ddim, dpmpp2m "
                                                     "(DPM-Solver++(2M)) or unipc (UniPC), best at 10-20 steps", choices=SAMPLERS),
        "steps": SampleOption(int, 0, 0, 10_000, "network calls per image; 0: the model's default for its "
                                                 "default sampler (model.steps), else ddpm T, ddim 50, dpmpp2m and unipc 20"),
        "eta": SampleOption(float, 0.0, 0.0, 1.0, "ddim only: 0 deterministic, 1 as noisy as DDPM"),
        "guidance": SampleOption(float, 1.0, 0.0, 20.0, "conditional models: 0 ignores the label, 1 follows it, "
                                                        "> 1 follows it harder (classifier-free guidance)"),
    }

    @classmethod
    def options_for(cls, model_cfg: dict) -> dict[str, SampleOption]:
        """The sampling options with this run's defaults; guidance only for a conditional model."""
        cfg = cls.Config.model_validate(model_cfg)
        opts = dict(cls.sample_options)
        opts["sampler"] = opts["sampler"].with_default(cfg.sampler)
        if cfg.conditional:
            opts["guidance"] = opts["guidance"].with_default(cfg.guidance)
        else:
            del opts["guidance"]
        return opts

    edit_options = {
        "inpaint": {  # RePaint samples ancestrally: with a stochastic sampler the fill keeps adjusting to the known
            # pixels (measured on mnist-ddpm, lower half masked, 200 digits: 68% recognised as their true class
            # with ddim eta 1 against 54% with the deterministic UniPC, at the same 40 network calls)
            "sampler": SampleOption(str, "ddim", help="the sampler (ddim with eta 1 is the DDPM posterior on the grid, "
                                                      "what RePaint samples with)", choices=SAMPLERS),
            "steps": SampleOption(int, 20, 1, 10_000, "sampler steps; network calls are steps x resample"),
            "eta": SampleOption(float, 1.0, 0.0, 1.0, "ddim: 1 draws fresh noise at each step (the default), 0 is "
                                                      "deterministic"),
            "jump": SampleOption(int, 5, 1, 100, "RePaint: sampler steps per block; each block is walked `resample` times"),
            "resample": SampleOption(int, 2, 1, 20, "RePaint: walks per block (1: no resampling, only the known pixels "
                                                    "put back after each step); network calls are steps x resample"),
        },
        "vary": {"strength": SampleOption(float, 0.6, 0.0, 1.0, "SDEdit: how far the input is noised before sampling "
                                                                "back, 0 (the input) .. 1 (ignores it)")},
        "upscale": {"consistent": SampleOption(bool, True, help="DDNM: take each step's block averages from the "
                                                               "input, so the output downsampled is the input; false: "
                                                               "SR3's plain conditional sampling")},
    }

    @classmethod
    def edit_tasks(cls, model_cfg: dict) -> tuple[str, ...]:
        """A super-resolution model upscales; any other image model inpaints and varies."""
        if model_cfg.get("upscale_from"):
            return ("upscale",)
        return () if model_cfg.get("frames") else ("inpaint", "vary")

    # -- data and networks ------------------------------------------------------------------------------------
    @classmethod
    def prepare_data(cls, cfg, data_dir, run_dir, resume, accelerator):
        mcfg = cls.Config.model_validate(cfg.model)
        data = super().prepare_data(cfg, data_dir, run_dir, resume, accelerator)
        cls._check(mcfg, data.spec)
        return data

    @staticmethod
    def _check(cfg: DiffusionConfig, spec: DataSpec) -> None:
        if cfg.conditional and not spec.num_classes:
            raise UserError("model.conditional=true needs a labelled dataset (class sub-folders); this one has no labels.")
        if spec.height != spec.width:
            raise UserError(f"The UNet needs square images, got {spec.height}x{spec.width}; set data.image_size.")
        if cfg.upscale_from:
            if spec.height % cfg.upscale_from or spec.height == cfg.upscale_from:
                raise UserError(f"model.upscale_from={cfg.upscale_from} must divide the image side {spec.height} "
                                f"(e.g. {spec.height // 2}): low-resolution inputs are area averages of whole blocks.")
            if spec.frames:
                raise UserError("model.upscale_from applies to image models, not clips.")

    @classmethod
    def build_exported(cls, cfg: DiffusionConfig, spec: DataSpec) -> UNet:
        cls._check(cfg, spec)
        net = UNet(spec.height, spec.channels, cfg.width, tuple(cfg.mults) if cfg.mults else None, cfg.res_blocks,
                   cfg.attention_below, spec.num_classes if cfg.conditional else 0, cfg.dropout, spec.frames,
                   cfg.upscale_from or 0)
        # what sampling needs besides the weights (plain attributes: the config, not the state dict, holds them)
        net.objective, net.schedule_kind, net.timesteps = cfg.objective, cfg.schedule, cfg.timesteps
        net.default_sampler, net.default_steps = cfg.sampler, cfg.steps
        net.noise_mark = cfg.noise_mark
        return net

    def setup(self, train_cfg) -> None:
        net = self.build_exported(self.cfg, self.spec)
        self.networks = {"unet": net}
        self.optimizers = {"unet": torch.optim.Adam(net.parameters(), lr=train_cfg.lr,
                                                    betas=(train_cfg.beta1, train_cfg.beta2), fused=True)}
        self.schedule = make_schedule(self.cfg.objective, self.cfg.schedule, self.cfg.timesteps)

    # -- training -------------------------------------------------------------------------------------------
    def training_step(self, accelerator, micro_batches, rng):
        net, opt, cfg = self.networks["unet"], self.optimizers["unet"], self.cfg
        n_mb, losses = len(micro_batches), []
        for i, (x0, y) in enumerate(micro_batches):
            x0 = x0.float()
            x_t, t, eps, a, s = noised(self.schedule, x0, rng)
            labels = None
            if cfg.conditional:
                drop = (torch.rand(len(x0), generator=rng) < cfg.label_dropout).to(x0.device)
                labels = torch.where(drop, torch.full_like(y, self.spec.num_classes), y)
            with accelerator.no_sync(net) if i < n_mb - 1 else nullcontext():
                low = downsample(x0, cfg.upscale_from) if cfg.upscale_from else None
                with accelerator.autocast():
                    out = net(x_t, t, labels, low) if low is not None else net(x_t, t, labels)
                loss = F.mse_loss(out.float(), training_target(cfg.objective, x0, eps, a, s))
                accelerator.backward(loss / n_mb)
            losses.append(loss.detach())
        if cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return {"loss": torch.stack(losses).mean()}

    # -- generation -----------------------------------------------------------------------------------------
    @classmethod
    def draw(cls, net, spec, n, labels, rng, edit: bool = False, **options):
        if getattr(net, "low_res", 0) and not edit:
            raise UserError(f"This is a super-resolution model ({net.low_res} -> {net.image_size} px): it upscales "
                            "images rather than drawing new ones. Use `genforge upscale RUN --in IMAGE --out PATH` "
                            "(or gen.upscale(images)).")
        steps = options.get("steps") or 0
        if net.objective != "flow" and steps > net.timesteps:  # checked here, when a request is made, not in a batch
            raise UserError(f"steps={steps} is more than the model's {net.timesteps} training steps (T); use 1..{net.timesteps}.")
        drawn = {"x": torch.randn((n, *_sample_shape(net, options.get("frames"))), generator=rng),
                 "seeds": torch.randint(0, 2**62, (n,), generator=rng)}
        if net.num_classes:
            drawn["labels"] = (torch.arange(n) % net.num_classes if labels is None else labels).cpu()
        return drawn

    @classmethod
    def render(cls, net, drawn, device, sampler: str = "dpmpp2m", steps: int = 0, eta: float = 0.0,
               guidance: float = 1.0, progress=None, strength: float = 0.6, jump: int = 5, resample: int = 2,
               consistent: bool = True, **_):
        """Images from drawn rows: sampled from noise; or, when the rows carry an edit's inputs, inpainted
        (`known`, `keep`), varied (`start`) or upscaled (`low`): see diffusion/editing.py."""
        objective = net.objective
        schedule = make_schedule(objective, net.schedule_kind, net.timesteps)
        steps = _steps(net, schedule, sampler, steps)
        x = drawn["x"].to(device)
        labels = drawn["labels"].to(device) if "labels" in drawn and net.num_classes else None
        low = drawn["low"].to(device).float() if "low" in drawn else None

        def model(x, t):
            out = guided_output(net, x, torch.full((len(x),), float(t), device=device), labels, guidance, low)
            a, s = schedule.alpha_sigma(t)
            return split_prediction(objective, out, x, float(a), float(s))

        if low is not None and consistent:
            model = editing.low_consistent(model, low, schedule)
        shape = tuple(x.shape[1:])
        noise = _step_noise(drawn["seeds"], shape, device) if is_stochastic(sampler, eta) else None
        if "keep" in drawn:
            fresh = editing.known_noise(drawn["seeds"].tolist(), shape)
            return editing.inpaint(model, x.float(), drawn["known"].to(device).float(), drawn["keep"].to(device).float(),
                                   schedule, sampler, steps, eta, noise, lambda: torch.from_numpy(fresh()).to(device),
                                   jump, resample, progress)
        if "start" in drawn:
            return editing.vary(model, drawn["start"].to(device).float(), x.float(), strength, schedule, sampler, steps,
                                eta, noise, progress)
        return run_sampler(model, x.float(), schedule, sampler, steps, eta, noise, progress)

    @classmethod
    def invert(cls, net, x: torch.Tensor, device, steps: int = 10, labels=None) -> torch.Tensor:
        """The starting noise that the deterministic sampler maps to images x (model range, NCHW), found by
        running it backwards (`diffusion.samplers.invert`): what the noise mark is read from."""
        schedule = make_schedule(net.objective, net.schedule_kind, net.timesteps)
        if labels is None and net.num_classes:  # a conditional model's "no class": the label is not known
            labels = torch.full((len(x),), net.num_classes, dtype=torch.long, device=device)

        def model(x, t):
            out = guided_output(net, x, torch.full((len(x),), float(t), device=device), labels, 1.0)
            a, s = schedule.alpha_sigma(t)
            return split_prediction(net.objective, out, x, float(a), float(s))

        return invert_sampler(model, x.to(device).float(), schedule, steps)

    @classmethod
    def onnx_graphs(cls, net):
        """The UNet alone (x, t[, labels][, low] -> its output); the sampler loop runs outside it, in the runtime,
        with the same `diffusion/samplers.py` as here."""
        inputs = {"x": torch.zeros(2, *_sample_shape(net, None)), "t": torch.full((2,), 0.5)}
        if net.low_res:  # super-resolution: the low-resolution image is an input; the graph upsamples it
            inputs["low"] = torch.zeros(2, net.channels, net.low_res, net.low_res)
            if net.num_classes:
                inputs["labels"] = torch.zeros(2, dtype=torch.long)
            return {"unet": OnnxGraph(_WithLow(net), inputs, ["out"])}
        dynamic = None
        if net.frames:  # a clip's length is free too
            dynamic = {"x": {0: "batch", 1: "frames"}, "t": {0: "batch"}, "labels": {0: "batch"}}
        if net.num_classes:
            inputs["labels"] = torch.zeros(2, dtype=torch.long)
            return {"unet": OnnxGraph(net, inputs, ["out"], dynamic)}
        if dynamic:
            del dynamic["labels"]
        return {"unet": OnnxGraph(_Unconditional(net), inputs, ["out"], dynamic)}

    @classmethod
    def runtime_config(cls, net):
        return {"objective": net.objective, "schedule": net.schedule_kind, "timesteps": net.timesteps,
                "default_sampler": net.default_sampler, "default_steps": net.default_steps,
                "num_classes": net.num_classes, "frames": net.frames, "low_res": net.low_res,
                "noise_mark": bool(getattr(net, "noise_mark", False))}

    @classmethod
    def network_calls(cls, net, n: int, labels=None, sampler: str = "dpmpp2m", steps: int = 0,
                      guidance: float = 1.0, task: str | None = None, strength: float = 0.6, resample: int = 2,
                      **_) -> int:
        """n x the sampler's steps (an inpainting's times resample, a variation's part of them), twice that when
        guidance mixes two predictions per step."""
        schedule = make_schedule(net.objective, net.schedule_kind, net.timesteps)
        steps = _steps(net, schedule, sampler, steps)
        if task == "inpaint":
            steps = editing.inpaint_calls(steps, resample)
        elif task == "vary":
            steps = editing.vary_calls(schedule, strength, steps)
        guided = bool(net.num_classes) and guidance not in (0.0, 1.0)
        return n * steps * (2 if guided else 1)

    @classmethod
    def write_samples(cls, net, data, path, seed, accelerator):
        """A super-resolution model's grid: 8 training images' low-resolution versions upscaled bicubically (top
        row), by the model (middle) and the originals (bottom); other models draw from noise (ImageMethod)."""
        if not getattr(net, "low_res", 0):
            return super().write_samples(net, data, path, seed, accelerator)
        from genforge.data import from_model_range, to_model_range
        from genforge.visual import save_grid

        real = to_model_range(data.images[:8]).float()
        low = downsample(real, net.low_res)
        rng = torch.Generator().manual_seed(seed)
        drawn = {**cls.draw(net, data.spec, len(real), None, rng, edit=True), "low": low.cpu()}
        was_training = net.training
        net.eval()
        with torch.no_grad(), accelerator.autocast():
            up = cls.render(net, drawn, accelerator.device).float()
        net.train(was_training)
        bicubic = F.interpolate(low, size=real.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
        rows = torch.cat([bicubic, up.to(real.device), real])
        out = Path(path).with_suffix(".png")
        save_grid(from_model_range(rows).cpu().numpy(), out, len(real), scale=2)
        return out

    @classmethod
    def latents(cls, net, n, rng, device, **options) -> torch.Tensor:
        """The starting noise: a deterministic sampler (DDIM with eta 0, DPM-Solver++) maps it to one image."""
        return torch.randn((n, *_sample_shape(net, options.get("frames"))), generator=rng).to(device)

    @classmethod
    def decode(cls, net, z, labels) -> torch.Tensor:
        drawn = {"x": z, "seeds": torch.zeros(len(z), dtype=torch.long)}
        if net.num_classes and labels is not None:
            drawn["labels"] = labels
        sampler = net.default_sampler if net.default_sampler != "ddpm" else "ddim"  # deterministic: z -> one image
        return cls.render(net, drawn, z.device, sampler, 0, 0.0)


class _Unconditional(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t):
        return self.net(x, t, None)


class _WithLow(torch.nn.Module):
    """A super-resolution UNet as an ONNX graph: (x, t, low[, labels])."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t, low, labels=None):
        return self.net(x, t, labels, low)


def _sample_shape(net, frames: int | None) -> tuple[int, ...]:
    """One sample's shape: (C, H, W), or (T, C, H, W) for a clip of `frames` (default: the trained length)."""
    image = (net.channels, net.image_size, net.image_size)
    return (frames or net.frames, *image) if net.frames else image


def _steps(net, schedule, sampler: str, steps: int) -> int:
    return resolve_steps(sampler, steps, schedule, net.default_sampler, net.default_steps)


def _step_noise(seeds: torch.Tensor, shape: tuple, device):
    """`diffusion.step_noise` (numpy, per image seed, shared with the runtime) as torch tensors on `device`."""
    noise = step_noise(seeds.tolist(), shape)
    return lambda i: torch.from_numpy(noise(i)).to(device)


def downsample(x: torch.Tensor, side: int) -> torch.Tensor:
    """A super-resolution model's low-resolution input: area averages of whole blocks, rounded to the 256 levels
    an 8-bit file holds (what `upscale` is given), in the model range [-1, 1]."""
    low = F.avg_pool2d(x.float(), x.shape[-1] // side)
    return torch.round((low.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def noised(schedule, x0: torch.Tensor, rng: torch.Generator):
    """A training example: times t (N,) from the schedule, noise eps, x_t = alpha x0 + sigma eps; alpha and sigma
    shaped (N, 1, 1, 1) (N, 1, 1, 1, 1 for clips). All randomness from `rng` (CPU), so a step is a function of its seed."""
    n = len(x0)
    t = schedule.training_times(torch.rand(n, generator=rng, dtype=torch.float64).numpy())
    alpha, sigma = schedule.alpha_sigma(t)
    eps = torch.randn(x0.shape, generator=rng).to(x0.device)
    shape = (-1,) + (1,) * (x0.dim() - 1)
    a = torch.as_tensor(alpha, dtype=torch.float32, device=x0.device).view(shape)
    s = torch.as_tensor(sigma, dtype=torch.float32, device=x0.device).view(shape)
    return a * x0 + s * eps, torch.as_tensor(t, dtype=torch.float32, device=x0.device), eps, a, s


def guided_output(net, x, t, labels, guidance: float, low=None) -> torch.Tensor:
    """The network's output, classifier-free guided: uncond + guidance * (cond - uncond). guidance 0 is the
    unconditional prediction, 1 the conditional one (one network call for either), more pushes past it.
    `low`: a super-resolution model's low-resolution images."""
    extra = () if low is None else (low,)
    if labels is None or guidance == 1.0:
        return net(x, t, labels, *extra).float()
    null = torch.full_like(labels, net.num_classes)
    if guidance == 0.0:
        return net(x, t, null, *extra).float()
    extra = () if low is None else (torch.cat([low, low]),)
    cond, uncond = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]), *extra).float().chunk(2)
    return uncond + guidance * (cond - uncond)
