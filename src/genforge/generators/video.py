"""A loaded video model: an image family (GAN, diffusion) trained on clips (`genforge.load` of such a run).

Everything an image generator does applies, with a clip where an image was: `generate` returns uint8
(N, T, H, W, C), `job`/`run` batch requests for a server. The clip length is an option like a sampler's steps
(`frames`, default the trained length): both video networks run on any length, and listing it among the
options puts it in the CLI, the server's /v1/models and the playground without code of their own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import genforge.precision as prec
from genforge.errors import UserError
from genforge.generators.base import WEIGHTS_FILE
from genforge.generators.images import ImageGenerator
from genforge.methods.clips import clips_from_model_range
from genforge.options import SampleOption

MAX_FRAMES = 256


class VideoGenerator(ImageGenerator):
    """`generate(n, seed, labels, frames=T)` -> uint8 (N, T, H, W, C); `fps` is the run's playback rate."""

    PROBE_BATCH = 2  # the precision probe times two clips, not 64 images' worth of frames
    modality = "video"

    def __init__(self, run_dir: Path, meta: dict, net: torch.nn.Module, device: torch.device,
                 weights_file: str = WEIGHTS_FILE, precision: str = "no"):
        data = meta["data"]
        self.frames, self.fps = int(data["frames"]), float(data.get("fps") or 8)
        super().__init__(run_dir, meta, net, device, weights_file, precision)

    def _generation_steps(self, names):
        def step_in(dtype):
            def step():
                rng = torch.Generator().manual_seed(0)
                with torch.no_grad(), self._autocast(dtype):
                    self.method.sample(self.net, self.spec, self.PROBE_BATCH, None, rng, self.device,
                                       **self._options({}))
            return step

        return {name: step_in(prec.autocast_dtype(name)) for name in names}

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        return (self.frames, self.spec.height, self.spec.width, self.spec.channels)

    def _known_options(self):
        frames = SampleOption(int, self.frames, 2, MAX_FRAMES, f"frames per clip (trained on {self.frames}; "
                                                                 "the networks run on any length)")
        return {"frames": frames, **self.method.options_for(self.meta.get("model") or {})}

    def _marked(self, clips: np.ndarray) -> np.ndarray:
        from genforge.media.clip_mark import mark_clips

        return mark_clips(self.image_mark, clips)

    def _render(self, draws: list[dict], options: dict, progress=None, mark: bool = True) -> list[np.ndarray]:
        drawn = {k: torch.cat([d[k] for d in draws]) for k in draws[0]}
        with self._autocast(self.dtype):
            x = self.method.render(self.net, drawn, self.device, **options, **({"progress": progress} if progress else {}))
        clips = clips_from_model_range(x)
        clips = self._marked(clips) if mark else clips
        sizes = [len(next(iter(d.values()))) for d in draws]
        return np.split(clips, np.cumsum(sizes)[:-1])

    def generate(self, n: int, seed: int | None = None, labels=None, batch_size: int = 64, progress=None,
                 shard: tuple[int, int] = (0, 1), **options) -> np.ndarray:
        """n clips as uint8 (N, T, H, W, C); `frames=` sets T. See ImageGenerator.generate for the rest."""
        out = super().generate(n, seed, labels, batch_size, progress, shard, **options)
        return out if out.ndim == 5 else np.zeros((0, *self.clip_shape), np.uint8)

    def save_grid(self, clips: np.ndarray, path: str | Path, nrow: int | None = None) -> Path:
        """A filmstrip: one clip per row, frames across."""
        from genforge.media.video import save_filmstrip

        return save_filmstrip(clips, path)

    def _no_latent_walks(self, *_, **__):
        raise UserError("Latent walks, encoding and reconstruction are for image models; a video model generates "
                        "clips only (generate).")

    encode = decode = reconstruct = interpolate = _no_latent_walks
