"""Music corpora and composing: ABC normal form, the split by tune, the LM on music, pieces checked and dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genforge.data.music import (ABC_COLLECTIONS, clean_abc_texts, held_out, is_music_dataset, load_music_corpus,
                                 split_pieces)
from genforge.errors import UserError
from genforge.music.abc import header_of, normalise_tune, prompt_header, split_tunes
from genforge.music.compose import Composer, Piece

music21 = pytest.importorskip("music21")  # the music extra is part of the test extra: present in CI
CORPUS = Path(music21.__file__).parent / "corpus"


def oneill_tunes(n: int) -> list[str]:
    """The first n raw tunes of O'Neill's 1850 (music21's corpus)."""
    raw = []
    for path in sorted((CORPUS / "oneills1850").glob("*.abc")):
        raw += split_tunes(path.read_text(encoding="utf-8"))
        if len(raw) >= n:
            break
    return raw[:n]


def test_normal_form_keeps_the_music_and_drops_free_text():
    raw = ("X: 17\nT: The Title\nZ: someone\nR:Reel\nM: 4/4\nK: Dmix % a comment\n% a comment line\n"
           "|:A2 AB c2 BA|G2 GA B2 AG:|\nw: some words\n\nX:18\n")
    tune, why = normalise_tune(split_tunes(raw)[0])
    assert why == "ok"
    assert tune == "X:1\nR:reel\nM:4/4\nL:1/8\nK:Dmix\n|:A2 AB c2 BA|G2 GA B2 AG:|"  # L: written out (ABC's default)
    assert normalise_tune("X:1\nT:no key\nABC|\n")[1] == "no_key"
    assert normalise_tune("X:1\nM:4/4\nK:C\nV:1\nCDEF|\n")[1] == "multivoice"
    assert header_of(tune) == {"X": "1", "R": "reel", "M": "4/4", "L": "1/8", "K": "Dmix"}


def test_a_header_prompt_in_any_order_becomes_the_tune_start_the_model_learnt():
    assert prompt_header("M:6/8\\nK:D\\n") == "X:1\nM:6/8\nL:1/8\nK:D\n"  # a shell's literal \n too
    assert prompt_header("K:Dmix\nR:Reel\nM:2/4") == "X:1\nR:reel\nM:2/4\nL:1/16\nK:Dmix\n"  # 2/4: L defaults to 1/16
    assert prompt_header("M:6/8") == "X:1\nM:6/8\n"  # no K: the model writes the rest of the header
    assert prompt_header("") == "X:1\n"


def test_cleaning_counts_what_it_drops_and_keeps_only_tunes_music21_reads():
    good = oneill_tunes(6)
    texts = [("a", "\n".join(good[:3])), ("b", good[3] + "\n" + good[3]),  # b: the same tune twice
             ("c", "X:1\nT:broken\nM:4/4\nL:1/8\nK:C\n|: [[[ (((\n"), ("d", "X:1\nT:no key\nABC|\n")]
    kept, report = clean_abc_texts(texts, workers=1)
    assert report["duplicates"] == 1 and report["dropped_no_key"] == 1
    assert report["kept"] == len(kept) == 4
    assert report["tunes_found"] == 3 + 2 + 1 + 1
    assert all(t.startswith("X:1\n") for _, t in kept)
    assert report["dropped_unparseable"] + report["kept"] + report["duplicates"] + report["dropped_no_key"] == 7


def test_the_split_is_by_tune_deterministic_and_keeps_duplicates_on_one_side():
    tunes = [f"X:1\nM:4/4\nL:1/8\nK:C\n{'CDEF' * (i % 7 + 1)}|G{i}|" for i in range(400)]
    train, test = split_pieces(tunes + tunes[:50], 0.1)  # 50 tunes appear twice
    assert not set(train) & set(test)
    assert 20 < len(set(test)) < 70  # about a tenth
    assert split_pieces(tunes, 0.1) == split_pieces(list(tunes), 0.1)
    assert all(held_out(t, 0.1) for t in test)


def test_a_corpus_collection_splits_with_no_tune_on_both_sides():
    corpus = load_music_corpus("folk-abc:miscFolk", 0.1)
    assert corpus.kind == "abc" and corpus.train and corpus.test
    assert not set(corpus.train) & set(corpus.test)
    assert corpus.report["kept"] == len(corpus.train) + len(corpus.test)
    assert "miscFolk" in corpus.licences
    with pytest.raises(UserError, match="collection"):
        load_music_corpus("folk-abc:nosuch")


def test_folders_of_music_are_recognised(tmp_path):
    (tmp_path / "tunes").mkdir()
    (tmp_path / "tunes" / "a.abc").write_text("\n".join(oneill_tunes(30)), encoding="utf-8")
    assert is_music_dataset(f"folder:{tmp_path / 'tunes'}")
    assert not is_music_dataset(f"folder:{tmp_path}/nothing")
    assert is_music_dataset("folk-abc") and is_music_dataset("bach-chorales") and not is_music_dataset("mnist")
    corpus = load_music_corpus(f"folder:{tmp_path / 'tunes'}", 0.2)
    assert corpus.kind == "abc" and len(corpus.train) + len(corpus.test) == corpus.report["kept"] > 20
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.mid").write_bytes(b"not midi")
    with pytest.raises(UserError, match="tokenizer=event"):
        load_music_corpus(f"folder:{tmp_path / 'empty'}", 0.1, "char")


class ScriptedComposer(Composer):
    """The real composing logic over a text model that writes given continuations (ended by the blank line, or
    cut off by the token limit when the text has none)."""

    def __init__(self, outputs: list[str]):
        self.meta, self.outputs = {"data": {"music": {"kind": "abc"}}}, list(outputs)

    def jobs(self, prompts, max_new_tokens, temperature, top_k, top_p, seed, stop, mark=True):
        assert mark is False and stop == ["\n\n"]  # never the text mark; a piece ends at a blank line
        from genforge.text_jobs import TextJob
        return [TextJob(p, max_new_tokens, temperature, top_k, top_p, stop) for p in prompts]

    def run(self, jobs):
        texts = [self.outputs.pop(0) for _ in jobs]
        for job, text in zip(jobs, texts):
            job.finish_reason = "stop" if "\n\n" in text else "length"
        yield [t.split("\n\n")[0] for t in texts]


def test_compose_keeps_valid_tunes_and_drops_and_counts_the_rest():
    good = "|:D2 FA d2 fd|e2 ge c2 ec:|\n\n"
    unparseable = "|: [[[ (((\n\n"
    too_long_bars = "D2 FA d2 fd e2 ge c2 ec|D2 FA d2 fd e2 ge c2 ec|D2 FA d2 fd e2 ge c2 ec|D2 FA d2 fd e2|\n\n"
    cut_off = "|:D2 FA d2 fd|e2 ge"
    gen = ScriptedComposer([good, unparseable, too_long_bars, cut_off, good, good])
    pieces, counts = gen.compose("M:4/4\nK:D", n=3, seed=1)
    assert [p.text for p in pieces] == ["X:1\nM:4/4\nL:1/8\nK:D\n|:D2 FA d2 fd|e2 ge c2 ec:|"] * 3
    assert counts["drawn"] == 6 and counts["kept"] == 3 and counts["invalid"] == 3 and counts["incomplete"] == 1
    assert sum(counts["reasons"].values()) == 3
    assert all(p.valid and p.kind == "abc" for p in pieces)
    assert pieces[0].score().time_signature == "4/4"

    keep = ScriptedComposer([good, unparseable])
    pieces, counts = keep.compose("M:4/4\nK:D", n=2, keep_invalid=True)
    assert [p.valid for p in pieces] == [True, False] and counts["invalid"] == 1


def test_a_piece_gives_its_notes_and_a_music21_stream():
    p = Piece("X:1\nM:6/8\nL:1/8\nK:G\n|:GAB cde|d3 B3:|", "abc", True, "ok")
    score = p.score()
    assert [n.pitch for n in score.notes[:3]] == [67, 69, 71] and score.time_signature == "6/8"
    assert len(p.stream().flatten().notes) == 8


def tiny_oneill_run(tmp_path: Path, tunes: int, train_overrides: list[str]) -> Path:
    """A 1-layer, 32-wide char GPT of the folk-abc-gpt preset on the first O'Neill tunes."""
    from genforge.training import apply_overrides, read_raw, train, validate

    folder = tmp_path / "tunes"
    folder.mkdir()
    (folder / "oneill.abc").write_text("\n".join(oneill_tunes(tunes)), encoding="utf-8")
    raw = apply_overrides(read_raw("folk-abc-gpt"), [
        f"data.dataset=folder:{folder}", "data.val_fraction=0.2", "model.n_layer=1", "model.n_embd=32",
        "model.n_head=2", "model.block_size=32", "train.budget_minutes=null", "train.mixed_precision=no",
        *train_overrides])
    return train(validate(raw), tmp_path / "run", progress=False).run_dir


def test_the_language_model_trains_on_music_and_composes(tmp_path):
    import genforge

    run = tiny_oneill_run(tmp_path, 40, ["train.max_steps=3", "train.batch_size=2", "train.eval_every=3",
                                         "train.eval_samples=100", "train.checkpoint_every=3", "train.sample_every=3"])
    meta = json.loads((run / "config.json").read_text())
    music = meta["data"]["music"]
    assert music["kind"] == "abc" and music["licences"] and music["train_pieces"] + music["test_pieces"] > 30
    sample = next(run.glob("samples/*.txt")).read_text()
    assert sample.startswith("X:1\n")  # training samples start a tune
    gen = genforge.load(run, precision="no")
    assert gen.modality == "music" and gen.music_kind == "abc"
    pieces, counts = gen.compose("M:6/8\nK:D", n=2, max_new_tokens=40, seed=0, keep_invalid=True)
    assert len(pieces) == 2 and all(p.text.startswith("X:1\nM:6/8\nL:1/8\nK:D\n") for p in pieces)
    again, _ = gen.compose("M:6/8\nK:D", n=2, max_new_tokens=40, seed=0, keep_invalid=True)
    assert [p.text for p in again] == [p.text for p in pieces]  # the same seed, the same tunes
    assert counts["drawn"] == 2


def test_music_data_errors_name_the_fix(tmp_path):
    from genforge.training import apply_overrides, read_raw, train, validate

    raw = apply_overrides(read_raw("shakespeare-char-gpt-small"), ["data.tokenizer=event", "train.max_steps=1"])
    with pytest.raises(UserError, match="not a music dataset"):
        train(validate(raw), tmp_path / "r", progress=False)
    assert set(ABC_COLLECTIONS) >= {"essenFolksong", "oneills1850"}


def test_genforge_eval_scores_a_music_run(tmp_path):
    from genforge.evaluation import evaluate_run

    run = tiny_oneill_run(tmp_path, 60, ["train.max_steps=30", "train.batch_size=8", "train.eval_every=null",
                                         "train.checkpoint_every=30", "train.sample_every=1000", "train.lr=3e-3"])
    report = evaluate_run(run, n=6, seed=0, write=True)
    m = report["metrics"]
    assert 2.0 < m["bits_per_char"] < 7.0  # a 30-step model: far from good, far from uniform over ~80 symbols
    assert m["pieces"] == 6 and 0.0 <= m["validity"] <= 1.0 and 0.0 <= m["complete"] <= 1.0
    compose = report["details"]["compose"]
    assert compose["drawn"] == 6 and compose["invalid"] == round(6 * (1 - m["validity"]))
    assert (run / "eval.json").is_file() and report["details"]["licences"]


def test_a_text_holding_two_tunes_is_not_one_valid_tune():
    from genforge.music.validity import validity

    v = validity("X:1\nM:6/8\nL:1/8\nK:D\n|D3 A3|F3 D3|]\nX:2\nM:6/8\nK:D\n|D3 A3|", "abc")
    assert not v["parses"] and "more than one tune" in v["reason"]


def test_data_info_shows_a_music_corpus_split_and_licences():
    from typer.testing import CliRunner

    from genforge.cli import app

    r = CliRunner().invoke(app, ["data", "info", "folk-abc:miscFolk"])
    assert r.exit_code == 0, r.output
    assert "tunes" in r.output and "characters" in r.output and "licence" in r.output and "Campin" in r.output


class ScriptedEvents(Composer):
    """An event model whose first two words after a blank line are scripted (a bar as often as a header), then
    a fixed one-bar piece in 4/4."""

    def __init__(self, openings: list[str]):
        self.meta, self.openings, self.calls = {"data": {"music": {"kind": "events"}}}, list(openings), []

    def jobs(self, prompts, max_new_tokens, temperature, top_k, top_p, seed, stop, mark=True):
        from genforge.text_jobs import TextJob
        self.calls.append((list(prompts), max_new_tokens))
        return [TextJob(p, max_new_tokens, temperature, top_k, top_p, stop) for p in prompts]

    def run(self, jobs):
        if jobs[0].max_new_tokens == 2:  # the header draw
            yield [self.openings.pop(0) for _ in jobs]
            return
        for job in jobs:
            job.finish_reason = "stop"
        yield ["Bar Pos_0 V0 P60 D4 Pos_12 V0 P62 D4" for _ in jobs]  # Pos_12: past a 3/4 bar's end


def test_an_event_piece_starts_at_a_header_drawn_from_the_model():
    gen = ScriptedEvents(["Bar Pos_0", "M:3/4 K:1", "V0 P60", "M:4/4 K:-2"] + ["Bar Pos_4"] * 4 + ["M:4/4 K:0"] * 4)
    pieces, counts = gen.compose(None, n=2, seed=0)
    # the draws that are not headers are rejected; the 3/4 header fails its 16-sixteenth bar, so it is redrawn
    assert [p.text for p in pieces] == [f"M:4/4 K:{k}\nBar Pos_0 V0 P60 D4 Pos_12 V0 P62 D4" for k in (-2, 0)]
    assert counts["drawn"] == 3 and counts["invalid"] == 1
    assert gen.calls[0] == (["\n\n"] * 8, 2)  # four draws per wanted piece, after the blank line a piece follows
    given = ScriptedEvents([])
    pieces, _ = given.compose("M:4/4 K:0", n=1, seed=0)  # a header in the prompt: nothing drawn
    assert pieces[0].text.startswith("M:4/4 K:0") and len(given.calls) == 1


def test_a_letter_that_is_no_note_fails_validity_though_music21_reads_it_as_c():
    from genforge.music.abc import parse_abc
    from genforge.music.validity import validity

    tune = "X:1\nM:6/8\nL:1/8\nK:D\n|dAB cAF|GAB r3|"
    assert str(list(parse_abc(tune).flatten().notes)[-1].pitch) == "C"  # music21: the r is a C, with a warning
    v = validity(tune, "abc")
    assert not v["parses"] and "not ABC" in v["reason"] and " r3" in v["reason"]


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_abc_tokens_round_trip_on_the_training_tunes(kind):
    from genforge.tokenizers import train_tokenizer

    corpus = load_music_corpus("folk-abc:miscFolk", 0.1)
    text = "".join(t + "\n\n" for t in corpus.train)
    tok = train_tokenizer(kind, text, 300 if kind == "bpe" else None)
    assert all(tok.decode(tok.encode(t)) == t for t in corpus.train)
    assert tok.decode(tok.encode(text)) == text
