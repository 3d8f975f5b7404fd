"""Tests for genforge.data.audio: the reader on files soundfile writes here, trimming and fitting, FSDD (the real
recordings in shared/data, and its verified download from a local archive), and folders of recordings."""

from __future__ import annotations

import io
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from genforge.data import (dataset_info, fit_length, is_audio_dataset, load_audio_dataset, load_image_dataset,
                           read_audio, trim_silence)
from genforge.data import registry
from genforge.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RECORDINGS = SHARED_DATA / "fsdd" / "recordings"
ARCHIVE = f"{registry.FSDD_COMMIT}.tar.gz"
TOP = f"free-spoken-digit-dataset-{registry.FSDD_COMMIT}"


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No test may read the user's data dir or mirrors, or download from the network."""
    monkeypatch.delenv("GENFORGE_MIRROR_FSDD", raising=False)
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "default-data-dir"))


@pytest.fixture(scope="module")
def fsdd_train():
    assert RECORDINGS.is_dir(), f"shared FSDD recordings not found: expected {RECORDINGS}"
    return load_audio_dataset("fsdd", SHARED_DATA, "train")


def tone(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


# ---------------------------------------------------------------- reader

@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_read_resamples_to_the_asked_rate(tmp_path, rate):
    path = tmp_path / f"a{rate}.wav"
    sf.write(path, tone(440.0, 0.5, rate), rate, subtype="PCM_16")
    native, native_rate = read_audio(path)
    assert native_rate == rate and native.shape == (rate // 2,) and native.dtype == np.float32
    np.testing.assert_allclose(native, tone(440.0, 0.5, rate), atol=1 / 32768 + 1e-6)  # 16-bit steps only
    x, got = read_audio(path, 8000)
    assert got == 8000 and x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 4000) <= 1
    assert abs(peak_hz(x, 8000) - 440.0) < 5.0  # the pitch survives resampling
    assert 0.45 < np.abs(x[200:-200]).max() < 0.55


def test_stereo_is_mixed_down_with_a_notice(tmp_path):
    left, right = tone(300.0, 0.25, 16000), tone(1000.0, 0.25, 16000, amp=0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    with pytest.warns(UserWarning, match="mono"):
        x, rate = read_audio(path)
    assert rate == 16000 and x.shape == (4000,)
    np.testing.assert_allclose(x, (left + right) / 2, atol=1e-6)
    sf.write(tmp_path / "mono.wav", left, 16000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a mono file gives no notice
        read_audio(tmp_path / "mono.wav")


def test_flac_is_lossless_and_mp3_is_read(tmp_path):
    x = tone(523.0, 0.4, 22050, amp=0.3)
    sf.write(tmp_path / "a.flac", x, 22050, subtype="PCM_16")
    y, rate = read_audio(tmp_path / "a.flac")
    assert rate == 22050
    np.testing.assert_allclose(y, x, atol=1 / 32768 + 1e-6)
    sf.write(tmp_path / "a.mp3", x, 22050)
    z, rate = read_audio(tmp_path / "a.mp3", 8000)
    assert rate == 8000 and abs(len(z) - 3200) < 1200 and abs(peak_hz(z, 8000) - 523.0) < 10


def test_bad_files_are_one_line_errors_naming_the_file(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, tone(440.0, 0.5, 8000), 8000, subtype="PCM_16")
    data = good.read_bytes()
    cases = {
        "empty.wav": (b"", "empty"),
        "text.wav": (b"this is a text file, not a recording\n" * 4, "not audio"),
        "header_cut.wav": (data[:20], "damaged or truncated"),
        "data_cut.wav": (data[:44 + 1000], "truncated"),
        "header_only.wav": (data[:44], "truncated"),
    }
    for name, (content, words) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError) as err:
            read_audio(tmp_path / name)
        message = str(err.value)
        assert name in message and words in message and "Fix:" in message and "\n" not in message, message
    with pytest.raises(UserError, match="no such file|No such file"):
        read_audio(tmp_path / "absent.wav")
    flac = tmp_path / "b.flac"
    sf.write(flac, np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32), 8000)
    (tmp_path / "cut.flac").write_bytes(flac.read_bytes()[: len(flac.read_bytes()) // 2])
    with pytest.raises(UserError, match="cut.flac"):
        read_audio(tmp_path / "cut.flac")


# ---------------------------------------------------------------- trim and fit

def test_trim_silence_keeps_the_sound_and_the_quiet_part_between():
    rate = 8000
    burst, quiet = tone(500.0, 0.2, rate), tone(500.0, 0.1, rate, amp=0.05)  # quiet: -20 dB
    x = np.concatenate([np.zeros(3000), burst, quiet, burst, np.zeros(5000)]).astype(np.float32)
    y = trim_silence(x, top_db=40.0)
    sound = 2 * len(burst) + len(quiet)
    assert sound <= len(y) <= sound + 2 * 256  # at most a window of silence kept on each side
    start = int(np.flatnonzero(np.abs(y) > 1e-3)[0])
    assert start < 256
    assert len(trim_silence(x, top_db=10.0)) < len(y)  # a tighter threshold cuts more
    assert len(trim_silence(np.zeros(1000, np.float32))) == 0
    assert len(trim_silence(np.zeros(0, np.float32))) == 0


def test_fit_length_crops_to_the_loud_part_and_centres_short_clips():
    x = np.concatenate([np.full(5000, 0.01), np.full(1000, 0.9), np.full(4000, 0.01)]).astype(np.float32)
    y = fit_length(x, 2000)
    assert y.shape == (2000,) and np.count_nonzero(y == np.float32(0.9)) == 1000  # the loud second kept whole
    short = np.ones(100, np.float32)
    z = fit_length(short, 1001)
    assert z.shape == (1001,) and z[450:550].min() == 1.0 and z[:450].max() == 0 and z[550:].max() == 0
    assert np.array_equal(fit_length(x, len(x)), x)


# ---------------------------------------------------------------- FSDD

def test_fsdd_train_split(fsdd_train):
    ds = fsdd_train
    assert len(ds) == 2700 and ds.clips.shape == (2700, 8192) and ds.clips.dtype == np.float32
    assert ds.sample_rate == 8000 and ds.classes == [str(d) for d in range(10)]
    assert ds.speaker_names == ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
    assert np.bincount(ds.labels).tolist() == [270] * 10 and np.bincount(ds.speakers).tolist() == [450] * 6
    assert ds.labels.dtype == np.int64 and ds.speakers.dtype == np.int64
    assert np.abs(ds.clips).max() <= 1.0 and np.abs(ds.clips).max(axis=1).min() > 0.01  # every clip has sound
    assert "CC BY-SA 4.0" in ds.license and "Free Spoken Digit" in ds.license
    assert ds.report["loaded"] == 2700 and ds.report["padded"] > 2000
    # clip 0 is 0_george_5.wav, trimmed and centred: compare with reading it by hand
    x, _ = read_audio(RECORDINGS / "0_george_5.wav")
    assert (ds.labels[0], ds.speakers[0]) == (0, 0)
    np.testing.assert_array_equal(ds.clips[0], fit_length(trim_silence(x), 8192))


def test_fsdd_test_split_is_takes_0_to_4():
    ds = load_audio_dataset("fsdd", SHARED_DATA, "test", sample_rate=16000, length=4000)
    assert ds.clips.shape == (300, 4000) and ds.sample_rate == 16000 and ds.report["resampled"] == 300
    pairs = ds.labels * 10 + ds.speakers
    assert np.bincount(pairs, minlength=60)[[d * 10 + s for d in range(10) for s in range(6)]].tolist() == [5] * 60
    names = [f.name for f in registry.STANDARD_DATASETS["fsdd"].splits["test"]]
    assert all(int(n[:-4].split("_")[2]) < 5 for n in names)


def test_fsdd_registry_and_info():
    spec = registry.STANDARD_DATASETS["fsdd"]
    files = spec.all_files()
    assert len(files) == 3000 and all(f.sha256 and len(f.sha256) == 64 for f in files)
    assert not {f.name for f in spec.splits["train"]} & {f.name for f in spec.splits["test"]}
    assert registry.parse_name("FSDD") == ("standard", "fsdd") and is_audio_dataset("fsdd")
    assert not is_audio_dataset("mnist")
    info = dataset_info("fsdd", SHARED_DATA)
    assert info["splits"]["train"]["count"] == 2700 and info["splits"]["test"]["count"] == 300
    assert info["splits"]["train"]["sample_rates"] == {8000: 2700}
    assert info["files"][0]["checksum"] == "ok" and len(info["files"]) == 1
    assert info["speakers"][0] == "george" and "CC BY-SA" in info["license"]
    with pytest.raises(UserError, match="audio dataset"):
        load_image_dataset("fsdd", SHARED_DATA)


def test_fsdd_missing_says_what_to_put_where(tmp_path):
    with pytest.raises(UserError) as err:
        load_audio_dataset("fsdd", tmp_path, "test", download=False)
    message = str(err.value)
    assert str(tmp_path / "fsdd" / "recordings") in message and "300 files" in message
    assert "0_george_0.wav" in message and ARCHIVE in message and "github.com/Jakobovski" in message
    assert message.count("\n") < 4  # not a list of 300 names
    info = dataset_info("fsdd", tmp_path)
    assert info["splits"]["test"]["count"] is None and len(info["splits"]["test"]["missing"]) == 300


def _fsdd_tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{TOP}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _test_split_members() -> dict[str, bytes]:
    names = [f.name for f in registry.STANDARD_DATASETS["fsdd"].splits["test"]]
    return {f"recordings/{n}": (RECORDINGS / n).read_bytes() for n in names}


def test_fsdd_download_from_a_mirror_verifies_each_file(tmp_path, monkeypatch):
    members = _test_split_members()
    members["README.md"] = b"# FSDD\n"
    members["utils/0_george_0.wav"] = b"not the recording"  # same name outside recordings/: ignored
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / ARCHIVE).write_bytes(_fsdd_tar(members))
    monkeypatch.setenv("GENFORGE_MIRROR_FSDD", mirror.as_uri())
    data_dir = tmp_path / "data"
    ds = load_audio_dataset("fsdd", data_dir, "test")
    assert len(ds) == 300
    root = data_dir / "fsdd"
    assert sorted(p.name for p in root.iterdir()) == ["recordings"]  # the archive is dropped after extraction
    assert len(list((root / "recordings").iterdir())) == 300
    assert dataset_info("fsdd", data_dir)["splits"]["test"]["count"] == 300
    with pytest.raises(UserError, match="still missing"):  # the mirror's archive lacks the train split
        load_audio_dataset("fsdd", data_dir, "train")


def test_fsdd_archive_with_a_tampered_file_is_refused(tmp_path, monkeypatch):
    members = _test_split_members()
    bad = bytearray(members["recordings/3_theo_2.wav"])
    bad[500] ^= 0xFF
    members["recordings/3_theo_2.wav"] = bytes(bad)
    root = tmp_path / "fsdd"
    root.mkdir()
    (root / ARCHIVE).write_bytes(_fsdd_tar(members))  # put there by hand: used without downloading
    with pytest.raises(UserError, match=r"3_theo_2.wav.*sha256") as err:
        load_audio_dataset("fsdd", tmp_path, "test", download=False)
    assert "not installed" in str(err.value)
    recordings = root / "recordings"
    assert not (recordings / "3_theo_2.wav").exists() and len(list(recordings.iterdir())) == 299


def test_fsdd_unreachable_mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("GENFORGE_MIRROR_FSDD", "http://127.0.0.1:9/")
    with pytest.raises(UserError, match=r"Could not download dataset 'fsdd'") as err:
        load_audio_dataset("fsdd", tmp_path / "data", "test")
    assert ARCHIVE in str(err.value) and not (tmp_path / "data").exists()


# ---------------------------------------------------------------- folders of recordings

def test_folder_of_recordings(tmp_path):
    root = tmp_path / "words"
    (root / "no").mkdir(parents=True)
    (root / "yes" / "loud").mkdir(parents=True)
    sf.write(root / "no" / "a.wav", tone(300.0, 0.3, 8000), 8000)
    sf.write(root / "no" / "b.flac", tone(350.0, 0.2, 16000), 16000)
    sf.write(root / "yes" / "c.wav", np.stack([tone(600.0, 0.2, 8000)] * 2, axis=1), 8000)
    sf.write(root / "yes" / "loud" / "d.wav", tone(700.0, 2.0, 8000), 8000)
    (root / "yes" / "broken.wav").write_text("not audio")
    (root / "yes" / "notes.txt").write_text("ignored")
    name = f"folder:{root}"
    assert is_audio_dataset(name)
    with pytest.warns(UserWarning, match="mono"):
        ds = load_audio_dataset(name, length=4000)
    assert ds.classes == ["no", "yes"] and ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.clips.shape == (4, 4000) and ds.speakers is None and ds.speaker_names == []
    r = ds.report
    assert (r["files"], r["loaded"], r["unreadable"], r["mixed_down"], r["resampled"]) == (5, 4, 1, 1, 1)
    assert r["cropped"] == 1 and r["other_files"] == 1 and "broken.wav" in r["skipped_examples"][0]
    assert "unknown" in ds.license
    assert dataset_info(name)["splits"]["train"]["count"] == 4
    with pytest.raises(UserError, match="no test split"):
        load_audio_dataset(name, split="test")


def test_folder_rules(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    sf.write(flat / "a.wav", tone(300.0, 0.3, 8000), 8000)
    ds = load_audio_dataset(f"folder:{flat}", length=1000)
    assert ds.labels is None and ds.classes == [] and ds.clips.shape == (1, 1000)
    (flat / "sub").mkdir()
    sf.write(flat / "sub" / "b.wav", tone(300.0, 0.3, 8000), 8000)
    with pytest.raises(UserError, match="unclear which class"):
        load_audio_dataset(f"folder:{flat}")
    images = tmp_path / "images"
    images.mkdir()
    (images / "x.png").write_bytes(b"")
    assert not is_audio_dataset(f"folder:{images}")
    with pytest.raises(UserError, match="No WAV/FLAC/MP3/OGG"):
        load_audio_dataset(f"folder:{images}")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.wav").write_bytes(b"")
    with pytest.raises(UserError, match="None of the 1 audio file"):
        load_audio_dataset(f"folder:{broken}")
