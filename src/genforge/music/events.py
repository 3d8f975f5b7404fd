"""Note-event text: a polyphonic piece as words a language model reads one by one (REMI-like), and back.

The format (one piece; pieces in a corpus are joined by a blank line):

    M:4/4 K:-1
    Bar Pos_12 V0 P65 D4 V1 P60 D4 V2 P57 D4 V3 P53 D4
    Bar Pos_0 V0 P67 D8 V1 P62 D4 ...

- Header line: `M:<num>/<den> K:<sharps>`, the time signature and the key signature (-7..7, flats negative).
- One line per bar, starting with `Bar`. Bars are metric: every bar is a full bar of the time signature except a
  pickup (the first bar) and the last. A bar the notation splits in two (at a repeat sign, a common way of
  writing a chorale's phrase ends) is one bar here: splits are notation, not music, and leaving them out keeps
  every `Pos` on the same beat.
- `Pos_k`: an onset inside the bar, in sixteenths (k = 0 .. sixteenths per bar - 1), ascending along the line.
  A pickup's notes sit at the end of the bar, where they are sounded (in 4/4 a one-beat upbeat is `Pos_12`), so
  `Pos_k` always means the same beat; reading back, the pickup is as long as the bar from its first onset on.
- After each `Pos`, its notes as `V<voice> P<midi pitch> D<duration in sixteenths>`, voices ascending (0 = the
  top part), a voice's simultaneous notes highest first. A note held across a bar line is one note with its
  whole duration (`D20` = a quarter tied to a whole note); rests are the gaps between notes and are not written.

Everything is on the sixteenth grid, measured on music21's chorales: of the 350 distinct files its chorale list
names (371 entries), 2 four-part chorales hold a 32nd note and are dropped (a 32nd grid would double the
position and duration words for under 1% of the pieces). Kept: 320; dropped: 19 not in four parts, 2 with a
metre change, 2 off the grid, 6 whose bars fit no single metre, 1 harmonisation that repeats another's notes
exactly (it would sit on both sides of a split); `chorale_documents` reports these counts.
`score_to_events(..., quantise=True)` snaps a score (a MIDI file's) to the grid instead of refusing it.

The codec is exact on its own text: events -> score -> events gives the same text back, checked on all 320 kept
chorales. Score -> events -> score keeps every note and the metric bars, with two losses: silence before the
first note (a chorale opening on a rest) is not written, so the piece read back starts at its first note, and
a short last bar read back ends with its last note.
"""

from __future__ import annotations

import json
import re

from .notes import MusicError, Note, Score

CODEC_VERSION = 1
PER_QUARTER = 4  # grid steps per quarter note: sixteenths
_EPS = 1e-6
_METRE = re.compile(r"^M:(\d+)/(\d+)$")
_KEY = re.compile(r"^K:(-?\d+)$")
_WORD = re.compile(r"^(Pos_|V|P|D)(\d+)$")


def _ticks(quarters: float, what: str, quantise: bool) -> int:
    """Quarter notes as whole sixteenths; off the grid is an error unless quantising (then the nearest)."""
    t = quarters * PER_QUARTER
    if quantise:
        return round(t)
    if abs(t - round(t)) > _EPS:
        raise MusicError(f"{what} ({quarters:g} quarter notes) is off the sixteenth grid: the event text cannot "
                         "write it. Fix: quantise the piece (score_to_events(score, quantise=True)).")
    return round(t)


def _bar_ticks(time_signature: str | None) -> int:
    m = _METRE.match(f"M:{time_signature}") if time_signature else None
    if not m or int(m.group(1)) < 1 or int(m.group(2)) not in (1, 2, 4, 8, 16):
        raise MusicError(f"The piece's time signature {time_signature!r} cannot head event text: it needs a metre "
                         "like 4/4 or 3/4. Fix: give the score a time signature.")
    ticks = int(m.group(1)) * 4 * PER_QUARTER / int(m.group(2))
    if ticks != int(ticks):
        raise MusicError(f"A bar of {time_signature} is not a whole number of sixteenths.")
    return int(ticks)


def _grid_bars(score: Score, bar: int, quantise: bool) -> tuple[int, int]:
    """(pickup length in sixteenths, 0 if none; how many bars the notation spans), after merging split bars.
    Raises when the notated bars do not add up to whole bars of one metre (a metre change, an odd bar)."""
    lengths = [_ticks(length, "A bar's length", quantise) for _, length in score.bars]
    pickup = lengths[0] if lengths and 0 < lengths[0] < bar else 0
    count, acc = (1 if pickup else 0), 0
    for i, length in enumerate(lengths[1:] if pickup else lengths):
        acc += length
        if acc == bar:
            count, acc = count + 1, 0
        elif acc > bar:
            at = score.bars[i + (1 if pickup else 0)][0]
            raise MusicError(f"The bars around {at:g} quarter notes do not add up to whole bars of "
                             f"{score.time_signature} (a metre change or an irregular bar): the event text "
                             "has one metre per piece.")
    return pickup, count + (1 if acc else 0)


