"""Music metrics (evaluation/music_metrics.py): validity, MGEval features and overlap areas, the copied-phrase check,
the report; and the n-gram baseline's probabilities (benchmarks/music_baselines.py)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from genforge.evaluation import music_metrics as mm
from genforge.music.notes import Note, Score
from genforge.music.validity import _bar_problem, check_piece_text

JIG = "X:1\nR:jig\nM:6/8\nL:1/8\nK:D\n"
# a pickup, two parts with repeats, a first and second ending: short bars where the repeats join them
PICKUP_AND_ENDINGS = JIG + "A|d2d fed|cBA A2B|cde ded|c2B A2:|\n|:f|afd afd|gec e2f|1 afd ded|c2B A2:|2 afd dec|d3 d2|]"
REEL = "X:1\nR:reel\nM:4/4\nL:1/8\nK:G\n"
SPLIT_AT_REPEAT = REEL + "G2BG dGBG|ABcA B2AB:|:cBAG FGAB|cBAG A4|]"  # "AB" ends bar 2, its 6 quarters before :|


def melody(pitches, durations=None, metre="4/4", bar=4.0) -> Score:
    """A one-voice Score from pitches (and durations, default eighths), bars of `bar` quarter notes."""
    durations = durations if durations is not None else [0.5] * len(pitches)
    onsets = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    notes = [Note(float(t), float(d), int(p)) for t, d, p in zip(onsets, durations, pitches)]
    end = float(sum(durations))
    bars = [(b * bar, bar) for b in range(math.ceil(end / bar))]
    return Score(notes, metre, bars=bars)


def folk_like(rng: np.random.Generator, n: int = 48) -> Score:
    """A stepwise tune in G major, mostly eighths: stands in for a real folk melody."""
    scale = [55, 57, 59, 60, 62, 64, 66, 67, 69, 71, 72, 74, 76, 78, 79]
    i, pitches = 7, []
    for _ in range(n):
        i += int(rng.choice([-3, -2, -1, -1, 0, 1, 1, 2, 3]))
        i = abs(i) if i < 0 else min(i, 2 * (len(scale) - 1) - i)  # reflected at the ends, never stuck there
        pitches.append(scale[i])
    durations = rng.choice([0.5, 0.5, 0.5, 1.0, 0.25], size=n)
    return melody(pitches, durations)


def atonal(rng: np.random.Generator, n: int = 48) -> Score:
    """Chromatic leaps over four octaves in long notes: nothing like a folk tune."""
    return melody(rng.integers(36, 96, size=n), rng.choice([2.0, 3.0, 1.5], size=n))


# --------------------------------------------------------------------------------------------- validity


def test_validity_keeps_a_pickup_and_bars_split_at_repeats():
    for tune in (PICKUP_AND_ENDINGS, SPLIT_AT_REPEAT):
        v = mm.validity(tune, "abc")
        assert v == {"parses": True, "metre_ok": True, "reason": "ok"}, (tune, v)
        assert mm.is_valid(tune)


def test_validity_drops_a_bar_too_long_and_a_short_bar_mid_phrase():
    too_long = REEL + "G2BG dGBG|ABcA BcdefG|cBAG FGAB|G8|]"  # bar 2 holds 10 eighths in 4/4
    v = mm.validity(too_long)
    assert v["parses"] and not v["metre_ok"] and "bar 2 is longer" in v["reason"], v
    # an overflow that a short bar after it would make up: still the long bar that fails
    assert not mm.is_valid(REEL + "G2BG dGBG|ABcA BcdefG|cBAG FG|AB cBAG FGAB|G8|]")
    short = REEL + "G2BG dGBG|ABcA B2|cBAG FGAB|cBAG A4|]"  # 6 eighths, no repeat, nothing to make it up
    v = mm.validity(short)
    assert v["parses"] and not v["metre_ok"] and "bar 2 holds 3" in v["reason"], v


def test_validity_reads_the_double_repeat_shorthand_and_free_metre():
    # "::" is ABC's shorthand for ":|:"; music21 alone loses the note before it and would call the bar short
    assert mm.is_valid(JIG + "BAB EFE|BAG FED|BAB EFE|ABA AGF::EFE E2e|DED D2d|EFE EEe|ABA AGF:|")
    free = "X:1\nM:none\nL:1/8\nK:D\nABc d2 e|fga|b8|]"
    assert mm.validity(free) == {"parses": True, "metre_ok": True, "reason": "ok (no metre)"}


def test_validity_of_text_that_is_not_a_tune():
    v = mm.validity("X:1\nM:6/8\nL:1/8\nK:D\n")  # no notes
    assert v["parses"] is False and v["metre_ok"] is False and v["reason"]
    assert not mm.is_valid("not music at all")
    with pytest.raises(ValueError, match="kind"):
        mm.validity(JIG + "ABc|", "midi")


def test_bar_rule_on_bar_lengths():
    assert _bar_problem([0.5, 3, 3, 2.5], 3.0, set()) is None  # pickup and short last bar
    assert _bar_problem([3, 1, 2, 3, 3], 3.0, set()) is None  # a bar split in two
    assert "bar 2 holds 1" in _bar_problem([3, 1, 1, 3, 3], 3.0, set())  # the two halves miss a beat
    assert _bar_problem([3, 1, 1, 3, 3], 3.0, {1, 2}) is None  # unless beside a repeat
    assert "bar 3 is longer" in _bar_problem([3, 3, 3.5, 3], 3.0, {2, 3})  # even at a repeat


# --------------------------------------------------------------------------------------------- features


def test_features_of_a_scale():
    scale = melody([60, 62, 64, 65, 67, 69, 71, 72, 71, 69, 67, 65, 64, 62, 60, 60])  # C major in eighths, 2 bars
    f = mm.piece_features(scale)
    assert f["pitch_range"] == 12
    assert f["scale_consistency"] == 1.0
    assert f["note_density"] == 8.0
    # C four times, the six others twice: entropy of (4, 2, 2, 2, 2, 2, 2) / 16
    share = np.array([4, 2, 2, 2, 2, 2, 2]) / 16
    assert f["pitch_class_entropy"] == pytest.approx(float(-(share * np.log2(share)).sum()))
    ih = f["interval_histogram"]  # up: 5 tones, 2 semitones; down the same; one repeat
    assert ih[mm.INTERVAL_CLIP + 2] == ih[mm.INTERVAL_CLIP - 2] == pytest.approx(5 / 15)
    assert ih[mm.INTERVAL_CLIP + 1] == ih[mm.INTERVAL_CLIP - 1] == pytest.approx(2 / 15)
    assert ih[mm.INTERVAL_CLIP] == pytest.approx(1 / 15)
    assert f["rhythm_histogram"][mm.DURATIONS.index(0.5)] == 1.0
    chromatic = mm.piece_features(melody(list(range(60, 72))))
    assert chromatic["scale_consistency"] == pytest.approx(7 / 12)
    assert chromatic["pitch_class_entropy"] == pytest.approx(math.log2(12))
    leap = mm.piece_features(melody([40, 80, 40]))
    assert leap["interval_histogram"][0] == 0.5 and leap["interval_histogram"][-1] == 0.5  # clipped to +-12


def test_features_of_an_event_piece_use_every_voice():
    notes = [Note(0, 1, 72, 0), Note(1, 1, 74, 0), Note(0, 2, 48, 1), Note(2, 2, 43, 1)]
    s = Score(notes, "4/4", bars=[(0, 4)], voices=2)
    f = mm.piece_features(s, "events")
    assert f["pitch_range"] == 74 - 43 and f["note_density"] == 4
    # intervals within each voice (+2 soprano, -5 bass), never across voices
    assert f["interval_histogram"][mm.INTERVAL_CLIP + 2] == 0.5 and f["interval_histogram"][mm.INTERVAL_CLIP - 5] == 0.5
    assert mm.piece_features(s, "abc")["pitch_range"] == 2  # the ABC route reads the top voice only


# --------------------------------------------------------------------------------------------- overlap areas


def test_overlap_area_of_distance_samples():
    rng = np.random.default_rng(0)
    a, b = rng.normal(5, 1, 4000), rng.normal(5, 1, 4000)
    assert mm.overlap_area(a, b) > 0.93
    assert mm.overlap_area(a, rng.normal(12, 1, 4000)) < 0.01
    assert 0.55 < mm.overlap_area(a, rng.normal(6, 1, 4000)) < 0.75  # two unit normals 1 apart share 0.617
    assert mm.overlap_area(np.full(10, 2.0), np.full(10, 2.0)) == 1.0


def test_overlap_is_high_for_alike_sets_and_low_for_a_different_one():
    rng = np.random.default_rng(1)
    reference = mm.features([folk_like(rng) for _ in range(80)])
    alike = mm.features([folk_like(rng) for _ in range(80)])
    other = mm.features([atonal(rng) for _ in range(80)])
    itself = mm.overlap_areas(reference, reference)
    assert set(itself) == set(mm.FEATURES) and min(itself.values()) > 0.95
    same_kind = mm.overlap_areas(alike, reference)
    assert min(same_kind.values()) > 0.8, same_kind
    apart = mm.overlap_areas(other, reference)
    assert np.mean(list(apart.values())) < 0.25, apart
    for name in ("pitch_range", "rhythm_histogram", "scale_consistency"):
        assert apart[name] < 0.2, (name, apart[name])


# --------------------------------------------------------------------------------------------- memorization


def test_memorization_finds_a_transposed_copied_phrase_and_not_a_shuffled_one():
    rng = np.random.default_rng(2)
    training = [folk_like(rng, 64) for _ in range(300)]
    index = mm.phrase_index(training, 16)
    source = [n.pitch for n in training[123].notes][20:36]  # 16 notes
    filler = [int(p) for p in rng.integers(50, 80, size=30)]
    copied = melody(filler[:15] + [p + 5 for p in source] + filler[15:], [0.75] * 61)  # up a fourth, new rhythm
    near_miss = melody(filler[:15] + [p + 5 for p in source[:15]] + filler[15:])  # only 15 notes copied
    shuffled = melody([int(p) for p in rng.permutation([n.pitch for n in training[123].notes])])
    fresh = [folk_like(rng, 64) for _ in range(20)]
    out = mm.memorization([copied, near_miss, shuffled] + fresh, index)
    assert out["which"] == [0], out["which"]
    assert out["rate"] == pytest.approx(1 / 23) and out["n_notes"] == 16 and out["training_pieces"] == 300
    assert mm.memorization([near_miss], training, n_notes=15)["copied"] == 1  # a shorter run counts at 15
    assert mm.memorization(training[:5], index)["rate"] == 1.0  # a training piece copies itself


def test_memorization_on_abc_in_another_key():
    """The same phrase written in D and in G (a fourth higher): found through the notation, not just on Scores."""
    train = [JIG + "A|d2d fed|cBA A2B|cde ded|c2B A2:|\n|:f|afd afd|gec e2f|afd ded|c2B A2:|"]
    copy = JIG.replace("K:D", "K:G") + "d|g2g bag|fed d2e|fga gag|f2e d2:|"  # its first 18 notes in G
    other = REEL + "G2BG dGBG|ABcA B2AB|cBAG FGAB|cBAG A4|]"
    index = mm.phrase_index([check_piece_text(t, "abc")[1] for t in train], 16)
    got = mm.memorization([check_piece_text(t, "abc")[1] for t in (copy, other)], index)
    assert got["which"] == [0], got


def test_training_index_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path))
    texts = [PICKUP_AND_ENDINGS, SPLIT_AT_REPEAT]
    first = mm.training_index(texts, "abc", 8)
    assert len(list((tmp_path / "music").glob("phrases-*.npz"))) == 1
    monkeypatch.setattr(mm, "_scores", lambda *a: pytest.fail("parsed again instead of reading the cache"))
    again = mm.training_index(texts, "abc", 8)
    assert np.array_equal(first.hashes, again.hashes) and again.pieces == 2 and again.n_notes == 8


# --------------------------------------------------------------------------------------------- the report


def test_music_report(tmp_path, monkeypatch):
    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path))
    train = [PICKUP_AND_ENDINGS, SPLIT_AT_REPEAT, JIG + "dfa afd|cBA ABc|dfa afd|e3 e3|]",
             REEL + "DEGA B2GB|d2BG A2GA|BAGA B2AB|G8|]"]
    test = [JIG + "ABA AGF|EFE E2F|ABA AGF|E3 E3|]", REEL + "GABc d2ef|g2fe d2BG|ABcB AGFE|D8|]",
            JIG + "FAF GBG|FAF E2D|FAF GBG|A3 A3|]"]
    generated = [PICKUP_AND_ENDINGS, REEL + "G2BG dGBG|ABcA BcdefG|cBAG FGAB|G8|]", "X:1\nK:D\n"]
    r = mm.music_report(generated, test, train, "abc", n=10, n_notes=14)
    assert r["counts"] == {"generated": 3, "generated_parsed": 2, "test": 3, "test_parsed": 3, "train_floor": 2,
                           "train_memorization": 4}
    assert r["validity"] == pytest.approx(1 / 3) and r["parses"] == pytest.approx(2 / 3)
    assert r["validity_real_test"] == 1.0
    assert r["memorization"]["generated"] == 0.5  # the copied training tune, not the other
    assert r["memorization"]["real_test"] == 0.0
    assert set(r["overlap"]) == set(mm.FEATURES) | {"mean"} and 0 <= r["overlap"]["mean"] <= 1
    assert r["floor"]["mean"] is not None and r["overlap_vs_floor"] is not None


def test_subsample_is_deterministic_and_keeps_order():
    items = list(range(100))
    a, b = mm.subsample(items, 10, seed=3), mm.subsample(items, 10, seed=3)
    assert a == b and a == sorted(a) and len(set(a)) == 10
    assert mm.subsample(items, 10, seed=4) != a and mm.subsample(items, None) == items


# --------------------------------------------------------------------------------------------- baseline


def _baselines():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "music_baselines.py"
    spec = importlib.util.spec_from_file_location("music_baselines", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kneser_ney_baseline_is_a_distribution():
    mb = _baselines()
    text = (JIG + "A|d2d fed|cBA A2B|cde ded|c2B A2:|\n\n" + REEL + "G2BG dGBG|ABcA B2AB|cBAG FGAB|cBAG A4|]\n\n") * 3
    train, test, vocab = mb.encode(text, "X:1\nK:Em\nEFG|~")  # "~" never seen in training
    model = mb.KneserNey(train, 4, vocab)
    for context in ("d2d", "\nK:", "zzz"):
        ctx = mb.encode(text, context)[1]
        candidates = list(range(1, vocab)) + [mb.UNSEEN]
        p = [model.probabilities(np.concatenate([ctx, [c]]))[0] for c in candidates]
        assert sum(p) == pytest.approx(1.0, abs=1e-9), context
    p = model.probabilities(test)
    assert np.all(p > 0) and p[-1] < 1 / vocab  # the unseen "~" gets less than a uniform share
    seen = mb.ngram_bits(train, mb.encode(text, text[:200])[1], 4, vocab, int(train[text.index("\n")]))
    assert seen["bits_per_char"] < 1.0  # text the model has read is cheap


# --------------------------------------------------------------------------------------------- event pieces

CHORALE = ("M:4/4 K:0\n"
           "Bar Pos_12 V0 P72 D4 V1 P67 D4 V2 P64 D4 V3 P48 D4\n"
           "Bar Pos_0 V0 P74 D4 V1 P67 D4 V2 P65 D4 V3 P47 D4 Pos_4 V0 P76 D8 V1 P67 D8 V2 P64 D8 V3 P48 D8 "
           "Pos_12 V0 P74 D4 V1 P65 D4 V2 P62 D4 V3 P50 D4\n"
           "Bar Pos_0 V0 P72 D16 V1 P64 D16 V2 P60 D16 V3 P36 D16")


def test_validity_of_event_text():
    assert mm.validity(CHORALE, "events") == {"parses": True, "metre_ok": True, "reason": "ok"}
    v = mm.validity(CHORALE.replace("Pos_12 V0 P74", "Pos_19 V0 P74"), "events")  # a position beyond the bar
    assert v["parses"] is False and "Pos_19" in v["reason"], v
    assert not mm.is_valid("M:4/4 K:0\nBar Pos_0 V0 P60", "events")  # a note without its duration


def test_memorization_of_event_pieces_by_voice():
    from genforge.music.events import events_to_score

    rng = np.random.default_rng(5)

    def piece(bass, top=None):
        top = top if top is not None else [int(p) for p in rng.integers(65, 80, size=len(bass))]
        lines = ["M:4/4 K:0"]
        for b in range(0, len(bass), 4):
            words = ["Bar"]
            for k in range(b, min(b + 4, len(bass))):
                words += [f"Pos_{4 * (k - b)}", "V0", f"P{top[k]}", "D4", "V1", f"P{bass[k]}", "D4"]
            lines.append(" ".join(words))
        return "\n".join(lines)

    bass = [int(p) for p in rng.integers(40, 55, size=24)]
    train = [events_to_score(piece(bass))]
    copy = events_to_score(piece([p - 2 for p in bass]))  # the bass a tone lower, new tops
    fresh = events_to_score(piece([int(p) for p in rng.integers(40, 55, size=24)]))
    assert mm.memorization([copy, fresh], train, 16)["which"] == []  # the tops differ
    got = mm.memorization([copy, fresh], mm.phrase_index(train, 16, mm.LOWER_VOICES))
    assert got["which"] == [0] and got["voices"] == list(mm.LOWER_VOICES)
    # a bass line matches bass lines only: the same run in the top voice is not a copy of the bass
    on_top = events_to_score(piece([int(p) for p in rng.integers(40, 55, size=24)], [p + 24 for p in bass]))
    assert mm.memorization([on_top], mm.phrase_index(train, 16, mm.LOWER_VOICES))["copied"] == 0
    assert mm.memorization([on_top], mm.phrase_index(train, 16, (0, 1)))["copied"] == 0


def test_music_report_on_event_pieces(tmp_path, monkeypatch):
    from genforge.music.events import transpose_events

    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path))
    pieces = [transpose_events(CHORALE, k) for k in range(-5, 6)]
    r = mm.music_report(pieces[:3] + ["M:4/4 K:0\nBar Pos_0 V0"], pieces[3:6], pieces[6:], "events", n_notes=4)
    assert r["validity"] == 0.75 and r["validity_real_test"] == 1.0
    assert r["invalid_reasons"] == {"does not parse": 1}
    # every piece is the chorale transposed: each part's runs are a training piece's, whatever the key
    assert r["memorization"]["generated"] == 1.0 and r["memorization"]["lower_voices"] == {"generated": 1.0,
                                                                                           "real_test": 1.0}
    assert r["features"].startswith("all voices")
