"""A loaded audio model: `generate(n, labels=..., speaker=...)` -> float32 waveforms (N, L) at `sample_rate`, and
`speak(text)` -> one waveform reading a digit string aloud.

Two kinds of run give one: an image family (GAN, diffusion, VAE) trained on spectrogram images through the
codec of `genforge.audio.codec` (config.json's data.codec.kind "spectrogram": the images it renders are decoded
by Griffin-Lim), and a family whose network outputs waveforms itself (WaveNet: its method renders samples).
Both draw and render in two halves as image families do, so a server merges requests the same way; the
generator never asks which family it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import genforge.precision as prec
from genforge.data import from_model_range
from genforge.errors import UserError
from genforge.generators.base import WEIGHTS_FILE
from genforge.generators.images import ImageGenerator
from genforge.methods import get_method
from genforge.speaking import Speaking


@dataclass
class AudioJob:
    """One request's clips, ready to render: n, the family's options and what `draw` took from its seed."""

    n: int
    options: dict
    drawn: dict[str, torch.Tensor]
    calls: int = 0
    mark: bool = True  # False for speech: the joined utterance is marked once, not each digit (`finish_speech`)


def spectrogram_codec(data_meta: dict):
    """The run's spectrogram codec and its per-frequency statistics, or (None, None) for a waveform family."""
    codec = data_meta.get("codec") or {}
    if codec.get("kind") != "spectrogram":
        return None, None
    from genforge.audio.codec import SpectrogramCodec

    return SpectrogramCodec.from_dict(codec), codec["stats"]


