"""The note-event codec (music/events.py) and its tokenizer: exact round trips on real chorales, clear errors on
malformed text, transposition, and the tokenizer's save/load and streaming."""

from __future__ import annotations

import pytest

from genforge.errors import UserError
from genforge.music.events import (
    chorale_documents,
    events_to_score,
    events_to_stream,
    round_trip_failures,
    score_to_events,
    transpose_events,
    transpose_key,
)
from genforge.music.notes import MusicError, Note, Score
from genforge.tokenizers import (
    REPLACEMENT,
    StreamDecoder,
    load_tokenizer,
    tokenizer_from_json,
    train_tokenizer,
)

# 3/4 with a pickup and bars split at repeats; 4/4 without a pickup; a pickup opening on a rest; then one each
# of the kinds that are dropped: a 32nd note, five parts, a metre change, bars that fit no metre.
KEPT = ["bach/bwv269", "bach/bwv32.6", "bach/bwv56.5"]
DROPPED = {"bach/bwv432": "dropped_off_grid", "bach/bwv8.6": "dropped_not_four_parts",
           "bach/bwv362": "dropped_metre_change", "bach/bwv324": "dropped_irregular_bars"}


@pytest.fixture(scope="module")
def chorales():
    report: dict = {}
    docs = chorale_documents(report=report, names=KEPT + list(DROPPED) + [KEPT[0]])
    return docs, report


def test_chorale_sample_kept_dropped_and_counted(chorales):
    docs, report = chorales
    assert [name for name, _ in docs] == KEPT
    assert report["listed"] == 8 and report["chorales"] == 7 and report["kept"] == 3
    for reason in DROPPED.values():
        assert report[reason] == 1, reason


def test_round_trip_is_exact_on_chorales(chorales):
    docs, _ = chorales
    texts = [t for _, t in docs]
    assert round_trip_failures(texts) == []
    for text in texts:
        score = events_to_score(text)
        assert score.voices == 4 and len(score.notes) > 100
        assert score_to_events(score) == text


def test_chorale_text_shape(chorales):
    text = dict(chorales[0])["bach/bwv269"]
    lines = text.split("\n")
    assert lines[0] == "M:3/4 K:1"
    assert lines[1].startswith("Bar Pos_8 V0 ")  # a one-beat pickup sits on the third beat
    assert all(line.startswith("Bar") for line in lines[1:])
    score = events_to_score(text)
    assert score.bars[0] == (0.0, 1.0) and all(length == 3.0 for _, length in score.bars[1:-1])


def test_score_notes_survive_the_codec(chorales):
    from music21 import corpus

    from genforge.music.notes import score_from_stream

    original = score_from_stream(corpus.parse("bach/bwv32.6"))
    back = events_to_score(dict(chorales[0])["bach/bwv32.6"])
    key = lambda n: (n.onset, n.voice, -n.pitch, n.duration)
    assert sorted(original.notes, key=key) == sorted(back.notes, key=key)
    assert back.end == original.end and back.key_sharps == original.key_sharps


def test_musicxml_from_events_reads_back_to_the_same_events(chorales, tmp_path):
    from music21 import converter

    from genforge.music.notes import score_from_stream

    text = dict(chorales[0])["bach/bwv269"]
    path = tmp_path / "c.musicxml"
    events_to_stream(text).write("musicxml", fp=str(path))
    assert score_to_events(score_from_stream(converter.parse(str(path)))) == text


def _piece(notes, bars, metre="4/4"):
    return Score([Note(*n) for n in notes], metre, 0, None, 120.0, bars, 2)


def test_pickup_split_bar_and_held_note():
    # pickup of one beat, a bar split 3 + 1 at a repeat, a note held over a bar line, a short last bar
    bars = [(0.0, 1.0), (1.0, 4.0), (5.0, 3.0), (8.0, 1.0), (9.0, 3.0)]
    notes = [(0.0, 1.0, 67, 0), (1.0, 5.0, 72, 0), (1.0, 2.0, 48, 1), (6.0, 0.25, 71, 0), (6.25, 0.75, 69, 0),
             (9.0, 3.0, 67, 0), (9.0, 3.0, 43, 1)]
    text = score_to_events(_piece(notes, bars))
    assert text == ("M:4/4 K:0\n"
                    "Bar Pos_12 V0 P67 D4\n"
                    "Bar Pos_0 V0 P72 D20 V1 P48 D8\n"
                    "Bar Pos_4 V0 P71 D1 Pos_5 V0 P69 D3\n"
                    "Bar Pos_0 V0 P67 D12 V1 P43 D12")
    score = events_to_score(text)
    assert score.bars == [(0.0, 1.0), (1.0, 4.0), (5.0, 4.0), (9.0, 3.0)]
    assert sorted((n.onset, n.duration, n.pitch, n.voice) for n in score.notes) == sorted(notes)
    stream = events_to_stream(text)
    held = [n for n in stream.parts[0].recurse().notes if n.pitch.midi == 72]
    assert [n.tie.type for n in held] == ["start", "stop"]
    assert stream.parts[0].getElementsByClass("Measure").first().paddingLeft == 3.0


