"""Editing with a loaded image model: `inpaint`, `vary`, `upscale`, and `edit_job` for servers that batch them.

An edit is a generation whose drawn rows carry the edit's inputs (genforge/edits.py), so it goes through the
family's `render` and the same batching, precision and marking as `generate`; which edits a run can do and the
options each takes are its method's (`edit_tasks`, `edit_options`)."""

from __future__ import annotations

import numpy as np
import torch

import genforge.edits as edits
from genforge.errors import UserError
from genforge.labels import label_indices


class ImageEditing:
    """Mixin of ImageGenerator (needs method, net, spec, meta, classes, conditional, image_shape, _rng, _render,
    _known_options)."""

    def edit_tasks(self) -> tuple[str, ...]:
        """The edits this run can do: inpaint and vary (diffusion, VAE), upscale (a super-resolution diffusion)."""
        return self.method.edit_tasks(self.meta.get("model") or {})

    @property
    def low_res(self) -> int:
        """A super-resolution model's input side (0: none)."""
        return int((self.meta.get("model") or {}).get("upscale_from") or 0)

    def _edit_known(self, task: str) -> dict:
        return {**self._known_options(), **self.method.edit_options.get(task, {})}

    def edit_options(self, task: str) -> dict[str, dict]:
        """The options of edit `task`: the family's sampling options and the edit's own, described as `options()`."""
        edits.check_task(task, self.edit_tasks(), self.meta.get("family", "?"))
        return {name: o.describe() for name, o in self._edit_known(task).items()}

    def checked_edit_options(self, task: str, options: dict) -> dict:
        """`options` checked against edit `task`'s, the run's defaults filled in, and "task" added."""
        return self._edit_checked(task, options)

    def _edit_checked(self, task: str, options: dict) -> dict:
        known = self._edit_known(task)
        unknown = [k for k in options if k not in known]
        if unknown:
            raise UserError(f"{', '.join(unknown)}: not an option of {task} with this {self.meta.get('family')} model. "
                            f"Its options: {', '.join(known) or 'none'}.")
        given = {k: known[k].check(k, v) for k, v in options.items() if v is not None}
        return {**{k: given.get(k, o.default) for k, o in known.items()}, "task": task}

    def _edit_labels(self, labels, inputs: int, n: int) -> torch.Tensor | None:
        """One class per row: from one label, one per input image (each repeated n times) or one per row. Without
        one, a conditional diffusion model edits unconditionally (its "no class" entry); a conditional VAE needs one."""
        if labels is None:
            if not self.conditional:
                return None
            if self.meta.get("family") == "diffusion":
                return torch.full((inputs * n,), self.spec.num_classes, dtype=torch.long)
            raise UserError("This class-conditional model needs the image's class to edit it: give labels (--label).")
        if isinstance(labels, (list, tuple, np.ndarray)) and len(labels) == inputs and n > 1:
            labels = [lab for lab in labels for _ in range(n)]
        return torch.tensor(label_indices(self.classes, self.conditional, labels, inputs * n), dtype=torch.long)

    def edit_job(self, task: str, images, masks=None, n: int = 1, seed: int | None = None, labels=None, **options):
        """An edit of one or more images, checked and with its randomness drawn now (an ImageJob: `run` renders
        many at once). n results per input image, input-major."""
        edits.check_task(task, self.edit_tasks(), self.meta.get("family", "?"))
        options = self._edit_checked(task, options)
        rows = edits.prepare(task, images, masks, n, self.image_shape, self.low_res)
        count = len(next(iter(rows.values())))
        label_t = self._edit_labels(labels, count // n, n)
        drawn = self.method.draw(self.net, self.spec, count, label_t, self._rng(seed), edit=True,
                                 **{k: v for k, v in options.items() if k != "task"})
        drawn.update({k: torch.from_numpy(v) for k, v in rows.items()})
        from genforge.generators.images import ImageJob

        return ImageJob(count, options, drawn, self.method.network_calls(self.net, count, **options))

    @torch.no_grad()
    def _edit(self, task, images, masks, n, seed, labels, progress, options) -> np.ndarray:
        job = self.edit_job(task, images, masks, n, seed, labels, **options)
        return self._render([job.drawn], job.options, progress)[0]

    def inpaint(self, images, masks, n: int = 1, seed: int | None = None, labels=None, progress=None,
                **options) -> np.ndarray:
        """Fill the masked region of each image (masks True where to edit), uint8 (N x n, H, W, C). Diffusion:
        RePaint with any sampler (options jump, resample, and the sampling options); VAE: a decoder-side completion
        (iterations). The known pixels come back unchanged (before the mark, when a mark key is set)."""
        return self._edit("inpaint", images, masks, n, seed, labels, progress, options)

    def vary(self, images, strength: float | None = None, n: int = 1, seed: int | None = None, labels=None,
             progress=None, **options) -> np.ndarray:
        """n variations of each image, uint8 (N x n, H, W, C): SDEdit for diffusion (noised to t = strength, sampled
        back), sampling around the posterior for a VAE. strength 0 returns the input, 1 ignores it."""
        return self._edit("vary", images, None, n, seed, labels, progress, {**options, "strength": strength})

    def upscale(self, images, n: int = 1, seed: int | None = None, labels=None, progress=None,
                **options) -> np.ndarray:
        """Super-resolution (a model trained with model.upscale_from): low-resolution images in, uint8 (N x n, H, W, C)
        out; a full-size input is area-downsampled first, as the training inputs were."""
        return self._edit("upscale", images, None, n, seed, labels, progress, options)