def score_to_events(score: Score, quantise: bool = False) -> str:
    """The piece as event text (no trailing newline). MusicError when it cannot be written: no time signature,
    off-grid notes (unless `quantise`), bars that do not fit one metre, a key signature past 7 accidentals."""
    bar = _bar_ticks(score.time_signature)
    if not -7 <= score.key_sharps <= 7:
        raise MusicError(f"Key signature of {score.key_sharps} sharps is outside -7..7.")
    if not score.notes:
        raise MusicError("The piece has no notes.")
    pickup, n_bars = _grid_bars(score, bar, quantise)
    shift = bar - pickup if pickup else 0  # sixteenths from the start of the first (metric) bar to the first note
    notes = []
    for n in score.notes:
        on = _ticks(n.onset, f"The onset of a note (pitch {n.pitch})", quantise)
        dur = _ticks(n.onset + n.duration, f"The end of a note (pitch {n.pitch})", quantise) - on
        if quantise:
            dur = max(dur, 1)
        if on < 0 or dur < 1:
            raise MusicError(f"A note at {n.onset:g} quarter notes has no place on the grid (onset or length).")
        if not 0 <= n.pitch <= 127 or n.voice < 0:
            raise MusicError(f"A note has pitch {n.pitch} or voice {n.voice} outside MIDI's 0..127 / voices >= 0.")
        notes.append((on + shift, n.voice, -n.pitch, dur))
    notes.sort()
    n_bars = max(n_bars, notes[-1][0] // bar + 1)
    lines = [[] for _ in range(n_bars)]
    last = None
    for t, voice, neg_pitch, dur in notes:
        b, pos = divmod(t, bar)
        if (b, pos) != last:
            lines[b].append(f"Pos_{pos}")
            last = (b, pos)
        lines[b] += [f"V{voice}", f"P{-neg_pitch}", f"D{dur}"]
    header = f"M:{score.time_signature} K:{score.key_sharps}"
    return "\n".join([header] + [" ".join(["Bar"] + words) for words in lines])


def _parse(text: str) -> tuple[str, int, int, list[list[tuple[int, int, int, int]]]]:
    """(time signature, key sharps, bar length in sixteenths, per bar [(pos, voice, pitch, duration)])."""
    lines = text.strip().split("\n")
    if not lines or not lines[0].strip():
        raise MusicError("The event text is empty. It starts with a header line like 'M:4/4 K:0'.")
    head = lines[0].split()
    m = _METRE.match(head[0]) if head else None
    k = _KEY.match(head[1]) if len(head) > 1 else None
    if len(head) != 2 or not m or not k:
        raise MusicError(f"Line 1 {lines[0][:40]!r} is not an event header: it must be 'M:<num>/<den> K:<sharps>' "
                         "like 'M:4/4 K:-1'.")
    metre, sharps = f"{m.group(1)}/{m.group(2)}", int(k.group(1))
    if not -7 <= sharps <= 7:
        raise MusicError(f"Line 1: key signature K:{sharps} is outside -7..7.")
    bar = _bar_ticks(metre)
    bars = []
    for i, line in enumerate(lines[1:], start=2):
        words = line.split()
        if not words:
            raise MusicError(f"Line {i} is blank inside the piece: a blank line ends a piece. Fix: split pieces "
                             "at blank lines and read each on its own.")
        if words[0] != "Bar":
            raise MusicError(f"Line {i} starts with {words[0][:20]!r}: every line after the header is a bar and "
                             "starts with 'Bar'.")
        bars.append(_parse_bar(words[1:], i, bar))
    if not any(bars):
        raise MusicError("The event text has no notes.")
    return metre, sharps, bar, bars


def _parse_bar(words: list[str], line: int, bar: int) -> list[tuple[int, int, int, int]]:
    notes: list[tuple[int, int, int, int]] = []
    pos, voice, j = None, -1, 0
    while j < len(words):
        m = _WORD.match(words[j])
        if not m:
            raise MusicError(f"Line {line}: {words[j][:20]!r} is not an event word (Pos_k, Vn, Pn, Dn).")
        kind, value = m.group(1), int(m.group(2))
        if kind == "Pos_":
            if value >= bar or (pos is not None and value <= pos):
                raise MusicError(f"Line {line}: Pos_{value} " + (f"is past the bar's {bar} sixteenths." if value >= bar
                                 else f"comes after Pos_{pos}: positions ascend along a bar."))
            if pos is not None and voice < 0:
                raise MusicError(f"Line {line}: Pos_{pos} has no notes.")
            pos, voice, j = value, -1, j + 1
            continue
        if kind != "V" or pos is None:
            raise MusicError(f"Line {line}: {words[j]!r} is out of place: a bar reads 'Pos_k' then notes "
                             "'V<voice> P<pitch> D<sixteenths>'.")
        triple = words[j:j + 3]
        ms = [_WORD.match(w) for w in triple[1:]]
        if len(triple) < 3 or not all(ms) or ms[0].group(1) != "P" or ms[1].group(1) != "D":
            raise MusicError(f"Line {line}: {' '.join(triple)!r} is not a note: it must be 'V<voice> P<pitch> "
                             "D<sixteenths>'.")
        pitch, dur = int(ms[0].group(2)), int(ms[1].group(2))
        if value < voice:
            raise MusicError(f"Line {line}: V{value} comes after V{voice} at Pos_{pos}: voices ascend.")
        if pitch > 127 or dur < 1:
            raise MusicError(f"Line {line}: P{pitch} D{dur}: pitch must be 0..127 and a duration at least 1.")
        notes.append((pos, value, pitch, dur))
        voice, j = value, j + 3
    if pos is not None and voice < 0:
        raise MusicError(f"Line {line}: Pos_{pos} has no notes.")
    return notes


def events_to_score(text: str) -> Score:
    """Event text as a `Score` (MusicError, naming the line, when it is not well-formed event text)."""
    metre, sharps, bar, bars = _parse(text)
    first = bars[0]
    pickup = bar - first[0][0] if first and first[0][0] > 0 else 0
    origin = -(bar - pickup) if pickup else 0  # sixteenths: where the first metric bar would start
    notes = [Note((origin + b * bar + pos) / PER_QUARTER, dur / PER_QUARTER, pitch, voice)
             for b, line in enumerate(bars) for pos, voice, pitch, dur in line]
    notes.sort(key=lambda n: (n.onset, n.voice, -n.pitch, n.duration))
    starts = [max(origin + b * bar, 0) for b in range(len(bars))]
    lengths = [pickup if (b == 0 and pickup) else bar for b in range(len(bars))]
    end = max(round((n.onset + n.duration) * PER_QUARTER) for n in notes) - starts[-1]
    if 0 < end < lengths[-1] and len(bars) > 1:
        lengths[-1] = end  # a short last bar (the complement of a pickup) ends with its last note
    return Score(notes, metre, sharps, None, 120.0,
                 [(s / PER_QUARTER, n / PER_QUARTER) for s, n in zip(starts, lengths)],
                 max(n.voice for n in notes) + 1, None)


def events_to_stream(text: str):
    """Event text as a music21 Score (one part per voice, measures as in the text, held notes tied across bar
    lines), for writing MusicXML. Where a voice sounds overlapping notes, the earlier is cut at the later's onset."""
    from music21 import chord, key, meter, note, stream, tie

    score = events_to_score(text)
    bar_q = score.bar_quarters()
    out = stream.Score()
    names = (["Soprano", "Alto", "Tenor", "Bass"] if score.voices == 4
             else [f"Voice {v + 1}" for v in range(score.voices)])
    for v in range(score.voices):
        groups: dict[float, list[Note]] = {}
        for n in score.notes:
            if n.voice == v:
                groups.setdefault(n.onset, []).append(n)
        onsets = sorted(groups)
        spans = [(t, min(max(n.onset + n.duration for n in groups[t]), nxt), [n.pitch for n in groups[t]])
                 for t, nxt in zip(onsets, onsets[1:] + [float("inf")])]
        part = stream.Part()
        part.partName = names[v]
        for i, (b0, blen) in enumerate(score.bars):
            m = stream.Measure(number=i if score.bars[0][1] < bar_q else i + 1)
            if i == 0:
                m.insert(0, meter.TimeSignature(score.time_signature))
                m.insert(0, key.KeySignature(score.key_sharps))
            cursor = 0.0
            for t, end, pitches in spans:
                a, z = max(t, b0), min(end, b0 + blen)
                if z - a <= _EPS:
                    continue
                if a - b0 - cursor > _EPS:
                    m.insert(cursor, note.Rest(quarterLength=a - b0 - cursor))
                el = note.Note(pitches[0]) if len(pitches) == 1 else chord.Chord(sorted(pitches))
                el.quarterLength = z - a
                if t < b0 or end > b0 + blen + _EPS:
                    el.tie = tie.Tie("continue" if t < b0 and end > b0 + blen + _EPS else "stop" if t < b0 else "start")
                m.insert(a - b0, el)
                cursor = z - b0
            if blen - cursor > _EPS:
                m.insert(cursor, note.Rest(quarterLength=blen - cursor))
            if i == 0 and blen < bar_q:
                m.paddingLeft = bar_q - blen
            elif i == len(score.bars) - 1 and blen < bar_q:
                m.paddingRight = bar_q - blen
            part.append(m)
        out.insert(0, part)
    return out


def transpose_key(sharps: int, semitones: int) -> int:
    """The key signature `semitones` higher: the same mode on the new tonic, written with 6 sharps to 5 flats."""
    if semitones % 12 == 0:
        return sharps
    r = (sharps + 7 * semitones) % 12  # a fifth up is one sharp more, and 7 fifths are a semitone
    return r if r <= 6 else r - 12


def transpose_events(text: str, semitones: int, lowest: int = 0, highest: int = 127) -> str | None:
    """The piece `semitones` higher, key signature included; None when a pitch would leave lowest..highest.
    Only the `K:` and `P` words change, so the text keeps its layout."""
    lines = text.split("\n")
    head = lines[0].split() if lines else []
    k = _KEY.match(head[1]) if len(head) == 2 else None
    if not k or not _METRE.match(head[0]):
        raise MusicError(f"Line 1 {lines[0][:40]!r} is not an event header 'M:<num>/<den> K:<sharps>'.")
    def pitch(word: str) -> int | None:
        m = _WORD.match(word)
        return int(m.group(2)) if m and m.group(1) == "P" else None

    pitches = [p + semitones for line in lines[1:] for p in map(pitch, line.split()) if p is not None]
    if any(p < lowest or p > highest for p in pitches):
        return None
    head[1] = f"K:{transpose_key(int(k.group(1)), semitones)}"
    shifted = [" ".join(w if pitch(w) is None else f"P{pitch(w) + semitones}" for w in line.split(" "))
               for line in lines[1:]]
    return "\n".join([" ".join(head)] + shifted)


def round_trip_failures(texts: list[str]) -> list[int]:
    """Indexes of texts that events -> score -> events does not give back unchanged (the codec's own check)."""
    return [i for i, t in enumerate(texts) if score_to_events(events_to_score(t)) != t]


def chorale_documents(report: dict | None = None, names: list[str] | None = None) -> list[tuple[str, str]]:
    """(corpus name, event text) for music21's four-part Bach chorales, each different piece once. Parsing the
    MusicXML takes minutes, so the result is cached under the genforge cache, keyed by the music21 and codec
    versions. `report` (if given) is filled with the counts kept and dropped, by reason. `names` (music21 corpus
    paths like 'bach/bwv269') reads just those, uncached (tests)."""
    import music21
    from music21 import corpus

    from genforge.cache import cache_dir

    path = cache_dir() / "music" / f"bach-chorales-events-m21-{music21.__version__}-codec{CODEC_VERSION}.json"
    if names is None and path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if report is not None:
                report.update(data["report"])
            return [(a, b) for a, b in data["docs"]]
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache is rebuilt
    listed = list(names) if names is not None else list(corpus.chorales.Iterator(returnType="filename"))
    todo = list(dict.fromkeys(listed))  # music21's chorale list names a few files more than once
    counts = {"listed": len(listed), "chorales": len(todo), "kept": 0, "dropped_unreadable": 0,
              "dropped_not_four_parts": 0, "dropped_metre_change": 0, "dropped_off_grid": 0,
              "dropped_irregular_bars": 0, "dropped_duplicate": 0}
    docs, seen = [], set()
    for name in todo:
        try:
            reason, text = _chorale(corpus.parse(name))
        except Exception:  # noqa: BLE001 - music21 raises many kinds on a file it cannot read
            reason, text = "dropped_unreadable", None
        if text is not None and text in seen:
            reason = "dropped_duplicate"  # the same harmonisation under two numbers: it would leak across a split
        counts[reason] += 1
        if reason == "kept":
            seen.add(text)
            docs.append((name, text))
    if names is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"report": counts, "docs": docs}), encoding="utf-8")
        tmp.replace(path)
    if report is not None:
        report.update(counts)
    return docs


def _chorale(stream) -> tuple[str, str | None]:
    """(reason, event text or None) for one parsed chorale."""
    from music21 import meter

    from .notes import score_from_stream

    if len(stream.parts) != 4:
        return "dropped_not_four_parts", None
    metres = {ts.ratioString for p in stream.parts for ts in p.recurse().getElementsByClass(meter.TimeSignature)}
    if len(metres) > 1:
        return "dropped_metre_change", None
    score = score_from_stream(stream)
    try:
        text = score_to_events(score)
    except MusicError as e:
        return ("dropped_off_grid" if "grid" in str(e) else "dropped_irregular_bars"), None
    return "kept", text
