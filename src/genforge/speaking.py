"""What every audio generator (torch's `genforge.load`, the runtime's) shares: its voices, reading digits aloud,
and spectrogram pictures of its clips. Torch-free, like marking.py.

Needs `speakers`, `classes`, `sample_rate`, `codec` (a SpectrogramCodec or None), `stats` (its statistics or
None), `audio_mark` (from Marking) and `generate(n, seed=, labels=, speaker=, mark=, **options)`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genforge.audio import speech
from genforge.errors import UserError


class Speaking:
    """Mixin for audio generators: `voices`, `speaker_index`, `speak`, `spectrograms`, `save_grid`."""

    speakers: list[str]
    classes: list[str]
    sample_rate: int
    codec = None
    stats: dict | None = None

    @property
    def voices(self) -> list[str]:
        """What a speech request may name as its voice: the run's speakers, or "default" for a one-voice model."""
        return self.speakers or ["default"]

    def speaker_index(self, speaker) -> int | None:
        """A speaker index from a name, an index or None (the model's choice); "default" always works."""
        if speaker is None or speaker == "default":
            return None
        if not self.speakers:
            raise UserError(f"This model has one voice ('default'); it was not trained with speakers, so "
                            f"'{speaker}' cannot be chosen.")
        if isinstance(speaker, str) and speaker in self.speakers:
            return self.speakers.index(speaker)
        if isinstance(speaker, (int, np.integer)) or (isinstance(speaker, str) and speaker.isdigit()):
            if 0 <= int(speaker) < len(self.speakers):
                return int(speaker)
        raise UserError(f"Unknown speaker '{speaker}'. This model's speakers: {', '.join(self.speakers)} "
                        "(or 'default').")

    def mark_clip(self, clip: np.ndarray) -> np.ndarray:
        mark = self.audio_mark
        return mark.embed(clip, self.sample_rate) if mark is not None else clip

    def speech_labels(self, text: str, speaker, seed: int | None) -> tuple[speech.Utterance, list[int], object]:
        """The parsed text, the class index of each digit, and the voice (one drawn from the seed when the model has
        speakers and none was asked for, so a whole number is read in one voice)."""
        try:
            utterance = speech.parse(text)
        except speech.SpeechTextError as e:
            raise UserError(str(e)) from None
        missing = sorted({d for d in utterance.digits if str(d) not in self.classes})
        if missing:
            raise UserError(f"This model's classes are {', '.join(self.classes)}, not the digits 0-9: it cannot read "
                            "numbers aloud. Use `genforge sample --label` instead.")
        if self.speakers and speaker in (None, "default"):
            speaker = int(np.random.default_rng(seed).integers(len(self.speakers)))
        return utterance, [self.classes.index(str(d)) for d in utterance.digits], speaker

    def join_speech(self, utterance: speech.Utterance, clips: np.ndarray, speed: float) -> np.ndarray:
        """The digits' clips trimmed and joined, then marked once (trimming and stretching would cut a mark)."""
        try:
            joined = speech.join(list(clips), utterance, self.sample_rate, speed)
        except speech.SpeechTextError as e:
            raise UserError(str(e)) from None
        return self.mark_clip(joined)

    def speech_job(self, text: str, speaker=None, speed: float = 1.0, seed: int | None = None, **options):
        """`speak`'s first half: the text parsed and every digit's randomness drawn now, as a job of one clip per
        digit that `run` renders beside other jobs with the same options (a server's batch). Its digits are left
        unmarked; `finish_speech` marks the joined utterance."""
        if not 0.25 <= speed <= 4.0:
            raise UserError(f"speed={speed} is out of range: use 0.25..4.0.")
        utterance, labels, speaker = self.speech_labels(text, speaker, seed)
        job = self.job(len(labels), seed, labels, speaker, **options)
        job.mark, job.utterance, job.speed = False, utterance, speed
        return job

    def finish_speech(self, job, clips: np.ndarray) -> np.ndarray:
        """`speak`'s second half: the job's rendered digit clips trimmed and joined with pauses, then marked."""
        return self.join_speech(job.utterance, clips, job.speed)

    def speak(self, text: str, speaker=None, speed: float = 1.0, seed: int | None = None, **options) -> np.ndarray:
        """`text` (digits or number words, e.g. "415 555 0199") read aloud: float32 (L,) at `sample_rate`. The
        digits are generated in one batch in one voice (`speaker`, or one drawn from the seed), trimmed and
        joined with short pauses between digits and longer ones between groups; `speed` > 1 reads faster."""
        job = self.speech_job(text, speaker, speed, seed, **options)
        return self.finish_speech(job, self.run([job])[0])

    def _mark_jobs(self, jobs: list, clips: np.ndarray) -> list[np.ndarray]:
        """Rendered clips split per job, marked for the jobs that want it (not speech's digits)."""
        parts = np.split(clips, np.cumsum([job.n for job in jobs])[:-1])
        if self.audio_mark is None:
            return parts
        return [np.stack([self.mark_clip(c) for c in part]) if job.mark else part for job, part in zip(jobs, parts)]

    def spectrograms(self, clips: np.ndarray) -> np.ndarray:
        """Spectrograms (N, bins, frames) in [-1, 1] of clips, to look at: the run's own normalisation for a
        spectrogram model; for a waveform family, log-magnitude over the 8 natural-log units (~70 dB) below the
        loudest bin of the set."""
        from genforge.audio.codec import SpectrogramCodec

        codec = self.codec or SpectrogramCodec(sample_rate=self.sample_rate)
        clips = np.asarray(clips, np.float32)
        if clips.ndim == 1:
            clips = clips[None]
        if clips.shape[1] >= codec.length:
            clips = clips[:, : codec.length]
        else:
            clips = np.pad(clips, ((0, 0), (0, codec.length - clips.shape[1])))
        if self.stats is not None:
            return codec.encode(clips, self.stats)
        logmag = codec.log_magnitude(clips)
        top = float(logmag.max())
        return np.clip((logmag - (top - 8.0)) / 8.0 * 2 - 1, -1, 1).astype(np.float32)

    def save_grid(self, clips: np.ndarray, path: str | Path, nrow: int | None = None) -> Path:
        """A PNG grid of the clips' spectrograms, low frequencies at the bottom."""
        from genforge.media.audio import save_spectrogram_grid

        return save_spectrogram_grid(self.spectrograms(clips), path, nrow)
