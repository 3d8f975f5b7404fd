"""`Score`: the notes of a piece, the one form every renderer and metric reads.

A flat list of notes (onset and duration in quarter notes, MIDI pitch, voice) plus what the metrics need of the
notation: the metre, the key, the bars' starts. Read from a music21 stream (ABC, MusicXML, MIDI all parse to one)
with ties merged, so a held note is one note.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class MusicError(ValueError):
    """Text that is not readable music (a tune that does not parse, event text out of order)."""


@dataclass(frozen=True)
class Note:
    onset: float  # quarter notes from the start of the piece
    duration: float  # quarter notes
    pitch: int  # MIDI number, 60 = middle C
    voice: int = 0  # part index, 0 = the top part


@dataclass
class Score:
    notes: list[Note]
    time_signature: str | None = None  # "6/8"; None when the piece has none (free metre)
    key_sharps: int = 0  # -7..7, from the key signature
    mode: str | None = None  # "major", "minor", "dorian", ... when known
    qpm: float = 120.0  # tempo, quarter notes per minute
    bars: list[tuple[float, float]] = field(default_factory=list)  # (onset, length written) per bar, in quarters
    voices: int = 1
    title: str | None = None

    @property
    def end(self) -> float:
        """Quarter notes from the start to the end of the last note."""
        return max((n.onset + n.duration for n in self.notes), default=0.0)

    @property
    def seconds(self) -> float:
        return self.end * 60.0 / self.qpm

    def bar_quarters(self) -> float | None:
        """The length of a full bar in quarter notes, from the time signature."""
        if not self.time_signature:
            return None
        num, den = self.time_signature.split("/")
        return int(num) * 4.0 / int(den)

    def melody(self, voice: int = 0) -> list[Note]:
        """One voice's notes in time order; where it sounds several notes at once, the highest."""
        by_onset: dict[float, Note] = {}
        for n in self.notes:
            if n.voice == voice and (n.onset not in by_onset or n.pitch > by_onset[n.onset].pitch):
                by_onset[n.onset] = n
        return [by_onset[t] for t in sorted(by_onset)]

    def transposed(self, semitones: int) -> "Score":
        notes = [Note(n.onset, n.duration, n.pitch + semitones, n.voice) for n in self.notes]
        return Score(notes, self.time_signature, self.key_sharps, self.mode, self.qpm, list(self.bars), self.voices,
                     self.title)


def score_from_stream(stream) -> Score:
    """A music21 Score/Part/Stream as a `Score`: ties merged, chords split into notes, grace notes dropped
    (they take no time), parts numbered top-down as voices."""
    from music21 import meter, stream as m21stream, tempo
    from music21 import key as m21key

    parts = list(stream.parts) if hasattr(stream, "parts") and len(stream.parts) else [stream]
    notes: list[Note] = []
    for v, part in enumerate(parts):
        flat = part.stripTies().flatten()
        for el in flat.notes:
            if el.duration.isGrace or float(el.quarterLength) <= 0:
                continue
            pitches = el.pitches
            for p in pitches:
                notes.append(Note(float(el.offset), float(el.quarterLength), int(p.midi), v))
    notes.sort(key=lambda n: (n.onset, n.voice, -n.pitch))
    first = parts[0]
    # the first of each in reading order (music21 may insert odd time signatures for irregular bars later on)
    ts = first.recurse().getElementsByClass(meter.TimeSignature).first()
    ks = first.recurse().getElementsByClass(m21key.KeySignature).first()
    mm = first.recurse().getElementsByClass(tempo.MetronomeMark).first()
    bars = []
    for m in first.getElementsByClass(m21stream.Measure):
        bars.append((float(m.offset), float(m.duration.quarterLength)))
    mode = getattr(ks, "mode", None) if ks is not None else None
    qpm = 120.0
    if mm is not None and mm.getQuarterBPM():
        qpm = float(mm.getQuarterBPM())
    title = stream.metadata.title if getattr(stream, "metadata", None) is not None else None
    return Score(notes, ts.ratioString if ts is not None else None, int(ks.sharps) if ks is not None else 0, mode,
                 qpm, bars, len(parts), title)
