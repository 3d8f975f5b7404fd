"""What every generator (torch's `genforge.load`, the runtime's) shares for provenance: its mark key and the
record its outputs carry. Torch-free.

The key comes from `use_mark_key(...)`, else from the environment ($GENFORGE_MARK_KEY_FILE or
$GENFORGE_MARK_KEY) when the generator is loaded; with one, every image a generator renders is marked and every
text it samples carries the tournament mark (media/text_mark.py; a text request may switch it off), and every
clip it renders the audio mark. Without one, outputs still carry metadata, and say that no mark was applied.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from genforge.errors import UserError
from genforge.media.audio_mark import AudioMark
from genforge.media.provenance import Record
from genforge.media.text_mark import TournamentMark
from genforge.media.image_mark import ImageMark
from genforge.media.watermark import KeyError_, MarkKey, read_key

UNSET = object()
NOISE_MARK_STEPS = 10  # inversion steps when reading the noise mark (diffusion/noise_mark.py STEPS)


class Marking:
    """Mixin: `mark_key`, `image_mark`, `audio_mark`, `text_mark()`, `record()`. Needs `meta` (the run's or
    export's config)."""

    _mark_key = UNSET
    _model_hash: str | None = None
    _noise_mark: bool | None = None  # None: the run's (or export's) setting, model.noise_mark

    def use_mark_key(self, key: MarkKey | str | Path | None | bool) -> None:
        """A MarkKey, a key file's path, None (from the environment) or False (no mark)."""
        if key is False:
            self._mark_key = None
        elif isinstance(key, MarkKey):
            self._mark_key = key
        else:
            try:
                self._mark_key = read_key(key)
            except KeyError_ as e:
                raise UserError(str(e)) from None

    @property
    def mark_key(self) -> MarkKey | None:
        if self._mark_key is UNSET:
            self.use_mark_key(None)
        return self._mark_key

    @property
    def image_mark(self) -> ImageMark | None:
        key = self.mark_key
        return ImageMark(key) if key is not None else None

    @property
    def audio_mark(self) -> AudioMark | None:
        key = self.mark_key
        return AudioMark(key) if key is not None else None

    def text_mark(self, vocab: int) -> TournamentMark | None:
        """The text mark generators apply (the tournament; the green-list TextMark only verifies older texts)."""
        key = self.mark_key
        return TournamentMark(key, vocab) if key is not None else None

    # -- the diffusion noise mark (diffusion/noise_mark.py): planted in the starting noise, read by inversion --------
    def use_noise_mark(self, on: bool | None) -> None:
        """Plant the noise mark in generated samples (True), not (False), or as the run says (None: its
        `model.noise_mark`). It is planted only when a mark key is set, in diffusion image models."""
        self._noise_mark = on

    @property
    def noise_mark_on(self) -> bool:
        """Whether samples generated now get the noise mark: a diffusion model (not super-resolution), set on for the
        run or by `use_noise_mark`, with a mark key."""
        meta = self.meta
        if meta.get("family") != "diffusion" or self.mark_key is None:
            return False
        cfg = {**(meta.get("family_config") or {}), **(meta.get("model") or {})}
        if cfg.get("upscale_from") or cfg.get("low_res"):
            return False
        return bool(cfg.get("noise_mark")) if self._noise_mark is None else self._noise_mark

    def _plant_noise_mark(self, drawn: dict) -> dict:
        """`drawn` with the key's pattern planted in its starting noise "x" (a torch tensor or numpy array) when
        `noise_mark_on`; unchanged otherwise."""
        from genforge.diffusion import noise_mark

        x = drawn.get("x")
        if x is None or not self.noise_mark_on or not noise_mark.applies(tuple(x.shape)):
            return drawn
        arr = x.cpu().numpy() if hasattr(x, "cpu") else np.asarray(x)
        planted = noise_mark.plant(arr, noise_mark.key_pattern(self.mark_key, tuple(arr.shape[-3:])))
        return {**drawn, "x": x.new_tensor(planted) if hasattr(x, "new_tensor") else planted}

    def _inversion_input(self, images) -> np.ndarray:
        """uint8 (N, H, W, C) or (H, W, C) images of any size -> float32 (N, C, H, W) in the model's range and size
        (bilinear resize, luma or replicated grey for a channel mismatch): what the sampler is inverted from."""
        from PIL import Image

        shape = self._noise_shape()
        c, h, w = shape[-3:]
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        out = np.empty((len(images), c, h, w), np.float32)
        for i, img in enumerate(images):
            pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img[..., :3])
            pil = pil.convert("L" if c == 1 else "RGB")
            if pil.size != (w, h):
                pil = pil.resize((w, h), Image.BILINEAR)
            a = np.asarray(pil, dtype=np.float32)
            out[i] = (a[None] if c == 1 else a.transpose(2, 0, 1)) / 127.5 - 1
        return out

    def detect_noise_mark(self, image, key=None, steps: int = NOISE_MARK_STEPS) -> dict:
        """The noise mark under `key` (default: this generator's) in one uint8 (H, W, C) image: the image resized to
        the model's size, inverted to its starting noise (`invert_noise`) and correlated with the key's pattern.
        A dict as ImageMark.detect's (z, p_value, detected, key_id) with mark "noise" and the view scored."""
        from genforge.diffusion import noise_mark

        key = key if key is not None else self.mark_key
        if key is None:
            raise UserError("The noise mark needs a mark key (--key, or GENFORGE_MARK_KEY_FILE).")
        shape = self._noise_shape()
        x = self._inversion_input(image)
        found = np.asarray(image).shape[:2]
        noise = self.invert_noise(x, steps)[0]
        result = noise_mark.detect(noise, noise_mark.key_pattern(key, shape), key.id)
        view = "as found" if tuple(found) == tuple(shape[-2:]) else f"resized {found[1]}x{found[0]} -> {shape[-1]}x{shape[-2]}"
        return {**result, "view": view, "inversion_steps": steps}

    def _noise_shape(self) -> tuple[int, int, int]:
        raise UserError(f"{self.meta.get('family', '?')} models carry no noise mark: it is for diffusion image models.")

    def invert_noise(self, x: np.ndarray, steps: int = NOISE_MARK_STEPS) -> np.ndarray:
        raise UserError(f"{self.meta.get('family', '?')} models carry no noise mark: it is for diffusion image models.")

    def _weights_path(self) -> Path | None:
        return None

    def _weights_sha256(self) -> str:
        """SHA-256 of the weights the outputs come from (computed once)."""
        if self._model_hash is None:
            path = self._weights_path()
            digest = hashlib.sha256()
            if path is not None and path.is_file():
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
                self._model_hash = "sha256:" + digest.hexdigest()
            else:
                self._model_hash = ""
        return self._model_hash

    def model_name(self) -> str:
        return str(self.meta.get("name") or getattr(self, "run_dir", None) or getattr(self, "path", ""))

    def record(self, seed: int | None = None, marked: bool | None = None, **parameters) -> Record:
        """The provenance of outputs generated now with `seed` and `parameters`; `marked`: whether the mark was
        applied (default: whether a key is set)."""
        from genforge.version import __version__

        key = self.mark_key
        applied = key is not None if marked is None else marked
        if applied and "noise_mark" not in parameters and self.noise_mark_on:
            parameters["noise_mark"] = True  # the starting noise carried the key's pattern (diffusion/noise_mark.py)
        return Record(model=self.model_name(), model_hash=self._weights_sha256(), family=str(self.meta.get("family", "")),
                      version=__version__, seed=seed, parameters={k: v for k, v in parameters.items() if v is not None},
                      mark=key.id if (applied and key is not None) else "",
                      mark_scheme=self.mark_scheme() if (applied and key is not None) else "")

    def mark_scheme(self) -> str:
        """Which mark (and version) this generator's outputs carry, so that `verify` reads the right one."""
        return {"image": ImageMark.scheme, "video": ImageMark.scheme,
                "text": TournamentMark.scheme}.get(str(getattr(self, "modality", "")), "")


class ExportedMarking(Marking):
    """Marking for an export: its weights' hash is the run's, recorded at export time."""

    def _weights_sha256(self) -> str:
        sha = (self.meta.get("provenance") or {}).get("weights_sha256")
        return f"sha256:{sha}" if sha else ""
