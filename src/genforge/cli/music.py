"""`genforge render`: any music file (ABC, MIDI, MusicXML) to something a person can hear or see."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from genforge.cli.common import app, err, out, user_errors
from genforge.errors import UserError


@app.command()
@user_errors
def render(
    source: Path = typer.Argument(..., help="A music file: .abc (one tune of it, --tune), .mid/.midi, .musicxml/.xml "
                                            "or .mxl."),
    out_path: Path = typer.Option(..., "--out", help="What to write, by its extension: .wav, .flac or .mp3 (audio "
                                                     "through a General MIDI soundfont), .png (a piano roll), .mid or "
                                                     ".musicxml."),
    soundfont: Optional[Path] = typer.Option(None, "--soundfont", help="A SoundFont 2 file (.sf2/.sf3) to play the "
                                                                       "notes with (default: TimGM6mb.sf2, which the "
                                                                       "pretty_midi wheel ships)."),
    sample_rate: int = typer.Option(22050, "--sample-rate", help="Audio sample rate in Hz."),
    tune: int = typer.Option(1, "--tune", help="Which tune of a multi-tune .abc file, counting from 1."),
    program: Optional[int] = typer.Option(None, "--program", help="General MIDI instrument for every part, 0..127 "
                                                                  "(default: 73 flute for a melody, 48 strings for "
                                                                  "parts; the default soundfont plays 0 piano and 40 "
                                                                  "violin off key under symusic 0.5.9)."),
    no_metadata: bool = typer.Option(False, "--no-metadata", help="Write the file without the source's "
                                                                  "provenance."),
):
    """Render a tune or piece: to audio, a piano roll, MIDI or MusicXML. When the source carries genforge's
    provenance (a generated tune), the output carries it too (C2PA and XMP for audio and PNG); music without it
    gets none, since a rendering of a person's tune is not generated media."""
    from genforge.media import music
    from genforge.music.notes import MusicError

    suffix = out_path.suffix.lower()
    if suffix.lstrip(".") not in music.WRITERS or suffix == ".abc":
        raise UserError(f"--out {out_path}: render writes .wav, .flac, .mp3, .png, .mid or .musicxml.")
    if tune < 1:
        raise UserError(f"--tune counts from 1; got {tune}.")
    try:
        score, text, provenance = music.read_music_file(source, tune)
    except MusicError as e:
        raise UserError(f"{e}. Fix: check that the file is complete music in its format.") from None
    record = None if no_metadata else music.record_from(provenance)
    if record is not None:
        record = record.with_(parameters={**record.parameters, "rendered_from": source.name})
    start = time.perf_counter()
    try:
        music.write_music([(text or "", score)], out_path, record=record, soundfont=soundfont, sample_rate=sample_rate,
                          program=program, kind="abc" if text else "events")
    except MusicError as e:
        raise UserError(f"{source}: {e}.") from None
    seconds = time.perf_counter() - start
    parts = f"{score.voices} part" + "s" * (score.voices != 1)
    what = f"{score.seconds:.1f} s of music, {len(score.notes)} notes in {parts}"
    err.print(f"rendered {what} in {seconds:.2f} s", highlight=False)
    out.print(f"wrote {out_path}" + (" (with the source's provenance)" if record is not None else ""),
              highlight=False, soft_wrap=True)