def test_off_grid_and_odd_bars_are_refused_or_quantised():
    triplet = _piece([(0.0, 1 / 3, 60, 0), (1 / 3, 2 / 3, 62, 0)], [(0.0, 4.0)])
    with pytest.raises(MusicError, match="off the sixteenth grid"):
        score_to_events(triplet)
    assert score_to_events(triplet, quantise=True) == "M:4/4 K:0\nBar Pos_0 V0 P60 D1 Pos_1 V0 P62 D3"
    with pytest.raises(MusicError, match="do not add up to whole bars"):
        score_to_events(_piece([(0.0, 1.0, 60, 0)], [(0.0, 4.0), (4.0, 3.0), (7.0, 3.0), (10.0, 4.0)]))
    with pytest.raises(MusicError, match="time signature"):
        score_to_events(_piece([(0.0, 1.0, 60, 0)], [], metre=None))


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("X:1\nBar Pos_0 V0 P60 D4", "not an event header"),
    ("M:4/4 K:9\nBar Pos_0 V0 P60 D4", "outside -7..7"),
    ("M:4/4 K:0\nPos_0 V0 P60 D4", "starts with 'Bar'"),
    ("M:4/4 K:0\nBar Pos_16 V0 P60 D4", "past the bar"),
    ("M:3/4 K:0\nBar Pos_4 V0 P60 D4 Pos_2 V0 P62 D2", "positions ascend"),
    ("M:4/4 K:0\nBar Pos_0 V1 P60 D4 V0 P64 D4", "voices ascend"),
    ("M:4/4 K:0\nBar Pos_0 V0 P60", "is not a note"),
    ("M:4/4 K:0\nBar Pos_0 V0 P60 D0", "at least 1"),
    ("M:4/4 K:0\nBar Pos_0 V0 P130 D4", "0..127"),
    ("M:4/4 K:0\nBar Pos_0 V0 P60 D4 Chord", "not an event word"),
    ("M:4/4 K:0\nBar V0 P60 D4", "out of place"),
    ("M:4/4 K:0\nBar Pos_0 Pos_4 V0 P60 D4", "has no notes"),
    ("M:4/4 K:0\nBar\nBar", "no notes"),
    ("M:4/4 K:0\nBar Pos_0 V0 P60 D4\n\nBar Pos_0 V0 P60 D4", "blank inside the piece"),
    ("M:4/4 K:0\nBar Pos_0 V0 P60 D4Bar Pos_0 V0 P62 D4", "'V0 P60 D4Bar' is not a note"),
])
def test_malformed_text_raises_a_clear_music_error(text, message):
    with pytest.raises(MusicError, match=message):
        events_to_score(text)


def test_error_names_the_line():
    with pytest.raises(MusicError, match="Line 3"):
        events_to_score("M:4/4 K:0\nBar Pos_0 V0 P60 D4\nBar Pos_0 V0 P60 D4 P62")


def test_transpose_events(chorales):
    text = dict(chorales[0])["bach/bwv269"]
    up = transpose_events(text, 2)
    assert up.split("\n")[0] == "M:3/4 K:3"  # G major up a tone is A major
    a, b = events_to_score(text), events_to_score(up)
    assert [n.pitch + 2 for n in a.notes] == [n.pitch for n in b.notes]
    assert [n.onset for n in a.notes] == [n.onset for n in b.notes]
    assert score_to_events(b) == up and transpose_events(up, -2) == text
    assert transpose_events(text, 0) == text
    assert transpose_events(text, 60) is None  # past MIDI 127
    low, high = min(n.pitch for n in a.notes), max(n.pitch for n in a.notes)
    assert transpose_events(text, 1, lowest=low + 1, highest=high + 1) is not None
    assert transpose_events(text, 1, lowest=low + 2) is None
    assert transpose_events(text, 1, highest=high) is None
    assert [transpose_key(0, k) for k in (7, 1, 2, -1, 6, 12)] == [1, -5, 2, 5, 6, 0]
    assert transpose_key(-2, 2) == 0  # B flat major up a tone is C major


def _corpus(chorales):
    return "".join(t + "\n\n" for _, t in chorales[0])


def test_event_tokenizer_round_trip_and_save_load(chorales, tmp_path):
    text = _corpus(chorales)
    tok = train_tokenizer("event", text)
    assert tok.kind == "event" and tok.unit == "event"
    assert set(tok.heads) == {"Bar", "M:3/4", "M:4/4"}
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) == len(text.split()) + text.count("\n")  # one id per word and per newline
    assert tok.count_units(text) == len(ids) and set(tok.units_per_token()) == {1}
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path)
    assert again.vocab_size == tok.vocab_size and again.encode(text) == ids
    assert tokenizer_from_json(tok.to_json()).decode(ids) == text


def test_event_tokenizer_streams_and_takes_any_text(chorales):
    text = _corpus(chorales)
    tok = train_tokenizer("event", text)
    stream = StreamDecoder(tok)
    assert "".join(stream.push(i) for i in tok.encode(text)) + stream.flush() == text
    ids = tok.encode("M:4/4 K:0\nBar Pos_0 V0 P200 D4")  # P200 was never seen
    assert tok.unk_id in ids and max(ids) < tok.vocab_size
    assert REPLACEMENT in tok.decode(ids)
    assert tok.encode("\n") == [tok.newline_id]


def test_event_tokenizer_refuses_bad_setups():
    with pytest.raises(UserError, match="vocab_size"):
        train_tokenizer("event", "M:4/4 K:0\nBar", vocab_size=512)
    with pytest.raises(UserError, match="without words"):
        train_tokenizer("event", "\n\n")
