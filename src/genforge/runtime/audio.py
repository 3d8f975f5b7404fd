"""An exported audio model: `generate` and `speak` as `genforge.load(run)`'s AudioGenerator, on onnxruntime.

The family's runtime side (`runtime/families.py`) draws and renders as for images; what it renders is either
spectrogram images (an image family trained through the spectrogram codec: decoded here by the same numpy
Griffin-Lim the torch path uses) or waveforms (a waveform family such as WaveNet)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genforge.errors import UserError
from genforge.labels import label_indices
from genforge.marking import ExportedMarking
from genforge.options import SampleOption
from genforge.runtime.families import FAMILIES
from genforge.speaking import Speaking


@dataclass
class AudioJob:
    n: int
    options: dict
    drawn: dict[str, np.ndarray]
    calls: int = 0
    mark: bool = True


class ExportedAudioModel(Speaking, ExportedMarking):
    modality = "audio"

    def __init__(self, path: Path, config: dict, sessions: dict):
        from genforge.runtime.images import _runner

        self.path, self.config, self.meta = path, config, config
        audio = config["audio"]
        self.classes: list[str] = list(config.get("classes") or [])
        self.speakers: list[str] = list(audio.get("speakers") or [])
        self.conditional: bool = bool(config.get("conditional", bool(self.classes)))
        self.sample_rate: int = int(audio["sample_rate"])
        self.codec_meta = audio.get("codec") or {}
        self.codec = None
        if self.codec_meta.get("kind") == "spectrogram":
            from genforge.audio.codec import SpectrogramCodec

            self.codec = SpectrogramCodec.from_dict(self.codec_meta)
        self.stats = self.codec_meta.get("stats")
        self.length: int = int(self.codec.length if self.codec else audio.get("length", 8192))
        self._known = {k: SampleOption.from_description(d) for k, d in config.get("options", {}).items()}
        family_config = dict(config.get("family_config", {}))
        if "image" in config:
            img = config["image"]
            family_config["shape"] = (img["channels"], img["height"], img["width"])
        self.family = FAMILIES[config["family"]](family_config, {k: _runner(s) for k, s in sessions.items()})
        self.sessions = sessions

    def options(self) -> dict[str, dict]:
        return {k: o.describe() for k, o in self._known.items()}

    def _options(self, options: dict) -> dict:
        unknown = [k for k in options if k not in self._known]
        if unknown:
            have = f"Its options: {', '.join(self._known)}." if self._known else "It takes no options beyond n, seed and labels."
            raise UserError(f"{', '.join(unknown)}: not an option of this {self.config['family']} model. {have}")
        given = {k: self._known[k].check(k, v) for k, v in options.items() if v is not None}
        return {k: given.get(k, o.default) for k, o in self._known.items()}

    def draw(self, n: int, seed: int | None = None, labels=None, speaker=None, **options) -> dict[str, np.ndarray]:
        if n < 1:
            raise UserError(f"n must be at least 1, got {n}.")
        options = self._options(options)
        idx = label_indices(self.classes, self.conditional, labels, n)
        label_a = None if idx is None else np.asarray(idx, dtype=np.int64)
        extra = {}
        if self.speakers:
            s = self.speaker_index(speaker)
            extra["speakers"] = None if s is None else np.full(n, s, np.int64)
        elif speaker not in (None, "default"):
            self.speaker_index(speaker)
        if extra and "speakers" not in inspect.signature(self.family.draw).parameters:
            extra = {}
        return self.family.draw(n, label_a, np.random.default_rng(seed), **extra, **options)

    def render(self, drawn: dict[str, np.ndarray], progress=None, mark: bool = True, **options) -> np.ndarray:
        """float32 clips (N, L) in [-1, 1] from drawn inputs (the parity tests pass the torch path's draws here)."""
        x = self.family.render({k: v for k, v in drawn.items() if v is not None}, progress, **self._options(options))
        if self.codec is not None:
            from genforge.runtime.images import _to_uint8

            specs = _to_uint8(x)[..., 0].astype(np.float32) / 127.5 - 1.0
            clips = self.codec.decode(specs, self.codec_meta["stats"], iters=32, seed=0)
        else:
            clips = np.asarray(x, np.float32)
        clips = np.clip(clips, -1.0, 1.0).astype(np.float32)
        return np.stack([self.mark_clip(c) for c in clips]) if mark and self.audio_mark is not None else clips

    def network_calls(self, n: int, **options) -> int:
        return self.family.network_calls(n, **self._options(options))

    def job(self, n: int, seed: int | None = None, labels=None, speaker=None, **options) -> AudioJob:
        options = self._options(options)
        return AudioJob(n, options, self.draw(n, seed, labels, speaker, **options), self.family.network_calls(n, **options))

    def run(self, jobs: list[AudioJob]) -> list[np.ndarray]:
        if not jobs:
            return []
        if any(job.options != jobs[0].options for job in jobs):
            raise UserError("Jobs rendered together must have the same options; render the others separately.")
        keys = [k for k in jobs[0].drawn if jobs[0].drawn[k] is not None]
        drawn = {k: np.concatenate([job.drawn[k] for job in jobs]) for k in keys}
        return self._mark_jobs(jobs, self.render(drawn, mark=False, **jobs[0].options))

    def generate(self, n: int | None = None, seed: int | None = None, labels=None, speaker=None, batch_size: int = 100,
                 progress=None, mark: bool = True, **options) -> np.ndarray:
        if n is None:
            n = len(labels) if labels is not None and not isinstance(labels, (int, str)) else 1
        drawn = self.draw(n, seed, labels, speaker, **options)
        out = []
        for i in range(0, n, batch_size):
            part = {k: (v[i : i + batch_size] if v is not None else None) for k, v in drawn.items()}
            out.append(self.render(part, progress, mark, **options))
        return np.concatenate(out)
