"""A loaded image model (`genforge.load` of a GAN, VAE or diffusion run)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import genforge.precision as prec
from genforge.data import from_model_range
from genforge.errors import UserError
from genforge.generators.base import WEIGHTS_FILE, _Generator
from genforge.generators.editing import ImageEditing
from genforge.labels import label_index, label_indices
from genforge.methods import DataSpec, get_method


@dataclass
class ImageJob:
    """One request's images, ready to render: n, the family's options and what `draw` took from its seed."""

    n: int
    options: dict
    drawn: dict[str, torch.Tensor]
    calls: int = 0  # the network's forward passes these images cost, in images (what a server limits)


class ImageGenerator(ImageEditing, _Generator):
    """A loaded image model: `generate(n, seed, labels)` -> uint8 (N, H, W, C); `inpaint`, `vary`, `upscale`
    (generators/editing.py) for the families that edit."""

    PROBE_BATCH = 64
    modality = "image"

    def __init__(self, run_dir: Path, meta: dict, net: torch.nn.Module, device: torch.device,
                 weights_file: str = WEIGHTS_FILE, precision: str = "no"):
        self.run_dir, self.meta, self.net, self.device = run_dir, meta, net, device
        self.weights_file = weights_file  # which weights were loaded: model.safetensors or model-best.safetensors
        data = meta["data"]
        self.method = get_method(meta["family"])
        self.spec: DataSpec = self.method.spec_from_meta(data)  # with frames for clips
        self.classes: list[str] = list(data.get("classes") or [])
        self.conditional: bool = bool(meta["model"].get("conditional", False))
        self._use_precision(precision)

    def _generation_steps(self, names):
        low = self.low_res

        def step_in(dtype):
            def step():
                rng = torch.Generator().manual_seed(0)
                with torch.no_grad(), self._autocast(dtype):
                    if low:  # a super-resolution model's unit of work: upscaling a batch
                        drawn = self.method.draw(self.net, self.spec, self.PROBE_BATCH, None, rng, edit=True)
                        drawn["low"] = torch.zeros(self.PROBE_BATCH, self.spec.channels, low, low)
                        self.method.render(self.net, drawn, self.device)
                    else:
                        self.method.sample(self.net, self.spec, self.PROBE_BATCH, None, rng, self.device)
            return step

        return {name: step_in(prec.autocast_dtype(name)) for name in names}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.spec.height, self.spec.width, self.spec.channels)

    def label_index(self, label: int | str) -> int:
        """A class index from an int or a class name ("7", "Sneaker")."""
        return label_index(self.classes, label)

    def options(self) -> dict[str, dict]:
        """This family's generation options beyond n / seed / labels, with this run's defaults:
        {name: {type, default, min, max, help[, choices]}}."""
        return {name: o.describe() for name, o in self._known_options().items()}

    def _known_options(self):
        return self.method.options_for(self.meta.get("model") or {})

    def _options(self, options: dict) -> dict:
        """The options checked against their ranges, the run's defaults filled in for those not given (so two
        requests that differ only in spelling a default out render together)."""
        known = self._known_options()
        unknown = [k for k in options if k not in known]
        if unknown:
            have = f"Its options: {', '.join(known)}." if known else "It takes no options beyond n, seed and labels."
            raise UserError(f"{', '.join(unknown)}: not an option of this {self.meta.get('family')} model. {have}")
        given = {k: known[k].check(k, v) for k, v in options.items() if v is not None}
        return {k: given.get(k, o.default) for k, o in known.items()}

    def _labels(self, labels, n: int) -> torch.Tensor | None:
        """One class index per image: from one label or a list; every class in turn when none is given."""
        if labels is None:
            return torch.arange(n) % self.spec.num_classes if self.conditional else None
        return torch.tensor(label_indices(self.classes, self.conditional, labels, n), dtype=torch.long)

    def _rng(self, seed: int | None) -> torch.Generator:
        return torch.Generator().manual_seed(int(seed) if seed is not None else int(torch.seed() % 2**63))

    @torch.no_grad()
    def generate(self, n: int, seed: int | None = None, labels=None, batch_size: int = 500, progress=None,
                 shard: tuple[int, int] = (0, 1), **options) -> np.ndarray:
        """n images as uint8 (N, H, W, C). `labels`: one label (int or class name) or one per image;
        `options`: the family's own (`options()`), e.g. temperature for a VAE, sampler and steps for diffusion;
        `progress(done, total)` is called after each network call of a multi-step sampler.

        `shard=(i, k)`: only the i-th of k consecutive parts of the n rows. Every part draws all n rows' noise
        (cheap) and renders its own, so the k parts joined are exactly the images of one process."""
        if n < 1:
            raise UserError(f"n must be at least 1, got {n}.")
        options = self._options(options)
        label_t = self._labels(labels, n)
        rng = self._rng(seed)
        part, parts = shard
        lo, hi = n * part // parts, n * (part + 1) // parts  # the rows this part renders
        out, batches = [], -(-(hi - lo) // batch_size) if hi > lo else 1
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            lab = label_t[start : start + m] if label_t is not None else None
            drawn = self._plant_noise_mark(self.method.draw(self.net, self.spec, m, lab, rng, **options))
            a, z = max(lo, start), min(hi, start + m)
            if a >= z:
                continue
            drawn = {k: v[a - start : z - start] for k, v in drawn.items()}
            b = len(out)
            step = (lambda i, total, b=b: progress(b * total + i, batches * total)) if progress else None
            out.append(self._render([drawn], options, step)[0])
        return np.concatenate(out) if out else np.zeros((0, *self.image_shape), np.uint8)

    def generate_across_processes(self, n: int, **kwargs) -> np.ndarray | None:
        """`generate` split over the processes of `accelerate launch` (one each when not launched): each renders
        its part, the main process gets all n images, identical to one process's for the same seed; the others
        get None."""
        import os

        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return self.generate(n, **kwargs)
        from accelerate import PartialState
        from accelerate.utils import gather_object

        state = PartialState(cpu=self.device.type == "cpu")
        part = self.generate(n, shard=(state.process_index, state.num_processes), **kwargs)
        parts = gather_object([part])  # one array per process, in rank order
        return np.concatenate(parts) if state.is_main_process else None

    def job(self, n: int, seed: int | None = None, labels=None, **options) -> ImageJob:
        """A request for n images, checked and with its randomness drawn now: `run` renders many at once."""
        if n < 1:
            raise UserError(f"n must be at least 1, got {n}.")
        options = self._options(options)
        drawn = self.method.draw(self.net, self.spec, n, self._labels(labels, n), self._rng(seed), **options)
        drawn = self._plant_noise_mark(drawn)
        return ImageJob(n, options, drawn, self.method.network_calls(self.net, n, **options))

    @torch.no_grad()
    def run(self, jobs: list[ImageJob], progress=None, mark: bool = True) -> list[np.ndarray]:
        """Render several jobs (with equal options) in one forward pass: each job's images are those
        `generate` gives for the same n, seed, labels and options, whatever shares the batch.
        `progress(done, total)` after each network call of a multi-step sampler. `mark=False`: leave the keyed
        mark to the caller (`image_mark.embed`; a server does it on its encoding pool, off the model's thread)."""
        if not jobs:
            return []
        if any(job.options != jobs[0].options for job in jobs):
            raise UserError("Jobs rendered together must have the same options; render the others separately.")
        return self._render([job.drawn for job in jobs], jobs[0].options, progress, mark)

    def _marked(self, images: np.ndarray) -> np.ndarray:
        mark = self.image_mark
        return mark.embed(images) if mark is not None else images

    def _render(self, draws: list[dict], options: dict, progress=None, mark: bool = True) -> list[np.ndarray]:
        drawn = {k: torch.cat([d[k] for d in draws]) for k in draws[0]}
        with self._autocast(self.dtype):
            x = self.method.render(self.net, drawn, self.device, **options, **({"progress": progress} if progress else {}))
        images = from_model_range(x.float()).cpu().numpy()
        images = self._marked(images) if mark else images
        sizes = [len(next(iter(d.values()))) for d in draws]
        return np.split(images, np.cumsum(sizes)[:-1])

    # -- the noise mark (marking.py): the sampler run backwards ---------------------------------------------------
    def _noise_shape(self) -> tuple[int, int, int]:
        if self.meta.get("family") != "diffusion" or self.low_res:
            return super()._noise_shape()
        return (self.spec.channels, self.spec.height, self.spec.width)

    @torch.no_grad()
    def invert_noise(self, x: np.ndarray, steps: int = 10) -> np.ndarray:
        """float32 (N, C, H, W) images in the model range -> the starting noise the deterministic sampler maps to
        them (diffusion models), float32."""
        self._noise_shape()
        with self._autocast(self.dtype):
            y = self.method.invert(self.net, torch.as_tensor(np.asarray(x, np.float32)), self.device, steps)
        return y.float().cpu().numpy()

    # -- latent space: VAEs (encode, decode, reconstruct) and any family with latents (interpolate) ------------
    def _model_input(self, images) -> torch.Tensor:
        """uint8 (N, H, W, C) (numpy or torch) of this model's shape, converted with a notice when it differs."""
        import warnings

        from genforge.data import preprocess, to_model_range

        x = torch.as_tensor(np.asarray(images))
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.dtype != torch.uint8 or x.shape[-1] not in (1, 3):
            raise UserError(f"Images must be uint8 (N, H, W, C) with 1 or 3 channels; got {x.dtype} {tuple(x.shape)}.")
        if tuple(x.shape[1:]) != self.image_shape:
            if x.shape[1] != x.shape[2] and self.spec.height == self.spec.width:
                raise UserError(f"Images of {x.shape[2]}x{x.shape[1]} are not square; this model takes "
                                f"{self.spec.width}x{self.spec.height}. Fix: crop them, or pass files (they are centre-cropped).")
            warnings.warn(f"converted images of shape {tuple(x.shape[1:])} to the model's {self.image_shape}")
            x = preprocess(x, self.spec.height, self.spec.channels)
        return to_model_range(x).to(self.device)

    @torch.no_grad()
    def encode(self, images, labels=None) -> np.ndarray:
        """Latents (posterior means) of images, uint8 (N, H, W, C) -> float32 (N, latent_dim)."""
        x = self._model_input(images)
        return self.method.encode(self.net, x, self._labels(labels, len(x))).float().cpu().numpy()

    @torch.no_grad()
    def decode(self, z, labels=None) -> np.ndarray:
        """Images from latents, float (N, latent_dim) -> uint8 (N, H, W, C)."""
        z = torch.as_tensor(np.asarray(z), dtype=torch.float32, device=self.device)
        if z.dim() == 1:
            z = z.unsqueeze(0)
        return from_model_range(self.method.decode(self.net, z, self._labels(labels, len(z))).float()).cpu().numpy()

    def reconstruct(self, images, labels=None) -> np.ndarray:
        """decode(encode(images)): what the model keeps of each image, uint8 (N, H, W, C)."""
        return self.decode(self.encode(images, labels), labels)

    @torch.no_grad()
    def interpolate(self, a, b, steps: int = 8, labels=None, **options) -> np.ndarray:
        """A walk from a to b in latent space, `steps` images (N, H, W, C) uint8, ends included.

        a, b: seeds (ints; the walk follows the great circle between the two Gaussian draws, where typical
        latents lie) or images (uint8 (H, W, C); encoded, then joined by a straight line)."""
        if steps < 2:
            raise UserError(f"An interpolation needs at least 2 steps, got {steps}.")
        options = self._options(options)
        ends = []
        for end in (a, b):
            if isinstance(end, (int, np.integer)):
                ends.append(self.method.latents(self.net, 1, self._rng(int(end)), self.device, **options)[0])
            else:
                ends.append(torch.as_tensor(self.encode(np.asarray(end)[None], labels))[0].to(self.device))
        shape = ends[0].shape  # a vector (GAN, VAE) or an image-shaped noise (diffusion)
        za, zb = ends[0].flatten(), ends[1].flatten()
        t = torch.linspace(0, 1, steps, device=self.device).unsqueeze(1)
        if all(isinstance(e, (int, np.integer)) for e in (a, b)):
            omega = torch.arccos(torch.clamp(torch.dot(za / za.norm(), zb / zb.norm()), -1, 1))
            if omega.abs() < 1e-4:
                z = (1 - t) * za + t * zb
            else:
                z = (torch.sin((1 - t) * omega) * za + torch.sin(t * omega) * zb) / torch.sin(omega)
        else:
            z = (1 - t) * za + t * zb
        z = z.view(steps, *shape)
        label = self._labels(labels if labels is not None else None, 1)
        lab = label.repeat(steps) if label is not None else None
        return self._marked(from_model_range(self.method.decode(self.net, z, lab).float()).cpu().numpy())

    def save_grid(self, images: np.ndarray, path: str | Path, nrow: int | None = None) -> Path:
        from genforge.visual import save_grid

        return save_grid(images, path, nrow)
