"""An exported video model (a GAN or diffusion run trained on clips): `generate` as `genforge.load(run).generate`,
uint8 (N, T, H, W, C), on onnxruntime. The families' numpy sampling (runtime/families.py) is the images', with the
clip length as one more option."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genforge.runtime.images import ExportedImageModel


class ExportedVideoModel(ExportedImageModel):
    modality = "video"

    def __init__(self, path: Path, config: dict, sessions: dict):
        super().__init__(path, config, sessions)
        video = config["video"]
        self.frames, self.fps = int(video["frames"]), float(video["fps"])
        self.clip_shape = (self.frames, *self.image_shape)

    def render(self, drawn: dict[str, np.ndarray], progress=None, mark: bool = True, **options) -> np.ndarray:
        """uint8 (N, T, H, W, C) clips from drawn inputs, the keyed mark in every frame (unless `mark=False`)."""
        x = np.nan_to_num(np.asarray(self.family.render(drawn, progress, **self._options(options)), np.float32), nan=0.0)
        clips = np.ascontiguousarray(np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 1, 3, 4, 2))
        if not mark:
            return clips
        from genforge.media.clip_mark import mark_clips

        return mark_clips(self.image_mark, clips)

    def generate(self, n: int, seed: int | None = None, labels=None, batch_size: int = 64, progress=None,
                 **options) -> np.ndarray:
        """n clips as uint8 (N, T, H, W, C); `frames=` sets T (default: the trained length)."""
        return super().generate(n, seed, labels, batch_size, progress, **options)
