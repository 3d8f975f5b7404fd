"""Music through `genforge serve`: a tiny music model listed in /v1/models, composing through /v1/completions (the
tune's normal form, the blank line that ends it, no text mark), and /v1/music/render (audio, piano roll, MIDI with
the model's provenance; clean 400s for text that is not music, over-long text and unknown formats); the same for
an export on the torch-free runtime."""

from __future__ import annotations

import io
import json
import random
import wave

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import genforge
from genforge.export import export
from genforge.serving.app import ServeSettings, create_app
from genforge.serving.server import load_models
from genforge.training import apply_overrides, read_raw, train, validate

pytest.importorskip("music21")  # the music extra is part of the test extra: present in CI

KEY = "music-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
NOTES = "DEFGABcdef"
KNOWN = "X:1\nT:Known\nM:6/8\nL:1/8\nK:D\n|:DFA dAF|GBd gdB|AFD EFG|A3 A3:|"


def synthetic_tunes(n: int, seed: int = 0) -> str:
    """Short tunes (four bars of eighths) that a tiny model learns in seconds: header, bars, end, blank line."""
    rng = random.Random(seed)
    tunes = []
    for i in range(n):
        metre, key = rng.choice([("6/8", "D"), ("6/8", "G"), ("3/4", "D"), ("3/4", "A")])
        bars = [" ".join("".join(rng.choice(NOTES) for _ in range(3)) for _ in range(2)) for _ in range(4)]
        tunes.append(f"X:{i + 1}\nT:Tune {i}\nM:{metre}\nL:1/8\nK:{key}\n|" + "|".join(bars) + "|]\n")
    return "\n".join(tunes)


def train_music_run(base):
    """A tiny ABC GPT on synthetic_tunes (~10 s on 2 cores): its tunes end and parse. The playground test uses it too."""
    (base / "tunes").mkdir(parents=True)
    (base / "tunes" / "t.abc").write_text(synthetic_tunes(80), encoding="utf-8")
    raw = apply_overrides(read_raw("folk-abc-gpt"), [
        f"data.dataset=folder:{base / 'tunes'}", "data.val_fraction=0.1", "model.n_layer=1", "model.n_embd=48",
        "model.n_head=2", "model.block_size=64", "train.budget_minutes=null", "train.max_steps=120",
        "train.batch_size=16", "train.eval_every=120", "train.eval_samples=100", "train.checkpoint_every=120",
        "train.sample_every=1000", "train.mixed_precision=no", "train.seed=1"])
    return train(validate(raw), base / "run", progress=False).run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_music_run(tmp_path_factory.mktemp("music-serve"))


@pytest.fixture(scope="module")
def gen(run):
    return genforge.load(run, precision="no")


def client(models: dict, **settings) -> TestClient:
    return TestClient(create_app(models, ServeSettings(**{"api_keys": [KEY], **settings})))


