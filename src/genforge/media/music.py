"""Generated music as files: ABC, MusicXML, MIDI, rendered audio (WAV, FLAC, MP3) and a piano roll (PNG), each
with the run's provenance where the format can hold it.

Where the record goes: MIDI, a text meta event (FF 01) on the first track, "genforge-provenance " and the record
as JSON (the same fields `parse_xmp` returns), which any MIDI reader keeps and shows; ABC, a comment line
"%genforge-provenance <json>" after X: (ABC comments are ignored by players and by music21); MusicXML, an XML
comment after the declaration; audio, XMP and C2PA through media/audio.py; the piano roll, XMP and C2PA through
media/images.py. Reading the record back needs neither music21 nor mido (`music_provenance`), so `genforge verify`
stays light.

MIDI, rendering and the piano roll live in media/music_render.py (re-exported here). music21 is imported when a
file is parsed or MusicXML written (the optional `music` extra).
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zipfile
from pathlib import Path

from genforge.errors import UserError
from genforge.media.audio import encode_audio
from genforge.media.images import _write
from genforge.media.music_render import (TAG, _midi_provenance, _music_extra, _read_json, _record_json,
                                         default_soundfont, midi_to_score, piano_roll, piano_roll_layout,
                                         piano_roll_png, render_audio, score_to_midi)
from genforge.media.provenance import FIELDS, Record, Signer
from genforge.music.notes import MusicError, Score

__all__ = ["abc_with_record", "default_soundfont", "midi_to_score", "music_format", "music_provenance",
           "musicxml_bytes", "piano_roll", "piano_roll_layout", "piano_roll_png", "read_music_file", "record_from",
           "render_audio", "score_to_midi", "score_to_stream", "write_music"]

MUSIC_SUFFIXES = {".abc": "abc", ".mid": "midi", ".midi": "midi", ".musicxml": "musicxml", ".xml": "musicxml",
                  ".mxl": "mxl"}
OUT_SUFFIXES = (".abc", ".musicxml", ".mid", ".wav", ".flac", ".mp3", ".png")
DEFAULT_FORMATS = {"abc": ("abc", "mid", "wav", "png"), "events": ("musicxml", "mid", "wav", "png")}


def record_from(provenance: dict | None) -> Record | None:
    """A `Record` again from what a file said (so a render of a generated tune carries the tune's provenance)."""
    if not provenance or not provenance.get("model"):
        return None
    fields = {k: provenance[k] for k in FIELDS if k in provenance}
    if not isinstance(fields.get("parameters", {}), dict) or not isinstance(fields.get("filters", []), list):
        return None
    return Record(**fields)


# ------------------------------------------------------------------------------------ ABC and MusicXML text

_ABC_TAG = re.compile(r"^%" + TAG + r" (.*)$", re.MULTILINE)


def abc_with_record(tune: str, record: Record | None) -> str:
    """The tune with its record as a comment line after X: (at the top when there is no X: line)."""
    lines = [line for line in tune.split("\n") if not _ABC_TAG.match(line)]  # a record already there is replaced
    if record is None:
        return "\n".join(lines)
    line = f"%{TAG} {_record_json(record)}"
    at = 1 if lines and lines[0].startswith("X:") else 0
    return "\n".join(lines[:at] + [line] + lines[at:])


def _abc_provenance(text: str) -> dict | None:
    m = _ABC_TAG.search(text)
    return _read_json(m.group(1)) if m else None


def score_to_stream(score: Score):
    """A music21 Score of the notes (one part per voice, with metre, key and tempo), for MusicXML from notes that
    came without notation (MIDI, or event text without its codec)."""
    m21 = _music_extra("music21")
    from music21 import key, meter, note, stream, tempo

    out = stream.Score()
    for voice in range(max([score.voices] + [n.voice + 1 for n in score.notes])):
        part = stream.Part()
        if score.time_signature:
            part.insert(0, meter.TimeSignature(score.time_signature))
        part.insert(0, key.KeySignature(score.key_sharps))
        if voice == 0:
            part.insert(0, tempo.MetronomeMark(number=score.qpm))
        for n in score.notes:
            if n.voice == voice:
                el = note.Note(n.pitch)
                el.quarterLength = n.duration
                part.insert(n.onset, el)
        out.insert(0, part)
    if score.title:
        out.insert(0, m21.metadata.Metadata(title=score.title))
    return out


def musicxml_bytes(stream, record: Record | None = None) -> bytes:
    """A music21 stream as MusicXML (uncompressed) with the record as an XML comment after the declaration."""
    from music21.musicxml.m21ToXml import GeneralObjectExporter

    try:
        data = GeneralObjectExporter(stream).parse()
    except Exception as e:  # music21 raises many kinds on notation it cannot write
        raise MusicError(f"could not be written as MusicXML ({type(e).__name__}: {str(e)[:120]})") from None
    if record is None:
        return data
    comment = f"<!-- {TAG} {_record_json(record)} -->\n".encode()
    end = data.find(b"?>") + 2 if data.startswith(b"<?xml") else 0
    return data[:end] + (b"\n" if end else b"") + comment + data[end:].lstrip(b"\n")


_XML_TAG = re.compile(rb"<!--\s*" + TAG.encode() + rb" (.*?)\s*-->", re.DOTALL)


def _xml_provenance(data: bytes) -> dict | None:
    m = _XML_TAG.search(data[:1 << 20])
    return _read_json(m.group(1).decode("utf-8", "replace")) if m else None


# ------------------------------------------------------------------------------------------ files: detection

def music_format(data: bytes, suffix: str) -> str | None:
    """midi, abc, musicxml or mxl, by the bytes where they have a signature, else by the suffix; None for
    anything else (an .xml file that is not MusicXML included)."""
    suffix = suffix.lower()
    if data[:4] == b"MThd":
        return "midi"
    fmt = MUSIC_SUFFIXES.get(suffix)
    if fmt == "musicxml" and b"<score-partwise" not in data[:4096] and b"<score-timewise" not in data[:4096]:
        return None
    if fmt == "mxl" and data[:2] != b"PK":
        return None
    return fmt if fmt != "midi" else None  # a .mid without the MThd header is not MIDI


def music_provenance(data: bytes, fmt: str) -> dict | None:
    """The record a music file carries (see the module docstring for where), or None. Needs no music library."""
    if fmt == "midi":
        return _midi_provenance(data)
    if fmt == "abc":
        return _abc_provenance(data.decode("utf-8", "replace"))
    if fmt == "musicxml":
        return _xml_provenance(data)
    if fmt == "mxl":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for name in z.namelist():
                    if name.lower().endswith((".xml", ".musicxml")) and not name.startswith("META-INF"):
                        found = _xml_provenance(z.read(name)[:1 << 20])
                        if found:
                            return found
        except (zipfile.BadZipFile, OSError, struct.error):
            return None
    return None


# ---------------------------------------------------------------------------------------------- write, read

WRITERS = ("abc", "musicxml", "mid", "wav", "flac", "mp3", "png")


def _score_of(text: str, score: Score | None, kind: str) -> Score:
    if score is not None:
        return score
    if kind == "abc":
        from genforge.music.abc import abc_score

        return abc_score(text)
    from genforge.music.events import events_to_score

    return events_to_score(text)


def _stream_of(text: str, score: Score, kind: str):
    """The notation to write as MusicXML: ABC parsed by music21 (keeps its bars, ties and title); event text
    through its codec; notes alone rebuilt part by part."""
    if kind == "abc" and text:
        from genforge.music.abc import parse_abc

        return parse_abc(text)
    if kind == "events" and text:
        try:
            from genforge.music.events import events_to_stream
        except ImportError:  # the codec is not there (an older checkout): the notes alone still make a score
            return score_to_stream(score)
        return events_to_stream(text)
    return score_to_stream(score)


def _targets(n: int, out: str | Path, formats, kind: str) -> list[list[tuple[str, Path]]]:
    """For each item, its (format, path) pairs: a folder gets tune-000.<fmt> for each format; a file path is
    that file for one item and numbered siblings (x_000.mid, x_001.mid) for several."""
    path = Path(out)
    width = max(3, len(str(n - 1)))
    if str(out).endswith(("/", "\\")) or path.is_dir():
        formats = tuple(f.lower().lstrip(".") for f in (formats or DEFAULT_FORMATS[kind]))
        bad = [f for f in formats if f not in WRITERS]
        if bad or not formats:
            raise UserError(f"music formats {', '.join(bad) or '(none)'}: choose from {', '.join(WRITERS)}.")
        return [[(f, path / f"tune-{i:0{width}d}.{f}") for f in formats] for i in range(n)]
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in WRITERS:
        raise UserError(f"--out {out}: music is written as {', '.join('.' + w for w in WRITERS)}, or a folder/ "
                        "(one file per tune and format).")
    if formats and tuple(f.lower().lstrip(".") for f in formats) != (fmt,):
        raise UserError(f"--out {out} is one .{fmt} file, but the formats asked for are {', '.join(formats)}: give "
                        "a folder/ for several formats.")
    if n == 1:
        return [[(fmt, path)]]
    return [[(fmt, path.with_name(f"{path.stem}_{i:0{width}d}{path.suffix}"))] for i in range(n)]


def write_music(items: list[tuple[str, Score | None]], out: str | Path, formats: tuple[str, ...] | None = None,
                record: Record | None = None, soundfont: str | Path | None = None, kind: str = "abc",
                sample_rate: int = 22050, program: int | None = None, signer: Signer | None = None,
                mark=None) -> list[Path]:
    """Write tunes (their text, ABC or event text, and their notes; None to parse the text) where `out` says:
    a folder (existing, or ending in /) gets tune-000.abc, .mid, .wav, .png (ABC) or .musicxml, .mid, .wav,
    .png (events), or `formats`; a file path gets that format (numbered siblings for several tunes). Each file
    carries the record (parameters.index = the tune's place when there are several); audio also the C2PA
    manifest (`signer`) and the audio mark (`mark`). A tune that does not parse gets its .abc only (a warning
    says so). `program`: the General MIDI instrument of the MIDI and audio
    (default: flute for a melody, strings for parts; see music_render.default_program). Returns the paths written."""
    if kind not in DEFAULT_FORMATS:
        raise ValueError(f"kind {kind!r}: abc or events")
    if not items:
        raise UserError("no tunes to write.")
    targets = _targets(len(items), out, formats, kind)
    if kind != "abc" and any(f == "abc" for pairs in targets for f, _ in pairs):
        raise UserError("event text (polyphonic pieces) has no ABC form here: write .musicxml, .mid, .wav or .png.")
    written = []
    for i, ((text, score), pairs) in enumerate(zip(items, targets)):
        if any(f != "abc" for f, _ in pairs):
            try:
                score = _score_of(text, score, kind)
            except MusicError as e:  # an unparseable tune kept on purpose (--keep-invalid): its text only
                warnings.warn(f"tune {i + 1} is not readable music ({e}): only its text is written", stacklevel=2)
                pairs = [(f, t) for f, t in pairs if f == "abc"]
        rec = record.with_(parameters={**record.parameters, "index": i}) if record and len(items) > 1 else record
        midi = None
        for fmt, target in pairs:
            if fmt == "abc":
                data = (abc_with_record(text.strip("\n"), rec) + "\n").encode()
            elif fmt == "musicxml":
                data = musicxml_bytes(_stream_of(text, score, kind), rec)
            elif fmt == "mid":
                data = score_to_midi(score, rec, program)
            elif fmt == "png":
                data = piano_roll_png(score, None, rec, signer)
            else:
                midi = midi or score_to_midi(score, None, program)
                clip = render_audio(midi, sample_rate, soundfont)
                data = encode_audio(clip, sample_rate, fmt, rec, signer, mark)
            _write(target, data)
            written.append(target)
    return written


def read_music_file(path: str | Path, tune: int = 1) -> tuple[Score, str | None, dict | None]:
    """(the notes, the tune's text for ABC (without the provenance line) else None, the provenance or None) of an
    .abc (tune number `tune`, from 1), .mid/.midi, .musicxml/.xml or .mxl file. UserError for a missing file or
    an unknown extension, MusicError for a file that does not read as music."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MUSIC_SUFFIXES:
        raise UserError(f"{path}: music files are {', '.join(MUSIC_SUFFIXES)}; got '{suffix or 'no extension'}'.")
    if not path.is_file():
        raise UserError(f"{path}: no such file.")
    data = path.read_bytes()
    fmt = music_format(data, suffix)
    if fmt is None:
        raise MusicError(f"{path}: not a {MUSIC_SUFFIXES[suffix].upper()} file")
    try:
        if fmt == "midi":
            return midi_to_score(data), None, _midi_provenance(data)
        if fmt == "abc":
            from genforge.music.abc import abc_score, split_tunes

            text = data.decode("utf-8", "replace")
            tunes = split_tunes(text) or [text]
            if not 1 <= tune <= len(tunes):
                raise UserError(f"{path} holds {len(tunes)} tune{'s' * (len(tunes) != 1)}; --tune {tune} is not "
                                f"one of them (1..{len(tunes)}).")
            chosen = tunes[tune - 1].strip("\n")
            provenance = _abc_provenance(chosen)
            chosen = abc_with_record(chosen, None)
            return abc_score(chosen), chosen, provenance
        from genforge.music.notes import score_from_stream

        converter = _music_extra("music21.converter")
        try:
            stream = converter.parse(str(path))
        except Exception as e:  # music21 raises many kinds on a broken file
            raise MusicError(f"does not parse as MusicXML ({type(e).__name__}: {str(e)[:120]})") from None
        score = score_from_stream(stream)
        if not score.notes:
            raise MusicError("holds no notes")
        return score, None, music_provenance(data, fmt)
    except MusicError as e:
        raise MusicError(f"{path}: {e}") from None
