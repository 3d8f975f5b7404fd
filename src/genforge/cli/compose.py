"""`genforge sample` of a music model: whole, checked tunes written as ABC/MusicXML, MIDI, WAV and piano rolls."""

from __future__ import annotations

import sys

from genforge.cli.common import err, out
from genforge.errors import UserError


def sample_music(model, n: int | None, out_arg: str | None, prompt: str | None, max_new_tokens: int | None,
                 temperature: float | None, top_k: int | None, top_p: float | None, seed: int | None,
                 keep_invalid: bool, soundfont: str | None, formats: tuple[str, ...] | None, signer,
                 metadata: bool) -> None:
    """Compose `n` pieces (default 1) and print them (no --out) or write them by --out: a folder/ gets each piece
    as .abc (or .musicxml), .mid, .wav and .png (or `formats`), a file its one format."""
    n = 1 if n is None else n
    temperature = 1.0 if temperature is None else temperature
    pieces, counts = model.compose(prompt, n, max_new_tokens, temperature, top_k, top_p, seed, keep_invalid)
    dropped = counts["drawn"] - counts["kept"]
    if counts["invalid"]:
        reasons = "; ".join(f"{k} ({v})" for k, v in sorted(counts["reasons"].items(), key=lambda kv: -kv[1])[:3])
        verb = "kept (--keep-invalid)" if keep_invalid else "dropped and redrawn"
        err.print(f"note: {counts['invalid']} of {counts['drawn']} pieces drawn were not valid music and were {verb}: "
                  f"{reasons}", highlight=False, soft_wrap=True)
    if not pieces:
        raise UserError(f"No valid piece in {counts['drawn']} tries ({dropped} dropped). Fix: lower --temperature "
                        "(e.g. 0.8), raise --max-new-tokens, or pass --keep-invalid to see them.")
    if len(pieces) < n:
        err.print(f"note: only {len(pieces)} of {n} pieces were valid within the tries; the rest were dropped.",
                  highlight=False, soft_wrap=True)
    if out_arg is None:
        for i, p in enumerate(pieces):
            header = f"--- piece {i + 1} of {len(pieces)}{'' if p.valid else ' (not valid: ' + p.reason + ')'} ---\n"
            sys.stdout.write((header if len(pieces) > 1 or not p.valid else "") + p.text + "\n\n")
        return
    from genforge.media.music import write_music

    record = model.record(seed, prompt=prompt or "", n=n, temperature=temperature, top_k=top_k, top_p=top_p,
                          max_new_tokens=max_new_tokens, keep_invalid=keep_invalid) if metadata else None
    paths = write_music([(p.text, None) for p in pieces], out_arg, formats, record, soundfont, model.music_kind,
                        signer=signer, mark=model.audio_mark)  # the inaudible mark: in audio files only
    out.print(f"{out_arg}: {len(pieces)} piece{'s' * (len(pieces) != 1)}, {len(paths)} file{'s' * (len(paths) != 1)} "
              f"({', '.join(sorted({p.suffix for p in paths}))})", highlight=False, soft_wrap=True)
