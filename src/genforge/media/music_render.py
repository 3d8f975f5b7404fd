"""Music to sound and pictures: a `Score` as a standard MIDI file (and back), rendered to audio through a General
MIDI soundfont, and drawn as a piano roll. media/music.py writes these as files with their provenance.

Rendering goes MIDI -> symusic's synthesiser with the TimGM6mb.sf2 soundfont that the pretty_midi wheel ships
(found on disk, nothing downloaded). mido and symusic are the optional `music` extra, imported when needed; the
piano roll needs only Pillow and numpy.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import io
import json
import math
import re
from pathlib import Path

import numpy as np

from genforge.errors import UserError
from genforge.media.audio import provenance_fields
from genforge.media.images import _write, encode
from genforge.media.provenance import Record, Signer
from genforge.music.notes import MusicError, Note, Score

TPQ = 480  # MIDI ticks per quarter note: divisible by 3, 4, 5 and 16, so triplets and sixteenths land on ticks
VELOCITY = 80
RELEASE_S = 0.5  # rendered audio runs this long past the last note-off, so the last note dies away (not cut)
PEAK = 0.95  # a louder render is scaled down to this peak, so chords never clip
TAG = "genforge-provenance"
# General MIDI programs by default: flute (73) for a melody, string ensemble (48) for parts. Not the piano: symusic
# 0.5.9 plays TimGM6mb's piano, violin and many other presets off key (by up to two octaves; presets whose samples
# get their pitch from an instrument zone's root-key override; symusic issue #55). These two were measured in tune
# over MIDI 33..92 (tests/test_media_music.py checks the pitch of what the default renders).
MELODY_PROGRAM, PARTS_PROGRAM = 73, 48


def default_program(score: Score) -> int:
    return PARTS_PROGRAM if max([score.voices] + [n.voice + 1 for n in score.notes]) > 1 else MELODY_PROGRAM


def _music_extra(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise UserError(f"Music files need {name}: pip install 'genforge[music]'.") from e


def _record_json(record: Record) -> str:
    """The record as one line of ASCII JSON, in the shape `parse_xmp` returns, with no "--" (XML comments forbid
    it; JSON's \\u002d escape reads back the same)."""
    return json.dumps(provenance_fields(record), sort_keys=True, default=str).replace("--", "-\\u002d")


def _read_json(text: str) -> dict | None:
    try:
        found = json.loads(text)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


# ------------------------------------------------------------------------------------------------------ MIDI

_MAJOR = ["Cb", "Gb", "Db", "Ab", "Eb", "Bb", "F", "C", "G", "D", "A", "E", "B", "F#", "C#"]
_MINOR = ["Abm", "Ebm", "Bbm", "Fm", "Cm", "Gm", "Dm", "Am", "Em", "Bm", "F#m", "C#m", "G#m", "D#m", "A#m"]


def _channel(voice: int) -> int:
    """Voices on channels 0..15, skipping 9 (General MIDI's drum channel)."""
    c = voice % 15
    return c + 1 if c >= 9 else c


def score_to_midi(score: Score, record: Record | None = None, program: int | None = None,
                  velocity: int = VELOCITY) -> bytes:
    """A standard MIDI file (format 1): track 0 holds the tempo, metre, key, title and the provenance text event;
    then one track per voice, each on its own channel with General MIDI `program` (default: `default_program`)."""
    mido = _music_extra("mido")
    program = default_program(score) if program is None else program
    if not 0 <= program <= 127:
        raise UserError(f"program {program}: a General MIDI program is 0..127 (0 piano, 40 violin, 73 flute).")
    mid = mido.MidiFile(type=1, ticks_per_beat=TPQ)
    head = mido.MidiTrack()
    mid.tracks.append(head)
    if score.title:
        head.append(mido.MetaMessage("track_name", name=score.title.encode("ascii", "replace").decode()))
    head.append(mido.MetaMessage("set_tempo", tempo=round(60_000_000 / score.qpm)))
    if score.time_signature:
        num, den = (int(x) for x in score.time_signature.split("/"))
        if den & (den - 1) == 0 and 1 <= num <= 255:  # MIDI holds powers of two only
            head.append(mido.MetaMessage("time_signature", numerator=num, denominator=den))
    if -7 <= score.key_sharps <= 7:
        names = _MINOR if score.mode == "minor" else _MAJOR
        head.append(mido.MetaMessage("key_signature", key=names[score.key_sharps + 7]))
    if record is not None:
        head.append(mido.MetaMessage("text", text=f"{TAG} {_record_json(record)}"))
    for voice in range(max([score.voices] + [n.voice + 1 for n in score.notes])):
        track = mido.MidiTrack()
        mid.tracks.append(track)
        ch = _channel(voice)
        track.append(mido.MetaMessage("track_name", name=f"voice {voice}"))
        track.append(mido.Message("program_change", channel=ch, program=program))
        events = []  # (tick, 0 = off before 1 = on at the same tick, pitch)
        for n in score.notes:
            if n.voice != voice or not 0 <= n.pitch <= 127:
                continue
            start = round(n.onset * TPQ)
            end = max(start + 1, round((n.onset + n.duration) * TPQ))
            events += [(start, 1, n.pitch), (end, 0, n.pitch)]
        now = 0
        for tick, on, pitch in sorted(events):
            kind = "note_on" if on else "note_off"
            track.append(mido.Message(kind, channel=ch, note=pitch, velocity=velocity if on else 0, time=tick - now))
            now = tick
    buf = io.BytesIO()
    mid.save(file=buf)
    return buf.getvalue()


def _key_sharps(name: str) -> tuple[int, str]:
    for names, mode in ((_MAJOR, "major"), (_MINOR, "minor")):
        if name in names:
            return names.index(name) - 7, mode
    return 0, "major"


def midi_to_score(data: bytes) -> Score:
    """The notes of a MIDI file: one voice per (track, channel) that plays, in file order; the first tempo, metre
    and key (a piece that changes tempo plays at its first). MusicError when the bytes are not MIDI."""
    mido = _music_extra("mido")
    try:
        mid = mido.MidiFile(file=io.BytesIO(data))
    except Exception as e:  # mido raises OSError, EOFError, KeyError, ValueError on broken files
        raise MusicError(f"not a readable MIDI file ({type(e).__name__}: {str(e)[:120]})") from None
    tpq = mid.ticks_per_beat or TPQ
    tempo, metre, key, title = None, None, None, None
    voices: dict[tuple[int, int], int] = {}
    notes: list[Note] = []
    for t, track in enumerate(mid.tracks):
        now, sounding = 0, {}
        for msg in track:
            now += msg.time
            if msg.type == "set_tempo" and tempo is None:
                tempo = msg.tempo
            elif msg.type == "time_signature" and metre is None:
                metre = f"{msg.numerator}/{msg.denominator}"
            elif msg.type == "key_signature" and key is None:
                key = msg.key
            elif msg.type == "track_name" and t == 0 and title is None:
                title = msg.name or None
            elif msg.type in ("note_on", "note_off"):
                where = (t, msg.channel, msg.note)
                if msg.type == "note_on" and msg.velocity > 0:
                    sounding.setdefault(where, []).append(now)
                elif sounding.get(where):
                    start = sounding[where].pop(0)
                    voice = voices.setdefault((t, msg.channel), len(voices))
                    if now > start:
                        notes.append(Note(start / tpq, (now - start) / tpq, msg.note, voice))
    if not notes:
        raise MusicError("the MIDI file holds no notes")
    notes.sort(key=lambda n: (n.onset, n.voice, -n.pitch))
    sharps, mode = _key_sharps(key) if key else (0, None)
    score = Score(notes, metre, sharps, mode, 60_000_000 / tempo if tempo else 120.0, [], len(voices), title)
    bar = score.bar_quarters()
    if bar:
        score.bars = [(i * bar, bar) for i in range(max(1, math.ceil(score.end / bar - 1e-9)))]
    return score


def _midi_provenance(data: bytes) -> dict | None:
    """The record in a MIDI file's text events, found by scanning for FF 01 (no MIDI library needed)."""
    for m in re.finditer(rb"\xff\x01", data):
        pos, size = m.end(), 0
        for _ in range(4):  # variable-length quantity
            if pos >= len(data):
                return None
            byte = data[pos]
            size, pos = (size << 7) | (byte & 0x7F), pos + 1
            if not byte & 0x80:
                break
        text = data[pos:pos + size].decode("latin-1")
        if text.startswith(TAG + " "):
            return _read_json(text[len(TAG) + 1:])
    return None


# ------------------------------------------------------------------------------------------------- rendering

def default_soundfont() -> Path:
    """The General MIDI soundfont that pretty_midi ships (TimGM6mb.sf2, 6 MB), found without importing it."""
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or spec.origin is None:
        raise UserError("Rendering needs a General MIDI soundfont: pip install 'genforge[music]' (pretty_midi ships "
                        "one), or pass --soundfont FILE.sf2.")
    return Path(spec.origin).parent / "TimGM6mb.sf2"


def _check_soundfont(path: Path) -> Path:
    """A clear error before symusic sees a file it cannot use (a bad file must not reach the C++ loader)."""
    try:
        head = path.read_bytes()[:12] if path.is_file() else None
    except OSError as e:
        raise UserError(f"soundfont {path}: cannot be read ({e}). Fix: pass --soundfont with a readable .sf2 "
                        "file.") from None
    if head is None:
        raise UserError(f"soundfont {path}: no such file. Fix: pass --soundfont FILE.sf2 (a General MIDI "
                        "soundfont), or reinstall pretty_midi, whose wheel ships TimGM6mb.sf2.")
    if head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise UserError(f"soundfont {path}: not a SoundFont 2 file (no RIFF sfbk header). Fix: pass --soundfont "
                        "with an .sf2 or .sf3 file.")
    return path


@functools.lru_cache(maxsize=4)
def _synthesizer(path: str, sample_rate: int):
    symusic = _music_extra("symusic")
    return symusic.Synthesizer(path, sample_rate, 0)


def render_audio(music: Score | bytes, sample_rate: int = 22050, soundfont: str | Path | None = None,
                 program: int | None = None) -> np.ndarray:
    """A Score or MIDI bytes as float32 mono samples in [-1, 1]: the notes' length plus RELEASE_S, scaled down
    to PEAK only where the mix would clip. MIDI bytes play with the programs they name; a Score with `program`
    (default: `default_program`)."""
    if not 8000 <= int(sample_rate) <= 192_000:
        raise UserError(f"sample rate {sample_rate}: use 8000..192000 Hz (22050 is plenty for a soundfont).")
    symusic = _music_extra("symusic")
    path = _check_soundfont(Path(soundfont).expanduser() if soundfont else default_soundfont())
    data = music if isinstance(music, (bytes, bytearray)) else score_to_midi(music, program=program)
    try:
        score = symusic.Score.from_midi(bytes(data))
    except Exception as e:  # symusic raises RuntimeError on a malformed file
        raise MusicError(f"not a readable MIDI file ({str(e)[:120]})") from None
    if not any(len(t.notes) for t in score.tracks):
        raise MusicError("nothing to render: the music holds no notes")
    # the synthesiser stops at the last event, which would cut the last note's release off: a silent 1-tick note
    # (pitch 0, velocity 1, below hearing) RELEASE_S later keeps it running that long
    tail_tick = score.end() + max(1, round(RELEASE_S * score.tpq * _qps_at_end(score)))
    score.tracks[-1].notes.append(symusic.Note(tail_tick, 1, 0, 1))
    audio = np.asarray(_synthesizer(str(path), int(sample_rate)).render(score, stereo=False), np.float32)[0]
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > PEAK:
        audio *= PEAK / peak
    return audio


def _qps_at_end(score) -> float:
    """Quarter notes per second at the end of a symusic score (its last tempo)."""
    tempos = score.tempos
    qpm = tempos[-1].qpm if len(tempos) else 120.0
    return qpm / 60.0


# ------------------------------------------------------------------------------------------------ piano roll

ROW = 6  # pixels per semitone
LABEL_W = 30  # the left margin that holds the octave labels (C4 = MIDI 60)
PAD = 4
MAX_QUARTER_PX, MIN_QUARTER_PX, MAX_WIDTH = 24, 4, 3000
VOICE_COLOURS = [(31, 100, 200), (200, 50, 50), (40, 150, 60), (230, 130, 20), (140, 80, 190), (20, 160, 170),
                 (170, 120, 60), (210, 90, 160)]


def piano_roll_layout(score: Score) -> dict:
    """The geometry of a score's piano roll: pitch rows from the C at or below the lowest note to the C at or
    above the highest (so at least two labelled Cs), and up to 24 px per quarter note, fewer for long pieces."""
    if not score.notes:
        raise MusicError("nothing to draw: the music holds no notes")
    low = min(n.pitch for n in score.notes) // 12 * 12
    high = -(-max(n.pitch for n in score.notes) // 12) * 12
    high = max(high, low + 12)
    px = max(MIN_QUARTER_PX, min(MAX_QUARTER_PX, (MAX_WIDTH - LABEL_W - 2 * PAD) / max(score.end, 1e-9)))
    width = LABEL_W + math.ceil(score.end * px) + 2 * PAD
    height = (high - low + 1) * ROW + 2 * PAD
    return {"low": low, "high": high, "quarter_px": px, "width": width, "height": height}


def piano_roll(score: Score) -> np.ndarray:
    """The piano roll as uint8 (H, W, 3): time across, pitch up, one colour per voice, grey bar lines, shaded
    rows for the black keys and a label at every C."""
    from PIL import Image, ImageDraw, ImageFont

    g = piano_roll_layout(score)
    low, high, px = g["low"], g["high"], g["quarter_px"]
    img = Image.new("RGB", (g["width"], g["height"]), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    x0, right = LABEL_W + PAD, g["width"] - PAD

    def row_top(pitch: int) -> int:
        return PAD + (high - pitch) * ROW

    for pitch in range(low, high + 1):
        if pitch % 12 in (1, 3, 6, 8, 10):
            draw.rectangle([x0, row_top(pitch), right - 1, row_top(pitch) + ROW - 1], fill=(238, 238, 242))
        if pitch % 12 == 0:
            y = row_top(pitch) + ROW - 1
            draw.line([x0, y, right - 1, y], fill=(190, 190, 200))
    bars = score.bars or ([(i * score.bar_quarters(), score.bar_quarters())
                           for i in range(math.ceil(score.end / score.bar_quarters()))] if score.bar_quarters() else [])
    for onset, _ in list(bars) + [(score.end, 0)]:
        x = x0 + round(onset * px)
        draw.line([x, PAD, x, g["height"] - PAD - 1], fill=(150, 150, 150))
    font = ImageFont.load_default()
    for pitch in range(low, high + 1, 12):
        draw.text((2, row_top(pitch) + ROW // 2), f"C{pitch // 12 - 1}", fill=(60, 60, 60), font=font, anchor="lm")
    for n in score.notes:
        colour = VOICE_COLOURS[n.voice % len(VOICE_COLOURS)]
        a = x0 + round(n.onset * px)
        b = max(a + 1, x0 + round((n.onset + n.duration) * px) - 1)
        y = row_top(n.pitch)
        draw.rectangle([a, y, b, y + ROW - 2], fill=colour, outline=tuple(c // 2 for c in colour))
    return np.asarray(img, np.uint8)


def piano_roll_png(score: Score, path: str | Path | None = None, record: Record | None = None,
                   signer: Signer | None = None) -> bytes:
    """The piano roll as PNG bytes with the record as XMP (and C2PA with a signer); written to `path` if given."""
    data = encode(piano_roll(score), "PNG", record, signer)
    if path is not None:
        _write(Path(path), data)
    return data
