"""Tests for genforge.audio: the STFT framing, the spectrogram codec with fast Griffin-Lim, and mu-law.

The round trip runs on real FSDD test clips (stats fitted on training clips), with bounds set from the measured
figures (spectral convergence about 0.07 at 32 iterations) and far below what a broken codec gives.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from genforge.audio import (SpectrogramCodec, from_uint8, griffin_lim, istft, log_spectral_distance, mulaw_decode,
                            mulaw_encode, spectral_convergence, stft, to_uint8)
from genforge.audio.codec import hann

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CODEC = SpectrogramCodec()


def tone(freq: float, n: int = 8192, rate: int = 8000, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


@pytest.fixture(scope="module")
def fsdd_clips():
    """(train clips for the stats, 24 test clips spread over digits and speakers)."""
    from genforge.data import load_audio_dataset

    assert (SHARED_DATA / "fsdd" / "recordings").is_dir(), f"shared FSDD recordings not found under {SHARED_DATA}"
    train = load_audio_dataset("fsdd", SHARED_DATA, "train")
    test = load_audio_dataset("fsdd", SHARED_DATA, "test")
    return train.clips[::4], test.clips[np.linspace(0, len(test) - 1, 24).astype(int)]


# ---------------------------------------------------------------- STFT framing

@pytest.mark.parametrize("length", [8192, 1000, 64, 257])
def test_stft_istft_is_length_exact_and_invertible(length):
    x = np.random.default_rng(length).standard_normal((3, length)).astype(np.float32)
    spec = stft(x, 256, 64)
    assert spec.shape == (3, 129, -(-length // 64)) and spec.dtype == np.complex64
    y = istft(spec, 256, 64, length)
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, x, atol=2e-5)


def test_hann_is_periodic_and_overlaps_to_a_constant():
    w = hann(256)
    assert w[0] == 0 and w[128] == pytest.approx(1.0) and w[1] == pytest.approx(w[255])  # DFT-even
    total = sum(np.roll(w ** 2, k * 64) for k in range(4))
    np.testing.assert_allclose(total, 1.5, atol=1e-5)


def test_framing_is_checked():
    with pytest.raises(ValueError, match="multiple of hop"):
        SpectrogramCodec(n_fft=256, hop=96)
    with pytest.raises(ValueError, match="frames"):
        istft(np.zeros((1, 129, 10), np.complex64), 256, 64, 8192)


# ---------------------------------------------------------------- codec

def test_codec_shapes_and_rows_low_frequency_first():
    assert (CODEC.bins, CODEC.frames, CODEC.length) == (128, 128, 8192)
    clips = np.stack([tone(250.0), tone(3000.0)])
    lm = CODEC.log_magnitude(clips)
    assert lm.shape == (2, 128, 128) and lm.dtype == np.float32
    rows = lm[:, :, 10:-10].mean(axis=2).argmax(axis=1)
    assert rows.tolist() == [8, 96]  # bin = f / rate * n_fft: row 0 is the lowest frequency


def test_fit_stats_is_per_frequency_and_json_able():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((6, CODEC.length)).astype(np.float32) * 0.01
    clips = noise + tone(1000.0, amp=0.3)  # one loud bin on a quiet noise floor
    stats = CODEC.fit_stats(CODEC.log_magnitude(clips))
    assert json.loads(json.dumps(stats)) == stats
    assert len(stats["mean"]) == len(stats["std"]) == 128
    mean = np.array(stats["mean"])
    assert mean.argmax() == 32 and mean[32] > mean[64] + 3  # 1 kHz is row 32, far above the floor
    z = CODEC.normalise(CODEC.log_magnitude(clips), stats)
    assert z.min() >= -1 and z.max() <= 1
    np.testing.assert_allclose(z.mean(axis=(0, 2)), 0.0, atol=0.05)  # each row centred by its own mean


def test_encode_clips_to_range_and_decode_is_exact_length():
    stats = {"mean": [-6.0] * 128, "std": [0.5] * 128}  # narrow: most values clip
    clips = np.stack([tone(440.0), np.zeros(CODEC.length, np.float32)])
    spec = CODEC.encode(clips, stats)
    assert spec.shape == (2, 128, 128) and spec.dtype == np.float32
    assert spec.max() == 1.0 and spec.min() == -1.0
    wave = CODEC.decode(spec, stats, iters=4)
    assert wave.shape == (2, CODEC.length) and wave.dtype == np.float32
    assert np.abs(wave).max() <= 1.0
    assert CODEC.decode(spec[0], stats, iters=2).shape == (1, CODEC.length)  # one (bins, frames) spectrogram
    with pytest.raises(ValueError, match="128"):
        CODEC.decode(np.zeros((1, 64, 128)), stats)
    with pytest.raises(ValueError, match="8192"):
        CODEC.encode(np.zeros((1, 8000)), stats)
    with pytest.raises(ValueError, match="mean"):
        CODEC.encode(clips, {"mean": [0.0] * 128})


def test_decode_is_reproducible_by_seed():
    stats = CODEC.fit_stats(CODEC.log_magnitude(tone(300.0)[None] + tone(900.0)[None]))
    spec = CODEC.encode(tone(300.0)[None], stats)
    a, b = CODEC.decode(spec, stats, iters=3, seed=1), CODEC.decode(spec, stats, iters=3, seed=1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, CODEC.decode(spec, stats, iters=3, seed=2))


def test_uint8_mapping_round_trips_within_half_a_step():
    s = np.linspace(-1, 1, 1001, dtype=np.float32)
    q = to_uint8(s)
    assert q.dtype == np.uint8 and q[0] == 0 and q[-1] == 255 and q[500] in (127, 128)
    assert np.abs(from_uint8(q) - s).max() <= 1 / 255 + 1e-6


def test_to_dict_round_trip():
    codec = SpectrogramCodec(sample_rate=16000, n_fft=512, hop=128, frames=64)
    d = codec.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert SpectrogramCodec.from_dict({"kind": "spectrogram", "stats": {}, **d}) == codec
    assert codec.bins == 256 and codec.length == 8192


def test_spectral_convergence_and_lsd():
    ref = np.abs(np.random.default_rng(1).standard_normal((2, 8, 5))) + 0.1
    assert spectral_convergence(ref, ref) == 0.0 and log_spectral_distance(ref, ref) == 0.0
    assert spectral_convergence(ref, np.zeros_like(ref)) == pytest.approx(1.0)
    assert spectral_convergence(ref, 0.5 * ref) == pytest.approx(0.5)
    assert log_spectral_distance(ref, 0.1 * ref) == pytest.approx(20.0)


def test_griffin_lim_recovers_a_consistent_spectrogram():
    x = np.random.default_rng(3).standard_normal((2, 2048)).astype(np.float32) * 0.1
    mag = np.abs(stft(x, 256, 64))
    slow = griffin_lim(mag, 256, 64, 2048, iters=32, momentum=0.0, rng=np.random.default_rng(0))
    fast = griffin_lim(mag, 256, 64, 2048, iters=32, momentum=0.99, rng=np.random.default_rng(0))
    sc = [spectral_convergence(mag, np.abs(stft(y, 256, 64))) for y in (slow, fast)]
    assert sc[1] < sc[0]  # the momentum of the fast algorithm converges faster
    assert sc[1] < 0.25


def test_round_trip_on_real_clips(fsdd_clips):
    train, test = fsdd_clips
    stats = CODEC.fit_stats(CODEC.log_magnitude(train))
    ref = CODEC.magnitude(test)
    spec = CODEC.encode(test, stats)
    # the normalised spectrogram itself loses little (the eps floor, and the rare bins beyond 3 std)
    assert spectral_convergence(ref, CODEC.denormalise(spec, stats)) < 0.01
    measured = {}
    for name, s in (("float", spec), ("uint8", from_uint8(to_uint8(spec)))):
        wave = CODEC.decode(s, stats, iters=32)
        assert wave.shape == test.shape
        est = CODEC.magnitude(wave)
        measured[name] = spectral_convergence(ref, est)
        assert log_spectral_distance(ref, est) < 2.0  # measured about 1.0 dB
    assert measured["float"] < 0.12 and measured["uint8"] < 0.12  # measured about 0.07 for both
    # what a broken inversion gives: random phases, no iterations
    scrambled = CODEC.magnitude(CODEC.decode(spec, stats, iters=0))
    assert spectral_convergence(ref, scrambled) > 0.3
    # and wrong stats (another codec's) put the energy in the wrong rows
    flipped = {"mean": stats["mean"][::-1], "std": stats["std"][::-1]}
    assert spectral_convergence(ref, CODEC.magnitude(CODEC.decode(spec, flipped, iters=32))) > 0.5


# ---------------------------------------------------------------- mu-law

def test_mulaw_round_trip_and_resolution():
    x = np.linspace(-1, 1, 20001)
    ids = mulaw_encode(x)
    assert ids.dtype == np.int64 and ids.min() == 0 and ids.max() == 255
    assert np.all(np.diff(ids) >= 0)  # monotonic
    assert mulaw_encode(np.array([0.0]))[0] in (127, 128)
    y = mulaw_decode(ids)
    assert y.dtype == np.float32 and y.min() == -1.0 and y.max() == 1.0
    err = np.abs(y - x)
    quiet, loud = np.abs(x) < 0.01, np.abs(x) > 0.9
    assert err[quiet].max() < 3e-4 and err[loud].max() < 0.05  # fine steps near 0, coarse near full scale
    assert np.array_equal(mulaw_encode(mulaw_decode(np.arange(256))), np.arange(256))  # ids survive exactly
    assert np.array_equal(mulaw_encode(np.array([-5.0, 5.0])), [0, 255])  # clipped
    assert mulaw_encode(x, channels=16).max() == 15
    with pytest.raises(ValueError):
        mulaw_encode(x, channels=1)