def complete(c, **body):
    r = c.post("/v1/completions", json={"model": "folk", "max_tokens": 120, "temperature": 0.5, **body}, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


def render(c, **body):
    return c.post("/v1/music/render", json=body, headers=AUTH)


def test_the_music_model_is_listed_with_its_kind_formats_and_limits(gen):
    with client({"folk": gen}, max_render_chars=5000, max_render_seconds=60) as c:
        info = c.get("/v1/models/folk", headers=AUTH).json()["genforge"]
        assert info["modality"] == "music" and info["music_kind"] == "abc"
        assert {"wav", "png", "mid", "abc", "musicxml"} <= set(info["response_formats"])
        assert info["limits"]["max_render_chars"] == 5000 and info["limits"]["max_render_seconds"] == 60
        assert info["limits"]["max_tokens"] and info["max_tokens_default"] == 1000
        doc = c.get("/openapi.json").json()
        op = doc["paths"]["/v1/music/render"]["post"]
        assert {"200", "400", "401", "429"} <= set(op["responses"])
        assert "audio/wav" in op["responses"]["200"]["content"] and "image/png" in op["responses"]["200"]["content"]
        assert "normal form" in doc["paths"]["/v1/completions"]["post"]["description"]


def test_a_completion_is_a_whole_tune_in_normal_form_ended_by_the_blank_line(gen):
    from genforge.media.watermark import MarkKey
    from genforge.music.abc import abc_score

    gen.use_mark_key(MarkKey(b"0123456789abcdef0123456789abcdef"))  # a server with a mark key: music stays unmarked
    with client({"folk": gen}) as c:
        out = complete(c, prompt="K:D\nM:6/8", echo=True, seed=7, n=2)
        for choice in out["choices"]:
            tune = choice["text"]
            assert tune.startswith("X:1\nM:6/8\nL:1/8\nK:D\n")  # the prompt as the model learnt tunes to start
            assert choice["finish_reason"] == "stop" and "\n\n" not in tune  # stopped at the end of the tune
            assert abc_score(tune).notes  # parses as music
        assert out["provenance"]["mark"] == "" and out["provenance"]["seed"] == 7
        again = complete(c, prompt="M:6/8\nK:D", echo=True, seed=7, n=2)  # fields in another order: same start
        assert [ch["text"] for ch in again["choices"]] == [ch["text"] for ch in out["choices"]]
        plain = complete(c, prompt="M:6/8\nK:D", seed=7, n=2)  # without echo: only the continuation
        assert [ch["text"] for ch in plain["choices"]] == [ch["text"][len("X:1\nM:6/8\nL:1/8\nK:D\n"):]
                                                            for ch in out["choices"]]
        # what the library composes with the same seed (the same rows, the same stop, no mark)
        assert gen.generate(["X:1\nM:6/8\nL:1/8\nK:D\n"] * 2, 120, 0.5, seed=7, stop=["\n\n"], mark=False) == \
            [ch["text"] for ch in plain["choices"]]
        # an explicit stop replaces the blank line; streaming gives the same text
        cut = complete(c, prompt="M:6/8\nK:D", seed=7, stop=["|"])
        assert "|" not in cut["choices"][0]["text"]
        streamed = c.post("/v1/completions", json={"model": "folk", "prompt": "M:6/8\nK:D", "max_tokens": 120,
                                                   "temperature": 0.5, "seed": 7, "n": 2, "stream": True}, headers=AUTH)
        pieces = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
        assert "".join(ch["text"] for piece in pieces for ch in piece["choices"] if ch["index"] == 0) == \
            plain["choices"][0]["text"]
    gen.use_mark_key(False)


def test_render_gives_audible_audio_a_piano_roll_and_midi_with_provenance(gen):
    from genforge.media.audio import decode_audio
    from genforge.media.music import midi_to_score, music_provenance

    with client({"folk": gen}) as c:
        r = render(c, text=KNOWN, format="wav")
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        seconds = float(r.headers["x-music-seconds"])
        assert seconds == pytest.approx(8 * 1.5 * 0.5, abs=0.01)  # 8 dotted quarters at 120 quarters a minute
        with wave.open(io.BytesIO(r.content)) as w:
            assert w.getframerate() == 22050 and w.getnchannels() == 1
            samples = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        assert len(samples) / 22050 == pytest.approx(seconds + 0.5, abs=0.3)  # the notes and their release
        assert np.abs(samples).max() > 1000  # audible, not silence
        assert decode_audio(r.content)[2] is None  # no model named: no provenance claimed

        png = render(c, text=KNOWN, format="png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        img = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
        assert img.shape[1] > 100 and (img != 255).any()

        mid = render(c, text="\n\n".join([KNOWN, KNOWN.replace("DFA", "FAd")]), format="mid", model="folk", tune=2,
                     seed=7)
        assert mid.status_code == 200 and mid.headers["content-type"] == "audio/midi"
        notes = midi_to_score(mid.content).notes
        assert [n.pitch for n in notes[:3]] == [66, 69, 74]  # the second tune: F A d
        record = music_provenance(mid.content, "midi")
        assert record["seed"] == 7 and record["parameters"]["tune"] == 2 and record["model_hash"]

        abc = render(c, text=KNOWN, format="abc", model="folk")
        assert abc.headers["content-type"].startswith("text/vnd.abc")
        assert "%genforge-provenance" in abc.text and abc.text.replace("\r", "").count("|") == KNOWN.count("|")
        xml = render(c, text=KNOWN, format="musicxml")
        assert xml.status_code == 200 and b"<score-partwise" in xml.content


def test_render_refuses_what_it_cannot_render_with_a_400_never_a_5xx(gen):
    with client({"folk": gen}, max_render_chars=300, max_render_seconds=20) as c:
        cases = {
            "not_music": {"text": "X:1\nM:4/4\nK:C\n|: [[[ (((", "format": "wav"},
            "empty": {"text": "\n\n", "format": "png"},
            "too_many_chars": {"text": KNOWN + "\n" + "|DFA dAF" * 60, "format": "wav"},
            "too_long": {"text": "X:1\nM:4/4\nL:1/4\nK:C\n" + "C4|" * 20, "format": "png"},  # 80 quarters: 40 s
            "format": {"text": KNOWN, "format": "ogg"},
            "tune": {"text": KNOWN, "format": "mid", "tune": 3},
            "events_as_abc": {"text": KNOWN, "format": "abc", "kind": "events"},
            "seed_without_model": {"text": KNOWN, "seed": 3},
            "model_not_music": {"text": KNOWN, "model": "nope"},
        }
        for name, body in cases.items():
            r = render(c, **body)
            assert r.status_code in (400, 404, 413), (name, r.status_code, r.text)
            error = r.json()["error"]
            assert error["message"], name
            if name in ("not_music", "empty"):
                assert error["code"] == "not_music", error
            if name == "not_music":
                assert "does not read as ABC" in error["message"], error
            if name in ("too_many_chars", "too_long"):
                assert error["code"] == "limit" and ("300" in error["message"] or "20 s" in error["message"])
            if name == "format":
                assert error["param"] == "format"
        assert render(c, text=KNOWN).status_code == 200  # a tune within the limits still renders


def test_an_export_of_the_music_model_is_served_alike(run, gen, tmp_path):
    out = export(run, tmp_path / "folk-export")
    models = load_models({"folk": str(out)})
    assert models["folk"].modality == "music"
    with client({"folk": gen}) as c:
        want = complete(c, prompt="M:6/8\nK:D", echo=True, seed=3, temperature=0)["choices"][0]
    with client(models) as c:
        info = c.get("/v1/models/folk", headers=AUTH).json()["genforge"]
        assert info["modality"] == "music" and info["music_kind"] == "abc"
        got = complete(c, prompt="M:6/8\nK:D", echo=True, seed=3, temperature=0)["choices"][0]
        assert got["text"] == want["text"] and got["finish_reason"] == "stop"  # greedy: the same tune
        r = render(c, text=got["text"], format="wav", model="folk")
        assert r.status_code == 200 and len(r.content) > 10_000
