"""Audio through media/ (issue 24): WAV/FLAC/MP3 written and read back (rate, length, 16 bits, clipping), the run's
provenance in each format, C2PA signed, read and broken by tampering, the keyed audio mark (found where applied and
after requantisation, resampling and noise; not in real speech, not under another key), `genforge verify` on audio
files, and the spectrogram grid."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from PIL import Image

from genforge.media import AudioMark, MarkKey, Record, decode_audio, encode_audio, save_spectrogram_grid, write_audio
from genforge.media.audio import quantize16
from genforge.media.audio_mark import signal_to_mark_db
from genforge.media.provenance import SOURCE_TYPE, c2pa_read, throwaway_certificate
from genforge.verification import GENERATED, NOT_FOUND, TAMPERED, verify

KEY = MarkKey(b"0123456789abcdef0123456789abcdef")
OTHER = MarkKey(b"fedcba9876543210fedcba9876543210")
RECORDINGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"


def _record(**kw):
    return Record(model="fsdd-tiny", model_hash="sha256:abc", family="wavenet", version="0.1.0", seed=7,
                  parameters={"label": 4, **kw})


def _trim(x, frame=256, top_db=40.0):
    """Leading and trailing silence off (frames quieter than top_db below the loudest), as generated clips are."""
    n = len(x) // frame * frame
    rms = np.sqrt((x[:n].reshape(-1, frame).astype(np.float64) ** 2).mean(1))
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (-top_db / 20))
    return x[loud[0] * frame:(loud[-1] + 1) * frame]


@pytest.fixture(scope="module")
def speech():
    """40 real FSDD test recordings (takes 0-4), trimmed: tenths of a second of 8 kHz speech standing in for
    generated clips."""
    assert RECORDINGS.is_dir(), f"shared FSDD recordings not found: expected {RECORDINGS}"
    files = sorted(RECORDINGS.glob("*_[0-4].wav"))[::7][:40]
    return [_trim(sf.read(f, dtype="float32")[0]) for f in files]


@pytest.fixture(scope="module")
def signer():
    pytest.importorskip("c2pa", reason="the provenance extra is installed by the test extra")
    return throwaway_certificate()[0]


def _tone(n=6000, rate=8000):
    t = np.arange(n) / rate
    return (0.4 * np.sin(2 * np.pi * 440 * t) * np.hanning(n)).astype(np.float32)


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_files_round_trip_with_their_provenance(fmt, tmp_path):
    clip = _tone()
    path, = write_audio(clip, 8000, str(tmp_path / f"x.{fmt}"), record=_record())
    assert path == tmp_path / f"x.{fmt}" and not list(tmp_path.glob("*.tmp"))
    info = sf.info(str(path))
    assert info.samplerate == 8000 and info.channels == 1 and info.frames == len(clip)
    samples, rate, meta = decode_audio(path.read_bytes())
    assert rate == 8000 and samples.shape == clip.shape and samples.dtype == np.float32
    if fmt == "mp3":
        assert info.format == "MP3"
        assert np.corrcoef(samples, clip)[0, 1] > 0.99  # lossy, but in place (no encoder delay left in)
    else:
        assert info.subtype == "PCM_16"
        assert np.array_equal(samples, quantize16(clip) / np.float32(32768))  # exactly the 16-bit samples
    assert meta["digital_source_type"] == SOURCE_TYPE and meta["model"] == "fsdd-tiny" and meta["seed"] == 7
    assert meta["parameters"] == {"label": 4} and meta["model_hash"] == "sha256:abc"
    assert decode_audio(encode_audio(clip, 8000, fmt))[2] is None  # no record: no provenance


def test_sixteen_bits_clip_rather_than_wrap_and_bad_input_is_refused(tmp_path):
    loud = np.array([0.0, 0.5, 1.0, 1.7, -1.0, -3.0, 1e-6], np.float32)
    ints = sf.read(write_audio(loud, 8000, str(tmp_path / "loud.wav"))[0], dtype="int16")[0]
    assert ints.tolist() == [0, 16384, 32767, 32767, -32768, -32768, 0]
    assert len(encode_audio(loud, 8000, "pcm")) == 2 * len(loud)
    with pytest.raises(ValueError, match="NaN"):
        encode_audio(np.array([0.0, np.nan]), 8000)
    with pytest.raises(ValueError, match="folder"):
        write_audio(np.zeros((2, 100)), 8000, str(tmp_path / "two.wav"))
    with pytest.raises(ValueError, match=r"\.wav, \.flac or \.mp3"):
        write_audio(np.zeros(100), 8000, str(tmp_path / "x.ogg"))
    with pytest.raises(ValueError, match="MP3 cannot hold"):
        encode_audio(np.zeros(100), 7000, "mp3")
    with pytest.raises(ValueError):
        decode_audio(b"not audio at all")
    with pytest.raises(ValueError):
        decode_audio(encode_audio(np.zeros(100), 8000)[:30])  # the header only


def test_a_folder_gets_one_file_per_clip_each_with_its_index(tmp_path):
    clips = np.stack([_tone(), _tone() * 0.5, _tone() * 0.25])
    paths = write_audio(clips, 16000, f"{tmp_path / 'out'}/", record=_record(), fmt="flac")
    assert [p.name for p in paths] == ["000.flac", "001.flac", "002.flac"]
    metas = [decode_audio(p.read_bytes()) for p in paths]
    assert [m[2]["parameters"]["index"] for m in metas] == [0, 1, 2] and all(m[1] == 16000 for m in metas)


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_c2pa_manifest_is_valid_and_tampering_breaks_it(signer, fmt, tmp_path):
    data = encode_audio(_tone(), 8000, fmt, _record(), signer, AudioMark(KEY))
    found = c2pa_read(data)
    assert found["state"] == "Valid" and found["source_type"] == SOURCE_TYPE
    assert set(found["failures"]) <= {"signingCredential.untrusted"}  # a test CA is in no trust list
    assert found["record"]["model"] == "fsdd-tiny" and found["record"]["mark"] == KEY.id
    assert decode_audio(data)[2]["model"] == "fsdd-tiny"  # both layers in one file
    tampered = bytearray(data)  # change one byte of the audio (WAV: the C2PA chunk follows the data chunk)
    tampered[data.index(b"data") + 1000 if fmt == "wav" else len(data) - 200] ^= 0x55
    assert c2pa_read(bytes(tampered))["state"] == "Invalid"
    good, bad = tmp_path / f"good.{fmt}", tmp_path / f"bad.{fmt}"
    good.write_bytes(data)
    bad.write_bytes(bytes(tampered))
    assert verify(str(good), [KEY]).verdict == GENERATED
    assert verify(str(bad), [KEY]).verdict == TAMPERED


def test_the_mark_is_found_where_applied_and_nowhere_else(speech):
    mark, other = AudioMark(KEY), AudioMark(OTHER)
    rng = np.random.default_rng(0)
    marked = [decode_audio(encode_audio(x, 8000, mark=mark))[0] for x in speech]  # through the 16-bit writer
    assert min(signal_to_mark_db(x, mark.embed(x)) for x in speech) >= 30
    assert all(mark.detect(y, search=False)["detected"] for y in marked)
    assert all(np.array_equal(mark.embed(y), y) for y in marked[:5])  # marked once: a second pass changes nothing
    requantised = [quantize16(y * 0.7) / 32768 for y in marked]
    resampled = [quantize16(soxr.resample(soxr.resample(y, 8000, 16000), 16000, 8000)) / 32768 for y in marked]
    noisy = [quantize16(y + rng.normal(0, np.sqrt(np.mean(y.astype(float) ** 2) / 1000), len(y))) / 32768
             for y in marked]
    assert all(mark.detect(y, search=False)["detected"] for y in requantised + resampled)
    assert np.mean([mark.detect(y, search=False)["detected"] for y in noisy]) >= 0.95
    assert not any(mark.detect(x)["detected"] for x in speech[:20])  # real speech, alignment search included
    assert not any(other.detect(y)["detected"] for y in marked[:20])  # another key


def test_the_unmarked_score_follows_its_null_distribution(speech):
    """Without the mark, z^2 / 2 is exponential (mean 1): what makes the p-value exact."""
    mark = AudioMark(KEY)
    half_z2 = [mark.scores(x)["z"] ** 2 / 2 for x in speech]
    half_z2 += [AudioMark(MarkKey(bytes([i]) * 32)).scores(speech[i])["z"] ** 2 / 2 for i in range(len(speech))]
    assert 0.7 < np.mean(half_z2) < 1.3 and max(half_z2) < 8


def test_the_mark_survives_other_rates_and_is_found_after_a_crop(speech):
    mark = AudioMark(KEY)
    clip = np.concatenate(speech[:3])
    wide = soxr.resample(clip, 8000, 16000)
    marked16 = mark.embed(wide, 16000)
    assert mark.detect(marked16, 16000, search=False)["detected"]
    assert mark.detect(soxr.resample(marked16, 16000, 8000), 8000, search=False)["detected"]
    marked = mark.embed(clip)
    cut = mark.detect(marked[421:])
    assert cut["detected"] and cut["shift_samples"] in (420, 422)  # searched: offsets go in steps of 2 samples
    assert not mark.detect(marked[421:], search=False)["detected"]
    padded = mark.detect(np.concatenate([np.zeros(300, np.float32), marked]))
    assert padded["detected"] and padded["shift_samples"] == -300
    assert mark.detect(np.zeros(100))["detected"] is False and mark.detect(np.zeros(8000))["cells"] == 0
    assert np.array_equal(mark.embed(np.zeros(100)), np.zeros(100))


def test_verify_reports_each_layer_of_an_audio_file(speech, tmp_path, signer):
    from typer.testing import CliRunner

    from genforge.cli import app

    clip = np.concatenate(speech[3:5])
    path, = write_audio(clip, 8000, str(tmp_path / "speech.wav"), _record(), signer, AudioMark(KEY))
    report = verify(str(path), [KEY, OTHER])
    assert report.kind == "audio" and report.verdict == GENERATED and "8000 Hz" in report.source
    assert report.metadata["mark"] == KEY.id and report.c2pa["state"] == "Valid"
    assert [m["detected"] for m in report.marks] == [True, False]
    plain, = write_audio(clip, 8000, str(tmp_path / "plain.flac"))
    assert verify(str(plain), [KEY]).verdict == NOT_FOUND
    stripped = tmp_path / "stripped.wav"  # metadata gone, samples kept: only the mark is left
    sf.write(stripped, decode_audio(path.read_bytes())[0], 8000, subtype="PCM_16")
    assert verify(str(stripped), []).verdict == NOT_FOUND
    result = CliRunner().invoke(app, ["verify", str(stripped), "--key", _keyfile(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["marks"][0]["detected"]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    assert CliRunner().invoke(app, ["verify", str(broken)]).exit_code == 2


def _keyfile(tmp_path):
    path = tmp_path / "mark.key"
    path.write_text(KEY.secret.decode())
    return str(path)


def test_generators_get_an_audio_mark_from_their_key():
    from genforge.marking import Marking

    class Gen(Marking):
        meta = {"name": "g"}

    gen = Gen()
    gen.use_mark_key(KEY)
    assert isinstance(gen.audio_mark, AudioMark) and gen.audio_mark.key == KEY
    gen.use_mark_key(False)
    assert gen.audio_mark is None


def test_spectrogram_grid_puts_low_frequencies_at_the_bottom(tmp_path):
    specs = np.full((4, 128, 96), -1.0)
    specs[:, :8] = 1.0  # loud in the lowest rows only
    path = save_spectrogram_grid(specs, tmp_path / "grid.png", nrow=2)
    grid = np.asarray(Image.open(path).convert("L")).astype(int)
    assert grid.shape == (2 * 130 + 2, 2 * 98 + 2)
    tile = grid[2:130, 2:98]
    assert tile[-8:].min() > 200 and tile[:-8].max() < 30  # bright bottom band, dark above
    grey = np.asarray(Image.open(save_spectrogram_grid(specs[:1], tmp_path / "g.png", colour=False)))
    assert grey.ndim == 2 and grey[-3, 50] == 255 and grey[2, 50] == 0  # inside the 2-pixel frame
