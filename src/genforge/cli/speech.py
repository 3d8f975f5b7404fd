"""`genforge speak` and the audio side of `genforge sample`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from genforge.cli.common import app, err, out, signer_from, user_errors
from genforge.errors import UserError

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3")


def write_clips(model, clips, out_arg: str, record, signer, fmt: str, nrow: int | None) -> str:
    """Clips to --out: x.wav/.flac/.mp3 (one clip), a folder/ (one file per clip in --format), x.png (a spectrogram
    grid to look at) or x.npy (float32 array). Returns what was written, for the user."""
    import numpy as np

    from genforge.media.audio import write_audio

    out_path = Path(out_arg)
    as_dir = out_arg.endswith(("/", "\\")) or out_path.is_dir()
    suffix = out_path.suffix.lower()
    if as_dir:
        if fmt not in ("wav", "flac", "mp3"):
            raise UserError(f"--format for audio must be wav, flac or mp3; got '{fmt}'.")
        paths = write_audio(clips, model.sample_rate, out_arg if out_arg.endswith(("/", "\\")) else out_arg + "/",
                            record=record, signer=signer, fmt=fmt)
        return f"wrote {len(paths)} {fmt.upper()} files ({model.sample_rate} Hz) to {out_path}"
    if suffix in AUDIO_SUFFIXES:
        if len(clips) != 1:
            raise UserError(f"--out {out_path} is one file but --n is {len(clips)}: pass --n 1, or a folder/ for one "
                            "file per clip, or x.png for a spectrogram grid.")
        paths = write_audio(clips, model.sample_rate, str(out_path), record=record, signer=signer)
        return f"wrote {paths[0]} ({len(clips[0]) / model.sample_rate:.2f} s at {model.sample_rate} Hz)"
    if suffix == ".png":
        path = model.save_grid(clips, out_path, nrow)
        return f"wrote {path} (spectrograms of {len(clips)} clips, low frequencies at the bottom)"
    if suffix == ".npy":
        np.save(out_path, clips.astype(np.float32))
        return f"wrote {out_path} (float32 {tuple(clips.shape)} at {model.sample_rate} Hz)"
    raise UserError(f"--out for an audio model must end in .wav, .flac or .mp3 (one clip), / (one file per clip), "
                    f".png (a spectrogram grid) or .npy (array); got '{out_path}'.")


def sample_audio(model, n: int | None, out_arg: str | None, label, speaker, seed, nrow, fmt: str, options: dict,
                 signer, metadata: bool) -> None:
    if out_arg is None:
        raise UserError("--out is required for an audio model: x.wav (one clip), a folder/ (one WAV per clip), "
                        "x.png (a spectrogram grid) or x.npy.")
    n = 8 if n is None else n
    clips = model.generate(n, seed=seed, labels=label, speaker=speaker, **options)
    record = model.record(seed, n=n, labels=label, speaker=speaker, **options) if metadata else None
    out.print(write_clips(model, clips, out_arg, record, signer, fmt.lower(), nrow), highlight=False, soft_wrap=True)


@app.command()
@user_errors
def speak(
    run_dir: Path = typer.Argument(..., help="An audio run directory (a spoken-digit model) or its export."),
    text: str = typer.Argument(..., help="Digits or number words to read aloud, e.g. \"415 555 0199\" or \"four one "
                                         "five\"; spaces and punctuation between groups become longer pauses."),
    out_path: Path = typer.Option(..., "--out", help="The file to write: .wav (16-bit PCM), .flac or .mp3."),
    speaker: Optional[str] = typer.Option(None, help="A voice: one of the model's speakers (a wrong name lists "
                                                     "them); default: one drawn from --seed."),
    speed: float = typer.Option(1.0, help="Reading speed: 1 natural, 1.5 faster (pauses shrink and digits are "
                                          "time-stretched, pitch kept), 0.25..4."),
    seed: Optional[int] = typer.Option(None, help="Random seed: the same seed reads the same way."),
    temperature: Optional[float] = typer.Option(None, help="Waveform models (WaveNet): sampling temperature."),
    mark_key: Optional[Path] = typer.Option(None, "--mark-key", help="Key file of the inaudible mark (default: $GENFORGE_MARK_KEY_FILE or $GENFORGE_MARK_KEY)."),
    no_mark: bool = typer.Option(False, "--no-mark", help="Do not apply the inaudible mark, even when a key is set."),
    no_metadata: bool = typer.Option(False, "--no-metadata", help="Write the file without provenance metadata or C2PA manifest."),
    sign_cert: Optional[Path] = typer.Option(None, "--sign-cert", help="PEM certificate chain for a C2PA manifest in the file (with --sign-key)."),
    sign_key: Optional[Path] = typer.Option(None, "--sign-key", help="PEM private key (ES256) of --sign-cert."),
):
    """Read a digit string aloud with a spoken-digit model: the digits are generated in one batch in one voice,
    trimmed and joined with natural pauses. The file carries its provenance (and a C2PA manifest with
    --sign-cert/--sign-key) and, with a mark key, an inaudible keyed mark that `genforge verify --key` finds."""
    import time

    from genforge.media.audio import write_audio
    from genforge.runtime import is_export

    if out_path.suffix.lower() not in AUDIO_SUFFIXES:
        raise UserError(f"--out must end in .wav, .flac or .mp3; got '{out_path}'.")
    if is_export(run_dir):
        from genforge.runtime import load as load_export

        model = load_export(run_dir)
    else:
        from genforge.artifacts import load

        model = load(run_dir)
    if model.modality != "audio":
        raise UserError(f"{run_dir} is a {model.modality} model; `genforge speak` takes a speech model "
                        "(e.g. one trained from the fsdd-wavenet, fsdd-specgan or fsdd-diffusion presets).")
    model.use_mark_key(False if no_mark else mark_key)
    signer = signer_from(sign_cert, sign_key, no_metadata)
    options = {"temperature": temperature} if temperature is not None else {}
    start = time.perf_counter()
    clip = model.speak(text, speaker=speaker, speed=speed, seed=seed, **options)
    seconds = time.perf_counter() - start
    record = None if no_metadata else model.record(seed, text=text, speaker=speaker, speed=speed, **options)
    path = write_audio(clip, model.sample_rate, str(out_path), record=record, signer=signer)[0]
    err.print(f"generated {len(clip) / model.sample_rate:.2f} s of speech in {seconds:.2f} s", highlight=False)
    out.print(f"wrote {path}", highlight=False, soft_wrap=True)
