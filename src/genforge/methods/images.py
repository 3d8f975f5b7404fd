"""The data and sample-grid side shared by image methods (GAN now; VAE and diffusion later).

Data lives in memory as a uint8 NHWC tensor on the training device; each process takes its slice of a
per-epoch permutation, converts it to float NCHW in [-1, 1] and augments it with the step's generator.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

import torch

from genforge.data import Augment, augment_batch, from_model_range, load_image_dataset, to_model_range
from genforge.data.audio import is_audio_dataset
from genforge.data.video import is_video_dataset
from genforge.errors import UserError
from genforge.methods.base import DataSpec, Method


class ImageData:
    """Per-epoch permutation of an in-memory dataset; process `rank` reads its own slice of each global batch."""

    unit = "images"

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, batch: int, accum: int,
                 rank: int, world: int, seed: int, augment: Augment, channels_last: bool, spec: DataSpec, meta: dict):
        self.images, self.labels = images, labels
        self.batch, self.accum, self.rank, self.world, self.seed = batch, accum, rank, world, seed
        self.augment, self.channels_last, self.spec, self.meta = augment, channels_last, spec, meta
        self.items_per_step = batch * accum * world
        self.steps_per_epoch = len(images) // self.items_per_step
        self._epoch, self._perm = -1, None

    def micro_batches(self, step: int, rng: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """[(x float NCHW in [-1, 1], labels or None)] for each accumulation micro-batch."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(len(self.images), generator=g).to(self.images.device)
            self._epoch = epoch
        base = pos * self.items_per_step
        out = []
        for k in range(self.accum):
            start = base + (k * self.world + self.rank) * self.batch
            idx = self._perm[start : start + self.batch]
            x = to_model_range(self.images[idx])
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.augment.enabled():
                x = augment_batch(x, self.augment, rng)
            out.append((x, self.labels[idx] if self.labels is not None else None))
        return out


