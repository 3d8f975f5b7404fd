"""An exported image model: `generate` as `genforge.load(run).generate`, on onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genforge.errors import UserError
from genforge.labels import label_indices
from genforge.marking import ExportedMarking
from genforge.options import SampleOption
from genforge.runtime.families import FAMILIES


@dataclass
class ImageJob:
    """One request's images: n, the checked options, its drawn inputs and what it costs in network calls."""

    n: int
    options: dict
    drawn: dict[str, np.ndarray]
    calls: int = 0


class ExportedImageModel(ExportedMarking):
    modality = "image"

    def __init__(self, path: Path, config: dict, sessions: dict):
        self.path, self.config, self.meta = path, config, config
        self.classes: list[str] = list(config.get("classes") or [])
        self.conditional: bool = bool(config.get("conditional"))
        img = config["image"]
        self.image_shape = (img["height"], img["width"], img["channels"])
        self._known = {k: SampleOption.from_description(d) for k, d in config.get("options", {}).items()}
        family_config = {**config.get("family_config", {}), "shape": (img["channels"], img["height"], img["width"])}
        self.family = FAMILIES[config["family"]](family_config, {k: _runner(s) for k, s in sessions.items()})
        self.sessions = sessions

    def options(self) -> dict[str, dict]:
        """The family's generation options with the exported run's defaults (as `genforge.load(...).options()`)."""
        return {k: o.describe() for k, o in self._known.items()}

    def _options(self, options: dict) -> dict:
        unknown = [k for k in options if k not in self._known]
        if unknown:
            have = f"Its options: {', '.join(self._known)}." if self._known else "It takes no options beyond n, seed and labels."
            raise UserError(f"{', '.join(unknown)}: not an option of this {self.config['family']} model. {have}")
        given = {k: self._known[k].check(k, v) for k, v in options.items() if v is not None}
        return {k: given.get(k, o.default) for k, o in self._known.items()}

    def _labels(self, labels, n: int):
        idx = label_indices(self.classes, self.conditional, labels, n)
        return None if idx is None else np.asarray(idx, dtype=np.int64)

    def draw(self, n: int, seed: int | None = None, labels=None, **options) -> dict[str, np.ndarray]:
        """Every random input of n images (noise, labels, step seeds), from `seed`."""
        if n < 1:
            raise UserError(f"n must be at least 1, got {n}.")
        options = self._options(options)
        return self.family.draw(n, self._labels(labels, n), np.random.default_rng(seed), **options)

    def render(self, drawn: dict[str, np.ndarray], progress=None, **options) -> np.ndarray:
        """uint8 (N, H, W, C) images from drawn inputs (the parity tests pass the torch path's noise here)."""
        x = self.family.render(drawn, progress, **self._options(options))
        images, mark = _to_uint8(x), self.image_mark
        return mark.embed(images) if mark is not None else images

    def network_calls(self, n: int, **options) -> int:
        return self.family.network_calls(n, **self._options(options))

    def job(self, n: int, seed: int | None = None, labels=None, **options) -> ImageJob:
        """A request for n images, checked and drawn now; `run` renders many at once (what a server batches)."""
        options = self._options(options)
        drawn = self.draw(n, seed, labels, **options)
        return ImageJob(n, options, drawn, self.family.network_calls(n, **options))

    def run(self, jobs: list[ImageJob]) -> list[np.ndarray]:
        """Render jobs with equal options in one pass: each job gets the images it would get alone."""
        if not jobs:
            return []
        if any(job.options != jobs[0].options for job in jobs):
            raise UserError("Jobs rendered together must have the same options; render the others separately.")
        drawn = {k: np.concatenate([job.drawn[k] for job in jobs]) for k in jobs[0].drawn}
        images = self.render(drawn, **jobs[0].options)
        return np.split(images, np.cumsum([job.n for job in jobs])[:-1])

    def generate(self, n: int, seed: int | None = None, labels=None, batch_size: int = 500, progress=None,
                 **options) -> np.ndarray:
        """n images as uint8 (N, H, W, C); `labels`: one label (int or class name) or one per image; `options`:
        the family's (`options()`); `progress(done, total)` after each network call of a multi-step sampler."""
        drawn = self.draw(n, seed, labels, **options)
        out = []
        for i in range(0, n, batch_size):
            part = {k: v[i:i + batch_size] for k, v in drawn.items()}
            out.append(self.render(part, progress, **options))
        return np.concatenate(out)


def _runner(session):
    names = [i.name for i in session.get_inputs()]

    def run(**inputs):
        return session.run(None, {k: np.ascontiguousarray(v) for k, v in inputs.items() if k in names})[0]

    return run


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), rounded half to even as the torch path does."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=0.0)
    x = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
