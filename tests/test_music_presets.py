"""Every music preset trains a few steps and composes; `genforge sample` of a music run writes its files; the
event route reads a folder of MIDI files and augments it by transposition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import genforge
from genforge.cli import app
from genforge.training import apply_overrides, read_raw, train, validate

music21 = pytest.importorskip("music21")  # the music extra is part of the test extra: present in CI
TINY = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.hidden=32", "model.block_size=32",
        "train.budget_minutes=null", "train.max_steps=2", "train.batch_size=2", "train.eval_every=2",
        "train.eval_samples=100", "train.checkpoint_every=2", "train.sample_every=2", "train.mixed_precision=no"]


@pytest.fixture(scope="module")
def abc_folder(tmp_path_factory):
    from test_music_data import oneill_tunes

    folder = tmp_path_factory.mktemp("abc") / "tunes"
    folder.mkdir()
    (folder / "oneill.abc").write_text("\n".join(oneill_tunes(40)), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def midi_folder(tmp_path_factory):
    """Four Bach chorales from music21's corpus, written as MIDI files (what a user's own folder holds)."""
    from music21 import corpus

    folder = tmp_path_factory.mktemp("midi") / "chorales"
    folder.mkdir()
    for name in ("bwv269", "bwv347", "bwv153.1", "bwv86.6"):
        corpus.parse(f"bach/{name}").write("midi", fp=str(folder / f"{name}.mid"))
    return folder


@pytest.mark.parametrize("preset", ["folk-abc-gpt", "folk-abc-lstm", "folk-abc-lstm-gpu", "bach-chorales-gpt"])
def test_every_music_preset_trains_a_few_steps_and_composes(preset, abc_folder, midi_folder, tmp_path):
    events = preset.startswith("bach")
    data = [f"data.dataset=folder:{midi_folder if events else abc_folder}", "data.val_fraction=0.25"]
    if events:
        data.append("data.music.transpose=1")
    raw = apply_overrides(read_raw(preset), data + TINY)
    run = train(validate(raw), tmp_path / "run", progress=False).run_dir
    music = json.loads((run / "config.json").read_text())["data"]["music"]
    assert music["kind"] == ("events" if events else "abc")
    if events:  # each training piece and its copies a semitone down and up
        assert music["train_pieces_augmented"] == 3 * music["train_pieces"]
    gen = genforge.load(run, precision="no")
    pieces, counts = gen.compose(None, n=2, max_new_tokens=24, seed=0, keep_invalid=True)
    assert len(pieces) == 2 and counts["drawn"] == 2
    assert all(not p.valid for p in pieces)  # 24 tokens of a 2-step model: no piece ends, none is kept
    assert all(p.reason.startswith("incomplete") for p in pieces)


@pytest.fixture(scope="module")
def simple_run(tmp_path_factory):
    return train_simple_run(tmp_path_factory.mktemp("simple"))


def train_simple_run(base: Path) -> Path:
    """A tiny ABC GPT on tunes of dotted quarters (`D3 A3|`): counting to 3 is what a char model of this size
    learns in 120 steps, so its tunes are valid at temperatures up to 0.5 (4-bar tunes of eighths are not).
    test_export.py exports it."""
    import random

    rng = random.Random(0)
    tunes = [f"X:{i + 1}\nM:6/8\nL:1/8\nK:D\n|" + "|".join(" ".join(rng.choice("DFAd") + "3" for _ in range(2))
                                                         for _ in range(4)) + "|]\n" for i in range(60)]
    (base / "tunes").mkdir()
    (base / "tunes" / "t.abc").write_text("\n".join(tunes), encoding="utf-8")
    raw = apply_overrides(read_raw("folk-abc-gpt"), [
        f"data.dataset=folder:{base / 'tunes'}", "data.val_fraction=0.1", "model.n_layer=1", "model.n_embd=48",
        "model.n_head=2", "model.block_size=64", "train.budget_minutes=null", "train.max_steps=120",
        "train.batch_size=16", "train.eval_every=null", "train.checkpoint_every=120", "train.sample_every=1000",
        "train.mixed_precision=no", "train.seed=1"])
    return train(validate(raw), base / "run", progress=False).run_dir


def test_genforge_sample_writes_tunes_by_extension_and_counts_the_dropped(simple_run, tmp_path):
    run = simple_run
    out = tmp_path / "tunes"
    r = CliRunner().invoke(app, ["sample", str(run), "--prompt", "M:6/8\\nK:D", "--n", "2", "--seed", "3",
                                 "--temperature", "0.5", "--max-new-tokens", "150", "--out", f"{out}/"])
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["tune-000.abc", "tune-000.mid", "tune-000.png", "tune-000.wav",
                     "tune-001.abc", "tune-001.mid", "tune-001.png", "tune-001.wav"]
    abc = (out / "tune-000.abc").read_text()
    assert abc.startswith("X:1\n%genforge-provenance") and "\nM:6/8\nL:1/8\nK:D\n" in abc
    r = CliRunner().invoke(app, ["verify", str(out / "tune-000.mid")])
    assert r.exit_code == 0 and "generated" in r.output, r.output
    r = CliRunner().invoke(app, ["sample", str(run), "--n", "1", "--seed", "3", "--out", str(tmp_path / "one.mid")])
    assert r.exit_code == 0 and (tmp_path / "one.mid").read_bytes()[:4] == b"MThd", r.output
    r = CliRunner().invoke(app, ["sample", str(run), "--label", "3", "--out", str(tmp_path / "x.mid")])
    assert r.exit_code == 2 and "--label" in r.output and "music" in r.output
    r = CliRunner().invoke(app, ["sample", str(run), "--seed", "1", "--max-new-tokens", "150"])
    assert r.exit_code == 0 and r.output.startswith("X:1\n"), r.output  # no --out: printed


def test_a_model_that_writes_no_valid_tune_says_so(simple_run, tmp_path):
    run = simple_run
    r = CliRunner().invoke(app, ["sample", str(run), "--max-new-tokens", "3", "--out", f"{tmp_path / 't'}/"])
    assert r.exit_code == 2 and "No valid piece" in r.output and "--keep-invalid" in r.output, r.output
    r = CliRunner().invoke(app, ["sample", str(run), "--max-new-tokens", "3", "--keep-invalid", "--format", "abc",
                                 "--out", f"{tmp_path / 't'}/"])
    assert r.exit_code == 0 and (tmp_path / "t" / "tune-000.abc").is_file(), r.output
    assert Path(tmp_path / "t").is_dir()