class ImageMethod(Method):
    """A method whose data is an image dataset and whose samples are image grids."""

    @classmethod
    def prepare_data(cls, cfg, data_dir, run_dir, resume, accelerator) -> ImageData:
        if is_video_dataset(cfg.data.dataset):  # clips: (B, T, C, H, W) batches, for networks built with spec.frames
            from genforge.methods.clips import prepare_clip_data

            return prepare_clip_data(cfg, data_dir, accelerator)
        tcfg = cfg.train
        audio_meta = {}
        with accelerator.main_process_first():
            if is_audio_dataset(cfg.data.dataset):  # clips, through the spectrogram codec: images from here on
                from genforge.data.spectrograms import load_spectrogram_dataset

                if cfg.data.image_size is not None or cfg.data.channels not in (None, 1):
                    raise UserError("data.image_size and data.channels do not apply to audio: a clip's image is "
                                    "set by data.audio (n_fft/2 rows x length/hop columns, 1 channel).")
                dataset, audio_meta = load_spectrogram_dataset(cfg.data.dataset, cfg.data.audio.model_dump(),
                                                               data_dir=data_dir, split="train")
            else:
                dataset = load_image_dataset(cfg.data.dataset, data_dir=data_dir, split="train",
                                             image_size=cfg.data.image_size, channels=cfg.data.channels)
        images, labels = dataset.images, dataset.labels
        if cfg.data.subset is not None:
            if cfg.data.subset > len(images):
                raise UserError(f"data.subset={cfg.data.subset} is more than the {len(images)} training images of "
                                f"{cfg.data.dataset}. Fix: lower it, or drop data.subset.")
            keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(tcfg.seed))[: cfg.data.subset]
            images, labels = images[keep], labels[keep] if labels is not None else None
        n, h, w, c = images.shape
        classes = list(dataset.classes) if dataset.labels is not None else []
        spec = DataSpec(h, w, c, len(classes))
        meta = {"dataset": cfg.data.dataset, "height": h, "width": w, "channels": c, "classes": classes,
                "value_range": [-1, 1], **({"subset": n} if cfg.data.subset is not None else {}), **audio_meta}
        device = accelerator.device
        data = ImageData(images.to(device), labels.to(device) if labels is not None else None,
                         tcfg.batch_size, tcfg.grad_accum, accelerator.process_index, accelerator.num_processes,
                         tcfg.seed, Augment(**cfg.data.augment.model_dump()), tcfg.channels_last, spec, meta)
        if data.steps_per_epoch == 0:
            raise UserError(f"The dataset has {n} images, fewer than one global batch ({tcfg.batch_size} x "
                            f"{tcfg.grad_accum} accumulation x {accelerator.num_processes} processes). Lower train.batch_size.")
        return data

    @classmethod
    def spec_from_meta(cls, data_meta: dict) -> DataSpec:
        return DataSpec(data_meta["height"], data_meta["width"], data_meta["channels"], len(data_meta.get("classes") or []),
                        frames=int(data_meta.get("frames") or 0))

    # Sampling in two halves, so that a server can merge requests: `draw` takes everything random about n
    # samples from the request's own generator (on the CPU), `render` turns the rows of one or many
    # requests' draws into images in one forward pass. A sample thus never depends on its batch.
    @classmethod
    @abstractmethod
    def draw(cls, net, spec, n, labels, rng, **options) -> dict[str, torch.Tensor]:
        """Everything random about n samples as CPU tensors whose first dimension is n (row i: sample i),
        drawn from `rng`; `labels` (n,) or None as given by the caller; `options` are `sample_options`."""

    @classmethod
    @abstractmethod
    def render(cls, net, drawn: dict[str, torch.Tensor], device, **options) -> torch.Tensor:
        """Images (float NCHW in [-1, 1]) from `draw`'s rows (possibly several draws concatenated). Families
        that sample in several network calls (diffusion) also take `progress(done, total)` and call it per call."""

    # Editing (genforge/edits.py): which of inpaint / vary / upscale a run can do, and the options each takes
    # beyond the family's sampling options. `render` recognises an edit by the rows it adds to `draw`'s
    # (known and keep, start, low); `draw(..., edit=True)` draws the rest of an edit's randomness.
    edit_options: dict[str, dict] = {}

    @classmethod
    def edit_tasks(cls, model_cfg: dict) -> tuple[str, ...]:
        return ()

    @classmethod
    def network_calls(cls, net, n: int, labels=None, **options) -> int:
        """Forward passes of one image's worth of rows that n images cost under `options` (what a server
        limits per request): one each here; multi-step samplers cost more."""
        return n

    @classmethod
    def sample(cls, net, spec, n, labels, rng, device, **options) -> torch.Tensor:
        """n samples as float NCHW in [-1, 1] from the exported network; `options` are `sample_options`."""
        return cls.render(net, cls.draw(net, spec, n, labels, rng, **options), device, **options)

    # A latent space, for walks between seeds or images. Families with one override `latents` and `decode`
    # (and `encode` when they have an encoder); `sample` is then decode(latents(...)).
    @classmethod
    def latents(cls, net, n, rng, device, **options) -> torch.Tensor:
        raise UserError(f"{cls.family} models have no latent space to walk in.")

    @classmethod
    def decode(cls, net, z, labels) -> torch.Tensor:
        """Images (float NCHW in [-1, 1]) from latents `z`, under `labels` for conditional models."""
        raise UserError(f"{cls.family} models have no latent space to decode from.")

    @classmethod
    def encode(cls, net, x, labels) -> torch.Tensor:
        """Latents of real images x (float NCHW in [-1, 1])."""
        raise UserError(f"{cls.family} models have no encoder: they cannot map images to latents or reconstruct them. "
                        "A VAE can (family: vae).")

    #: per-image log-likelihood of real data, for `genforge eval` (families with a likelihood override these)
    likelihood_terms = None  # classmethod (net, targets, labels, k, rng) -> {"log_likelihood", "rec", "kl"} per image

    @classmethod
    def write_samples(cls, net, data, path, seed, accelerator) -> Path:
        """A grid from fixed noise: 8 x 8, or one row per class for conditional models. Clips: a filmstrip, one
        clip per row (frames across), 8 clips or one per class."""
        from genforge.visual import save_grid

        # one row per class for a conditional model; a self-conditioned one (clusters) draws its own, like an unconditional one
        num_classes = getattr(net, "num_classes", 0) if getattr(net, "label_prior", None) is None else 0
        if num_classes:
            per_row = 8 if num_classes <= 16 and not data.spec.frames else 1
            labels = torch.arange(num_classes).repeat_interleave(per_row)[:160]
            n, nrow = len(labels), per_row
        else:
            labels, n, nrow = None, 64, 8
        if data.spec.frames:
            labels = labels[:16] if labels is not None else None
            n = len(labels) if labels is not None else 8
        was_training = net.training
        net.eval()
        with torch.no_grad(), accelerator.autocast():
            x = cls.sample(net, data.spec, n, labels, torch.Generator().manual_seed(seed), accelerator.device)
        net.train(was_training)
        out = Path(path).with_suffix(".png")
        if "codec" in data.meta:  # spectrograms: row 0 is the lowest frequency, drawn at the bottom
            x = x.flip(2)
        if x.dim() == 5:  # clips (N, T, C, H, W): a row of frames per clip
            x, nrow = x.flatten(0, 1), x.shape[1]
        save_grid(from_model_range(x.float()).cpu().numpy(), out, nrow, scale=2)
        return out
