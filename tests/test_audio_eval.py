"""The spoken-digit evaluator and the audio metrics of `genforge eval`.

Quick on 2 CPU cores: the real FSDD recordings (shared/data) with a narrow network trained for a few dozen
steps into a tmp folder. The full recipe's accuracy (>= 97% on the test split) is a benchmark figure
(benchmarks/audio_classifier.py), not a test.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import genforge.artifacts
from genforge.data.audio import load_audio_dataset
from genforge.errors import UserError
from genforge.evaluation import (AudioEvaluatorNet, AudioRecipe, clip_reference, evaluate_clips, evaluate_run,
                                 load_audio_evaluator, mel_filterbank, score_features, train_audio_evaluator)
from genforge.evaluation import audio_classifier
from genforge.evaluation.audio_classifier import LogMel, augment_clips, hz_to_mel, mel_to_hz

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY = AudioRecipe(widths=(8, 16, 16), feature_dim=16, batch_size=32, max_lr=1e-2, epochs=0.05)
AUDIO_METRICS = {"fid", "kid", "is", "precision", "recall", "density", "coverage", "conditional_accuracy",
                 "classes_hit", "class_entropy", "speaker_entropy", "speakers_hit", "memorization"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fsdd():
    assert (SHARED_DATA / "fsdd" / "recordings").is_dir(), f"shared FSDD recordings not found under {SHARED_DATA}"
    return load_audio_dataset("fsdd", SHARED_DATA, "train"), load_audio_dataset("fsdd", SHARED_DATA, "test")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("evaluators")


@pytest.fixture(scope="module")
def ev(fsdd, root):
    return train_audio_evaluator("fsdd", SHARED_DATA, root=root, recipe=TINY, max_steps=60, device="cpu",
                                 train_set=fsdd[0], test_set=fsdd[1])


def tone(freq: float, n: int = 8192, rate: int = 8000, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


def test_mel_scale_and_filterbank_properties():
    assert hz_to_mel(1000) == pytest.approx(1000, abs=0.1)  # the HTK scale's anchor
    np.testing.assert_allclose(mel_to_hz(hz_to_mel([0, 440, 3999])), [0, 440, 3999], atol=1e-6)
    bank = mel_filterbank(64, 512, 8000)
    assert bank.shape == (64, 257) and bank.dtype == np.float32
    assert bank.min() >= 0 and bank.max() <= 1 and (bank.max(axis=1) > 0.5).all()  # every filter catches bins
    peaks = bank.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all() and peaks[-1] > peaks[0]  # centres rise with the filter index
    widths = (bank > 0).sum(axis=1)
    assert widths[-1] > 4 * widths[0]  # equal in mel: narrow at low frequencies, wide at high ones
    # neighbouring triangles cross-fade: between the first and the last centre the bank sums to exactly 1
    freqs = np.arange(257) * 8000 / 512
    lo, hi = mel_to_hz(hz_to_mel(4000) * np.array([1, 64]) / 65)
    inside = (freqs >= lo) & (freqs <= hi)
    np.testing.assert_allclose(bank[:, inside].sum(axis=0), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="catch no FFT bin"):
        mel_filterbank(128, 256, 8000)  # 31 Hz bins cannot hold 128 mels' lowest triangles
    with pytest.raises(ValueError, match="fmin"):
        mel_filterbank(40, 512, 8000, fmax=5000)


def test_log_mel_puts_a_tone_in_its_band():
    r = AudioRecipe()
    frontend = LogMel(**r.frontend())
    bank = mel_filterbank(r.n_mels, r.n_fft, r.sample_rate)
    centres = bank.argmax(axis=1) * r.sample_rate / r.n_fft
    for freq in (300.0, 1000.0, 2500.0):
        out = frontend(torch.from_numpy(tone(freq))[None])
        assert out.shape == (1, 1, r.n_mels, r.frames)
        band = int(out[0, 0, :, 5:-5].mean(1).argmax())
        assert abs(centres[band] - freq) < 0.1 * freq, (freq, centres[band])
    louder = frontend.log_mel(torch.from_numpy(tone(1000.0, amp=0.5))[None])
    quieter = frontend.log_mel(torch.from_numpy(tone(1000.0, amp=0.05))[None])
    peak = int(louder[0, :, 20].argmax())
    assert float(louder[0, peak, 20] - quieter[0, peak, 20]) == pytest.approx(2 * np.log(10), abs=0.01)  # 20 dB


def test_augmentation_is_seeded_shifts_without_wrapping_and_stays_in_range():
    r = dataclasses.replace(AudioRecipe(), gain_db=(0.0, 0.0), noise_p=0.0, mulaw_p=0.0)
    x = torch.zeros(16, 8192)
    x[:, 4000] = 0.5
    a = augment_clips(x, r, torch.Generator().manual_seed(1))
    assert torch.equal(a, augment_clips(x, r, torch.Generator().manual_seed(1)))
    pos = a.abs().argmax(1)
    assert ((pos - 4000).abs() <= r.max_shift).all() and len(set(pos.tolist())) > 8
    assert torch.allclose(a.abs().amax(1), torch.full((16,), 0.5))  # moved, not smeared or wrapped
    full = augment_clips(torch.randn(64, 8192).clamp(-1, 1), AudioRecipe(), torch.Generator().manual_seed(2))
    assert full.shape == (64, 8192) and full.abs().max() <= 1


def test_evaluator_is_stored_as_safetensors_and_reloads_identically(ev, root, fsdd):
    files = sorted(p.name for p in ev.directory.iterdir())
    assert {"config.json", "model.safetensors", "features-test.safetensors"} <= set(files)
    assert not [f for f in files if f.endswith((".pt", ".pth", ".pkl", ".bin"))]
    cfg = json.loads((ev.directory / "config.json").read_text())
    assert ev.id.startswith("fsdd-v1-") and cfg["modality"] == "audio" and cfg["training"]["steps"] == 60
    assert cfg["training"]["seconds"] > 0 and cfg["test_clips"] == 300
    assert cfg["speakers"] == ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
    assert 0.3 < ev.test_accuracy <= 1.0  # 60 steps of a narrow net: far above chance (0.1), not yet good
    again = load_audio_evaluator("fsdd", SHARED_DATA, root=root, train_if_missing=False)
    assert again.id == ev.id
    clips = fsdd[1].clips[:40]
    f1, d1, s1 = ev.extract(clips)
    f2, d2, s2 = again.extract(clips)
    assert torch.equal(f1, f2) and torch.equal(d1, d2) and torch.equal(s1, s2)
    assert f1.shape == (40, 16) and d1.shape == (40, 10) and s1.shape == (40, 6)
    # the BatchNorm-folded inference copy computes what the trained network computes
    net = AudioEvaluatorNet(cfg["frontend"], cfg["arch"], 10, 6).eval()
    net.load_state_dict(load_file(str(ev.directory / "model.safetensors")))
    with torch.no_grad():
        f, d, s = net(torch.from_numpy(clips))
    torch.testing.assert_close(f1, f, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(d1, d, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s1, s, atol=1e-4, rtol=1e-4)
    # the cached test features are what extract gives
    torch.testing.assert_close(clip_reference(ev, "test").features[:40], f1)


def test_training_repeats_exactly_with_its_seed(fsdd, tmp_path):
    small = SimpleNamespace(clips=fsdd[0].clips[::20], labels=fsdd[0].labels[::20], speakers=fsdd[0].speakers[::20],
                            classes=fsdd[0].classes, speaker_names=fsdd[0].speaker_names)
    test = SimpleNamespace(clips=fsdd[1].clips[:50], labels=fsdd[1].labels[:50], speakers=fsdd[1].speakers[:50])
    runs = [train_audio_evaluator("fsdd", None, root=tmp_path / name, recipe=TINY, max_steps=6, seed=seed,
                                  device="cpu", train_set=small, test_set=test) for name, seed in
            (("a", 0), ("b", 0), ("c", 1))]
    assert runs[0].config["weights_sha256"] == runs[1].config["weights_sha256"]
    assert runs[0].config["weights_sha256"] != runs[2].config["weights_sha256"]


def test_damaged_missing_or_unknown_evaluators_are_user_errors(ev, tmp_path, no_shipped_evaluators):
    copy = tmp_path / "evaluators"
    shutil.copytree(ev.directory, copy / ev.directory.name)
    weights = copy / ev.directory.name / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UserError, match="damaged"):
        load_audio_evaluator("fsdd", SHARED_DATA, root=copy, train_if_missing=False)
    with pytest.raises(UserError, match="No fsdd evaluator"):
        load_audio_evaluator("fsdd", SHARED_DATA, root=tmp_path / "empty", train_if_missing=False)
    with pytest.raises(UserError, match="No audio evaluator for 'speech-commands'"):
        load_audio_evaluator("speech-commands", SHARED_DATA, root=tmp_path)


def test_first_use_trains_the_evaluator_with_a_notice(monkeypatch, tmp_path, capsys, no_shipped_evaluators):
    monkeypatch.setitem(audio_classifier.AUDIO_RECIPES, "fsdd", dataclasses.replace(TINY, epochs=0.03))
    ev = load_audio_evaluator("fsdd", SHARED_DATA, root=tmp_path, device="cpu")
    assert "training it now" in capsys.readouterr().err
    assert ev.config["training"]["train_clips"] == 2700 and ev.config["test_clips"] == 300
    assert (tmp_path / "fsdd-v1" / "model.safetensors").exists()


def test_feature_metrics_are_zero_for_identical_sets_and_grow_with_a_shift():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 16, generator=g)
    logits = torch.randn(300, 10, generator=g) * 4
    speakers = torch.randn(300, 6, generator=g) * 4
    train = torch.randn(1000, 16, generator=g)

    def scores(feats):
        return score_features(feats, logits, speakers, real, train, threshold=0.5, requested=logits.argmax(1))["metrics"]

    same = scores(real)
    assert abs(same["fid"]) < 1e-3 and same["kid"] < 0.01 and same["precision"] == same["recall"] == 1.0
    assert same["conditional_accuracy"] == 1.0
    fids = [scores(real + shift)["fid"] for shift in (0.25, 0.5, 1.0)]
    kids = [scores(real + shift)["kid"] for shift in (0.25, 0.5, 1.0)]
    assert fids == sorted(fids) and fids[0] > 0.5 and fids[-1] == pytest.approx(16, rel=0.05)  # |mean shift|^2
    assert kids == sorted(kids) and kids[0] > same["kid"]
    assert scores(real * 0.01)["recall"] < 0.1  # collapsed onto the mean: no diversity
    copies = score_features(train[:300], logits, speakers, real, train, 0.5)["metrics"]
    assert copies["memorization"] == 1.0 and "conditional_accuracy" not in copies
    one_voice = score_features(real, logits, torch.zeros(300, 6).index_fill_(1, torch.tensor([2]), 1.0), real,
                               train, 0.5)["metrics"]
    assert one_voice["speaker_entropy"] == 0.0 and one_voice["speakers_hit"] == 1 and same["speakers_hit"] == 6
    with pytest.raises(UserError, match="too few"):
        score_features(real[:8], logits[:8], speakers[:8], real, train, 0.5)


def test_real_clips_score_near_zero_noise_far_and_the_floor_is_real(ev, fsdd):
    test = fsdd[1]
    r = evaluate_clips(test.clips, ev, labels=test.labels, seed=0)
    m, floor = r["metrics"], r["floor"]["metrics"]
    assert abs(m["fid"]) < 1e-3 and m["recall"] == 1.0
    assert m["conditional_accuracy"] == pytest.approx(ev.test_accuracy, abs=1e-4)
    assert m["memorization"] <= 0.02  # the threshold is these clips' own 1st percentile
    assert set(m) == set(floor) == AUDIO_METRICS
    assert floor["conditional_accuracy"] == pytest.approx(ev.test_accuracy, abs=1e-4) and floor["fid"] > m["fid"]
    assert r["details"]["reference_n"] == 300 and r["floor"]["details"]["reference_n"] == 300
    assert set(r["details"]["speaker_counts"]) == set(ev.speakers)
    noise = np.random.default_rng(0).standard_normal((300, 8192)).astype(np.float32) * 0.1
    far = evaluate_clips(noise, ev, labels=test.labels, floor=False)
    assert "floor" not in far and far["metrics"]["fid"] > 5 * floor["fid"] and far["metrics"]["kid"] > floor["kid"]
    # clips at another rate are resampled to the evaluator's: the same recordings at 16 kHz score like them
    import soxr

    up = np.stack([soxr.resample(c, 8000, 16000) for c in test.clips[:100]])
    at8k = ev.extract(test.clips[:100])[0]
    assert (ev.extract(up, sample_rate=16000)[0] - at8k).abs().mean() < 0.1 * at8k.abs().mean()


class FakeAudioGenerator:
    """What evaluate_run needs of an audio generator: real test recordings of the digits asked for, at 16 kHz,
    a little noise drawn from the seed."""

    modality = "audio"

    def __init__(self, test, dataset: str = "fsdd"):
        import soxr

        self.meta = {"family": "fake", "name": "fake-speech", "step": 3, "data": {"dataset": dataset}}
        self.classes, self.speakers = [str(d) for d in range(10)], list(test.speaker_names)
        self.conditional, self.sample_rate, self.weights_file = True, 16000, "model.safetensors"
        self.by_digit = [np.stack([soxr.resample(c, 8000, 16000) for c in test.clips[test.labels == d]])
                         for d in range(10)]
        self.calls = []

    def generate(self, n=None, labels=None, speaker=None, seed=0, **options):
        self.calls.append({"n": n, "seed": seed, **options})
        rng = np.random.default_rng(seed)
        clips = np.stack([self.by_digit[d][rng.integers(len(self.by_digit[d]))] for d in labels])
        return (clips + 0.003 * rng.standard_normal(clips.shape)).astype(np.float32)


def test_genforge_eval_dispatches_an_audio_run_to_the_audio_metrics(ev, fsdd, root, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from genforge.cli import app

    fake = FakeAudioGenerator(fsdd[1])
    monkeypatch.setattr(genforge.artifacts, "load", lambda *a, **kw: fake)
    a = evaluate_run(tmp_path, n=50, data_dir=SHARED_DATA, seed=3, evaluator_root=root, write=False)
    b = evaluate_run(tmp_path, n=50, data_dir=SHARED_DATA, seed=3, evaluator_root=root, write=False)
    assert a["metrics"] == b["metrics"] and a["floor"] == b["floor"]
    assert set(a["metrics"]) == AUDIO_METRICS and a["model"]["modality"] == "audio"
    assert a["evaluator"]["id"] == ev.id and a["n"] == 50 and fake.calls[0] == {"n": 50, "seed": 3}
    assert a["metrics"]["conditional_accuracy"] > 0.3 and "real floor" in a["summary"]
    assert a["floor"]["details"]["n"] == 300 and a["floor"]["details"]["reference_n"] == 50
    with pytest.raises(UserError, match="image runs"):
        evaluate_run(tmp_path, n=50, data_dir=SHARED_DATA, evaluator_root=root, write=False,
                     inception_weights=tmp_path / "inception.pth")
    with pytest.raises(UserError, match="too few"):
        evaluate_run(tmp_path, n=5, data_dir=SHARED_DATA, evaluator_root=root, write=False)
    # the CLI prints the table and writes eval.json, as for images
    result = CliRunner().invoke(app, ["eval", str(tmp_path), "--n", "40", "--data-dir", str(SHARED_DATA),
                                      "--no-progress"], env={"GENFORGE_EVALUATORS": str(root)})
    assert result.exit_code == 0, result.output
    assert "speaker_entropy" in result.output and "eval.json" in result.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["n"] == 40 and set(report["floor"]["metrics"]) == AUDIO_METRICS
    monkeypatch.setattr(genforge.artifacts, "load", lambda *a, **kw: FakeAudioGenerator(fsdd[1], "folder:/x"))
    with pytest.raises(UserError, match="folder of audio"):
        evaluate_run(tmp_path, n=50, data_dir=SHARED_DATA, evaluator_root=root, write=False)
