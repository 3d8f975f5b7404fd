"""Each image family's sampling in numpy around its ONNX graphs: the runtime's side of `Method.draw` and
`Method.render`. `draw` takes all randomness from a numpy Generator; `render` is deterministic given what
was drawn (diffusion's stochastic samplers draw their step noise from per-image seeds, as the torch path
does). The same seed gives the same images here on every machine, though not the same images as the torch
path, whose generator differs; given the same drawn inputs, the outputs match it (the parity tests)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import numpy as np

from genforge.diffusion import editing, make_schedule, sample, split_prediction
from genforge.diffusion.samplers import invert as invert_sampler, is_stochastic, resolve_steps, step_noise
from genforge.errors import UserError
from genforge.runtime.wavenet import WaveNetFamily

Graph = Callable[..., np.ndarray]  # graph(**inputs) -> the graph's first output


class Family(ABC):
    """Draws a batch's random inputs and renders them (float NCHW in [-1, 1]) with the export's graphs."""

    def __init__(self, config: dict, graphs: dict[str, Graph]):
        self.config, self.graphs = config, graphs
        self.num_classes = int(config.get("num_classes") or 0)

    def _labels(self, labels, n, rng) -> dict:
        if not self.num_classes:
            return {}
        return {"labels": (np.arange(n) % self.num_classes if labels is None else np.asarray(labels)).astype(np.int64)}

    @abstractmethod
    def draw(self, n: int, labels, rng: np.random.Generator, **options) -> dict[str, np.ndarray]:
        """Every random input of n samples, from `rng`."""

    @abstractmethod
    def render(self, drawn: dict[str, np.ndarray], progress=None, **options) -> np.ndarray:
        """Images from drawn inputs, deterministically."""

    def network_calls(self, n: int, **options) -> int:
        return n


class GAN(Family):
    def _labels(self, labels, n, rng):
        prior = self.config.get("label_prior")
        if self.num_classes and labels is None and prior is not None:  # self-conditioned: clusters as in training
            p = np.asarray(prior, dtype=np.float64)
            return {"labels": rng.choice(self.num_classes, size=n, p=p / p.sum()).astype(np.int64)}
        return super()._labels(labels, n, rng)

    def draw(self, n, labels, rng, **options):
        z = rng.standard_normal((n, self.config["z_dim"]), dtype=np.float32)
        codes = int(self.config.get("codes") or 0)
        if codes:  # InfoGAN: a one-hot categorical code after the Gaussian part
            z = np.concatenate([z, np.eye(codes, dtype=np.float32)[rng.integers(codes, size=n)]], axis=1)
        return {"z": z, **self._labels(labels, n, rng)}

    def render(self, drawn, progress=None, frames: int = 0, **options):
        if self.config.get("frames"):  # a clip generator: the clip length is the length of its frame-index input
            drawn = {**drawn, "frame_index": np.arange(frames or self.config["frames"], dtype=np.int64)}
        return self.graphs["generator"](**drawn)


class VAE(Family):
    def draw(self, n, labels, rng, temperature: float = 1.0, **options):
        z = rng.standard_normal((n, self.config["latent_dim"]), dtype=np.float32) * np.float32(temperature)
        return {"z": z, **self._labels(labels, n, rng)}

    def render(self, drawn, progress=None, iterations: int = 30, strength: float = 0.3, **options):
        """As methods/vae.py `render`: sampled, completed (known, keep) or varied (start)."""
        labels = {"labels": drawn["labels"]} if "labels" in drawn else {}
        decode = lambda z: self.graphs["decoder"](z=z.astype(np.float32), **labels)  # noqa: E731
        encode = lambda x: self.graphs["encoder"](images=x.astype(np.float32), **labels)  # noqa: E731
        if "keep" in drawn:
            known, keep = drawn["known"], drawn["keep"]
            x = keep * known + (1 - keep) * decode(drawn["z"])
            for _ in range(iterations):
                x = keep * known + (1 - keep) * decode(encode(x))
            return x
        if "start" in drawn:
            if strength <= 0:
                return drawn["start"]
            return decode(np.float32((1 - strength) ** 0.5) * encode(drawn["start"]) + np.float32(strength**0.5) * drawn["z"])
        return decode(drawn["z"])


class Diffusion(Family):
    def __init__(self, config, graphs):
        super().__init__(config, graphs)
        self.schedule = make_schedule(config["objective"], config["schedule"], config["timesteps"])

    def _steps(self, sampler: str, steps: int) -> int:
        return resolve_steps(sampler, steps, self.schedule, self.config["default_sampler"], self.config["default_steps"])

    def draw(self, n, labels, rng, sampler: str = "dpmpp2m", steps: int = 0, frames: int = 0, edit: bool = False,
             **options):
        if self.config.get("low_res") and not edit:
            raise UserError(f"This is a super-resolution model ({self.config['low_res']} px in): it upscales images rather "
                            "than drawing new ones. Use `genforge upscale EXPORT --in IMAGE --out PATH` (or .upscale).")
        self._steps(sampler, steps)  # a bad request fails when it is made, not in a batch
        clip = (frames or self.config["frames"],) if self.config.get("frames") else ()  # a clip: (T, C, H, W) each
        shape = (n, *clip, *self.config["shape"])
        return {"x": rng.standard_normal(shape, dtype=np.float32),
                "seeds": rng.integers(0, 2**62, size=n, dtype=np.int64), **self._labels(labels, n, rng)}

    def invert(self, x: np.ndarray, steps: int = 10) -> np.ndarray:
        """As methods/diffusion.py `invert`: images (model range, NCHW) back to their starting noise."""
        unet, objective, schedule = self.graphs["unet"], self.config["objective"], self.schedule
        null = {"labels": np.full(len(x), self.num_classes, dtype=np.int64)} if self.num_classes else {}

        def model(x, t):
            x = x.astype(np.float32, copy=False)
            out = unet(x=x, t=np.full(len(x), t, dtype=np.float32), **null)
            a, s = schedule.alpha_sigma(t)
            return split_prediction(objective, out, x, float(a), float(s))

        return np.asarray(invert_sampler(model, np.asarray(x, dtype=np.float32), schedule, steps), dtype=np.float32)

    def network_calls(self, n, sampler: str = "dpmpp2m", steps: int = 0, guidance: float = 1.0, task: str | None = None,
                      strength: float = 0.6, resample: int = 2, **options):
        guided = bool(self.num_classes) and guidance not in (0.0, 1.0)
        steps = self._steps(sampler, steps)
        if task == "inpaint":
            steps = editing.inpaint_calls(steps, resample)
        elif task == "vary":
            steps = editing.vary_calls(self.schedule, strength, steps)
        return n * steps * (2 if guided else 1)

    def render(self, drawn, progress=None, sampler: str = "dpmpp2m", steps: int = 0, eta: float = 0.0,
               guidance: float = 1.0, strength: float = 0.6, jump: int = 5, resample: int = 2, consistent: bool = True,
               **options):
        """As methods/diffusion.py `render`: sampled from noise, inpainted (known, keep), varied (start) or
        upscaled (low), with diffusion/samplers.py and diffusion/editing.py."""
        unet, objective, schedule = self.graphs["unet"], self.config["objective"], self.schedule
        steps = self._steps(sampler, steps)
        x, labels = drawn["x"], drawn.get("labels")
        low = {"low": drawn["low"].astype(np.float32)} if "low" in drawn else {}

        def output(x, t):
            x, tt = x.astype(np.float32, copy=False), np.full(len(x), t, dtype=np.float32)
            if labels is None:
                return unet(x=x, t=tt, **low)
            if guidance == 1.0:
                return unet(x=x, t=tt, labels=labels, **low)
            null = np.full_like(labels, self.num_classes)
            if guidance == 0.0:
                return unet(x=x, t=tt, labels=null, **low)
            both_low = {"low": np.concatenate([low["low"], low["low"]])} if low else {}
            both = unet(x=np.concatenate([x, x]), t=np.concatenate([tt, tt]), labels=np.concatenate([labels, null]),
                        **both_low)
            cond, uncond = both[: len(x)], both[len(x):]
            return uncond + np.float32(guidance) * (cond - uncond)

        def model(x, t):
            a, s = schedule.alpha_sigma(t)
            return split_prediction(objective, output(x, t), x, float(a), float(s))

        if low and consistent:
            model = editing.low_consistent(model, low["low"], schedule)
        noise = step_noise(drawn["seeds"], tuple(x.shape[1:])) if is_stochastic(sampler, eta) else None
        x = x.astype(np.float32)
        if "keep" in drawn:
            fresh = editing.known_noise(drawn["seeds"], tuple(x.shape[1:]))
            out = editing.inpaint(model, x, drawn["known"].astype(np.float32), drawn["keep"].astype(np.float32), schedule,
                                  sampler, steps, eta, noise, fresh, jump, resample, progress)
        elif "start" in drawn:
            out = editing.vary(model, drawn["start"].astype(np.float32), x, strength, schedule, sampler, steps, eta,
                               noise, progress)
        else:
            out = sample(model, x, schedule, sampler, steps, eta, noise, progress)
        return np.asarray(out, dtype=np.float32)


FAMILIES: dict[str, type] = {"gan": GAN, "vae": VAE, "diffusion": Diffusion, "wavenet": WaveNetFamily}
