"""An exported image model: `generate` as `genforge.load(run).generate`, on onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import genforge.edits as edits
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


class _Editing:
    """The edits of an export, as generators/editing.py gives a run's (the options and tasks from its config)."""

    def edit_tasks(self) -> tuple[str, ...]:
        return tuple(self.config.get("edits") or {})

    @property
    def low_res(self) -> int:
        return int(self.config.get("family_config", {}).get("low_res") or 0)

    def edit_options(self, task: str) -> dict[str, dict]:
        edits.check_task(task, self.edit_tasks(), self.config.get("family", "?"))
        return dict(self.config["edits"][task])

    def edit_job(self, task: str, images, masks=None, n: int = 1, seed: int | None = None, labels=None, **options):
        edits.check_task(task, self.edit_tasks(), self.config.get("family", "?"))
        known = {k: SampleOption.from_description(d) for k, d in self.config["edits"][task].items()}
        unknown = [k for k in options if k not in known]
        if unknown:
            raise UserError(f"{', '.join(unknown)}: not an option of {task} with this {self.config['family']} model. "
                            f"Its options: {', '.join(known) or 'none'}.")
        given = {k: known[k].check(k, v) for k, v in options.items() if v is not None}
        options = {**{k: given.get(k, o.default) for k, o in known.items()}, "task": task}
        rows = edits.prepare(task, images, masks, n, self.image_shape, self.low_res)
        count = len(next(iter(rows.values())))
        family_options = {k: v for k, v in options.items() if k in self._known}
        drawn = self.family.draw(count, None, np.random.default_rng(seed), edit=True, **family_options)
        drawn.update(rows)
        label_rows = self._edit_labels(labels, count // n, n)
        if label_rows is not None:
            drawn["labels"] = label_rows
        return ImageJob(count, options, drawn, self.family.network_calls(count, **options))

    def _edit_labels(self, labels, inputs: int, n: int):
        if labels is None:
            if not self.conditional:
                return None
            if self.config.get("family") == "diffusion":  # its "no class" entry: an unconditional edit
                return np.full(inputs * n, len(self.classes), dtype=np.int64)
            raise UserError("This class-conditional model needs the image's class to edit it: give labels (--label).")
        if isinstance(labels, (list, tuple, np.ndarray)) and len(labels) == inputs and n > 1:
            labels = [lab for lab in labels for _ in range(n)]
        return self._labels(labels, inputs * n)

    def _edit(self, task, images, masks, n, seed, labels, progress, options) -> np.ndarray:
        job = self.edit_job(task, images, masks, n, seed, labels, **options)
        x = self.family.render(job.drawn, progress, **job.options)
        out, mark = _to_uint8(x), self.image_mark
        return mark.embed(out) if mark is not None else out

    def inpaint(self, images, masks, n: int = 1, seed: int | None = None, labels=None, progress=None, **options):
        return self._edit("inpaint", images, masks, n, seed, labels, progress, options)

    def vary(self, images, strength: float | None = None, n: int = 1, seed: int | None = None, labels=None,
             progress=None, **options):
        return self._edit("vary", images, None, n, seed, labels, progress, {**options, "strength": strength})

    def upscale(self, images, n: int = 1, seed: int | None = None, labels=None, progress=None, **options):
        return self._edit("upscale", images, None, n, seed, labels, progress, options)


class ExportedImageModel(_Editing, ExportedMarking):
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
        return self._plant_noise_mark(self.family.draw(n, self._labels(labels, n), np.random.default_rng(seed), **options))

    def _noise_shape(self) -> tuple[int, int, int]:
        if self.config.get("family") != "diffusion" or self.low_res:
            return super()._noise_shape()
        h, w, c = self.image_shape
        return (c, h, w)

    def invert_noise(self, x: np.ndarray, steps: int = 10) -> np.ndarray:
        """As the run's generator: images in the model range (N, C, H, W) -> their starting noise."""
        self._noise_shape()
        return self.family.invert(np.asarray(x, np.float32), steps)

    def render(self, drawn: dict[str, np.ndarray], progress=None, mark: bool = True, **options) -> np.ndarray:
        """uint8 (N, H, W, C) images from drawn inputs (the parity tests pass the torch path's noise here)."""
        x = self.family.render(drawn, progress, **self._options(options))
        images, key = _to_uint8(x), self.image_mark
        return key.embed(images) if key is not None and mark else images

    def network_calls(self, n: int, **options) -> int:
        return self.family.network_calls(n, **self._options(options))

    def job(self, n: int, seed: int | None = None, labels=None, **options) -> ImageJob:
        """A request for n images, checked and drawn now; `run` renders many at once (what a server batches)."""
        options = self._options(options)
        drawn = self.draw(n, seed, labels, **options)
        return ImageJob(n, options, drawn, self.family.network_calls(n, **options))

    def run(self, jobs: list[ImageJob], mark: bool = True) -> list[np.ndarray]:
        """Render jobs with equal options in one pass: each job gets the images it would get alone. `mark=False`:
        leave the keyed mark to the caller (a server marks on its encoding pool)."""
        if not jobs:
            return []
        if any(job.options != jobs[0].options for job in jobs):
            raise UserError("Jobs rendered together must have the same options; render the others separately.")
        drawn = {k: np.concatenate([job.drawn[k] for job in jobs]) for k in jobs[0].drawn}
        if "task" in jobs[0].options:  # edits: their options were checked by edit_job
            x, key = _to_uint8(self.family.render(drawn, None, **jobs[0].options)), self.image_mark
            images = key.embed(x) if key is not None and mark else x
        else:
            images = self.render(drawn, mark=mark, **jobs[0].options)
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