def spectrogram_images_to_waveforms(images: np.ndarray, data_meta: dict, iters: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 (N, bins, frames, 1) spectrogram images -> float32 (N, L): the codec's inverse (Griffin-Lim)."""
    codec, stats = spectrogram_codec(data_meta)
    specs = images[..., 0].astype(np.float32) / 127.5 - 1.0
    return codec.decode(specs, stats, iters=iters, seed=seed)


class AudioGenerator(Speaking, ImageGenerator):
    """A loaded audio model. `generate` returns float32 waveforms in [-1, 1] at `sample_rate`, marked when a key
    is set (`use_mark_key`); `speak` reads digits aloud."""

    modality = "audio"
    PROBE_BATCH = 10

    def __init__(self, run_dir: Path, meta: dict, net: torch.nn.Module, device: torch.device,
                 weights_file: str = WEIGHTS_FILE, precision: str = "no"):
        self.run_dir, self.meta, self.net, self.device = run_dir, meta, net, device
        self.weights_file = weights_file
        data = meta["data"]
        self.method = get_method(meta["family"])
        self.spec = self.method.spec_from_meta(data)
        self.classes: list[str] = list(data.get("classes") or [])
        self.speakers: list[str] = list(data.get("speakers") or [])
        self.conditional: bool = bool(meta["model"].get("conditional", bool(self.classes)))
        self.codec, self.stats = spectrogram_codec(data)
        codec = data.get("codec") or {}
        self.sample_rate: int = int(codec.get("sample_rate", data.get("sample_rate", 8000)))
        self.length: int = int(self.codec.length if self.codec is not None else codec.get("length", 8192))
        self._use_precision(precision)

    def _generation_steps(self, names):
        """One unit of generation per precision for the load-time probe: a batch of 10 clips (a spoken number),
        waveform families on the short clip their `probe_draw` asks for."""
        def step_in(dtype):
            def step():
                rng = torch.Generator().manual_seed(0)
                with torch.no_grad(), self._autocast(dtype):
                    drawn = self.method.draw(self.net, self.spec, self.PROBE_BATCH, None, rng, **self.method.probe_draw)
                    self.method.render(self.net, drawn, self.device, **self._options({}))
            return step

        return {name: step_in(prec.autocast_dtype(name)) for name in names}

    def _draw(self, n: int, labels, rng: torch.Generator, speaker, options: dict) -> dict[str, torch.Tensor]:
        label_t = self._labels(labels, n)
        extra = {}
        if self.speakers:  # a family conditioned on speakers draws them (or takes the one asked for)
            idx = self.speaker_index(speaker)
            extra["speakers"] = torch.full((n,), idx, dtype=torch.long) if idx is not None else None
        elif speaker not in (None, "default"):
            self.speaker_index(speaker)  # raises the one-voice error
        return self.method.draw(self.net, self.spec, n, label_t, rng, **extra, **options)

    @torch.no_grad()
    def generate(self, n: int | None = None, seed: int | None = None, labels=None, speaker=None,
                 batch_size: int = 100, progress=None, mark: bool = True, **options) -> np.ndarray:
        """n clips as float32 (N, L) in [-1, 1]. `labels`: one digit (or class name) or one per clip (default: every
        class in turn); `speaker`: a speaker's name or index for models trained with speakers (default: drawn per
        clip); `options`: the family's own (`options()`)."""
        if n is None:
            n = len(labels) if labels is not None and not isinstance(labels, (int, str)) else 1
        if n < 1:
            raise UserError(f"n must be at least 1, got {n}.")
        options = self._options(options)
        rng = self._rng(seed)
        if isinstance(labels, (int, str)) or labels is None:
            labels_all = labels
        else:
            labels_all = list(labels)
            if len(labels_all) != n:
                raise UserError(f"Got {len(labels_all)} labels for {n} clips: give one label, or one per clip.")
        out = []
        batches = -(-n // batch_size)
        for b, start in enumerate(range(0, n, batch_size)):
            m = min(batch_size, n - start)
            lab = labels_all[start : start + m] if isinstance(labels_all, list) else labels_all
            drawn = self._draw(m, lab, rng, speaker, options)
            step = (lambda i, total, b=b: progress(b * total + i, batches * total)) if progress else None
            out.append(self._render([drawn], options, step, mark)[0])
        return np.concatenate(out)

    def generate_across_processes(self, n: int, **kwargs):
        return self.generate(n, **kwargs)

    def job(self, n: int, seed: int | None = None, labels=None, speaker=None, **options) -> AudioJob:
        """A request for n clips, checked and with its randomness drawn now: `run` renders many at once."""
        if n < 1:
            raise UserError(f"n must be at least 1, got {n}.")
        options = self._options(options)
        drawn = self._draw(n, labels, self._rng(seed), speaker, options)
        return AudioJob(n, options, drawn, self.method.network_calls(self.net, n, **options))

    @torch.no_grad()
    def run(self, jobs: list[AudioJob]) -> list[np.ndarray]:
        """Render several jobs (with equal options) in one batch: each job's clips are those it gets alone."""
        if not jobs:
            return []
        if any(job.options != jobs[0].options for job in jobs):
            raise UserError("Jobs rendered together must have the same options; render the others separately.")
        clips = np.concatenate(self._render([job.drawn for job in jobs], jobs[0].options, mark=False))
        return self._mark_jobs(jobs, clips)

    def _render(self, draws: list[dict], options: dict, progress=None, mark: bool = True) -> list[np.ndarray]:
        keys = [k for k in draws[0] if draws[0][k] is not None]
        drawn = {k: torch.cat([d[k] for d in draws]) for k in keys}
        with self._autocast(self.dtype):
            x = self.method.render(self.net, drawn, self.device, **options, **({"progress": progress} if progress else {}))
        if self.codec is not None:  # spectrogram images -> waveforms, through the same uint8 the model trained on
            images = from_model_range(x.float()).cpu().numpy()
            clips = spectrogram_images_to_waveforms(images, self.meta["data"])
        else:
            clips = x.float().cpu().numpy()
        clips = np.clip(clips, -1.0, 1.0).astype(np.float32)
        clips = self._marked(clips) if mark else clips
        sizes = [len(next(v for v in d.values() if v is not None)) for d in draws]
        return np.split(clips, np.cumsum(sizes)[:-1])

    def _marked(self, clips: np.ndarray) -> np.ndarray:
        return np.stack([self.mark_clip(c) for c in clips]) if self.audio_mark is not None and len(clips) else clips

    # -- `speak` in two halves, for a server that batches requests: speak(...) == finish_speech(job, run([job])[0])
    # when no mark key is set (with one, `run` also marks each digit clip before the joined clip is marked) --
