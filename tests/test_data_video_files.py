"""Tests for genforge.data.video's clip files: clips read back from files written here with PyAV and Pillow
(mp4, GIF, WebP, APNG), folders of clips (classes, fitting, the one notice, errors), and which datasets are
video. The Moving MNIST generator and VideoConfig are in test_data_video.py."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genforge.data.video import MOVING_MNIST, is_video_dataset, load_clip_folder, read_clip
from genforge.errors import UserError
from genforge.training.config import VideoConfig

av = pytest.importorskip("av")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No test may read the user's data dir or mirrors, or download from the network."""
    monkeypatch.delenv("GENFORGE_MIRROR_MNIST", raising=False)
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "default-data-dir"))


# ---------------------------------------------------------------- clip files

def moving_square(t=12, h=48, w=64, rgb=True) -> np.ndarray:
    clip = np.zeros((t, h, w, 3), np.uint8)
    for k in range(t):
        clip[k, 8:24, 4 + 3 * k:20 + 3 * k] = (200, 60, 30) if rgb else 180
    return clip


def write_mp4(path: Path, clip: np.ndarray, fps: int = 8) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"crf": "12"})
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
        for frame in clip:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_pillow(path: Path, clip: np.ndarray, duration_ms: int = 125) -> Path:
    frames = [Image.fromarray(f) for f in clip]
    extra = {"lossless": True} if path.suffix == ".webp" else {}
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0, **extra)
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


def test_read_clip_round_trips_each_format(tmp_path):
    clip = moving_square()
    mp4, fps = read_clip(write_mp4(tmp_path / "a.mp4", clip))
    assert mp4.shape == clip.shape and fps == 8.0 and psnr(mp4, clip) > 30
    for ext in (".gif", ".webp", ".apng"):
        got, fps = read_clip(write_pillow(tmp_path / f"a{ext}", clip))
        np.testing.assert_array_equal(got, clip)  # few colours: lossless in all three
        assert abs(fps - (1000 / 120 if ext == ".gif" else 8.0)) < 1e-6  # GIF stores centiseconds
    first, _ = read_clip(tmp_path / "a.webp", frames=5)
    np.testing.assert_array_equal(first, clip[:5])
    grey, _ = read_clip(write_mp4(tmp_path / "g.mp4", moving_square(rgb=False)))
    assert grey.shape == (12, 48, 64, 1)  # equal channels come back as one
    gif, _ = read_clip(write_pillow(tmp_path / "g.gif", moving_square(rgb=False)))
    np.testing.assert_array_equal(gif, moving_square(rgb=False)[..., :1])


@pytest.mark.parametrize("name, data", [("bad.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4),
                                         ("bad.gif", b"GIF89a" + b"\x01" * 40), ("bad.webp", b"not a webp"),
                                         ("empty.mp4", b"")])
def test_read_clip_names_an_undecodable_file(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(UserError) as err:
        read_clip(tmp_path / name)
    assert str(tmp_path / name) in str(err.value) and "Fix:" in str(err.value)


def test_read_clip_missing_file(tmp_path):
    with pytest.raises(UserError, match="No such clip"):
        read_clip(tmp_path / "nope.mp4")


def test_load_clip_folder_classes_fit_and_one_notice(tmp_path):
    root = tmp_path / "clips"
    (root / "left").mkdir(parents=True)
    (root / "right").mkdir()
    write_mp4(root / "left" / "1.mp4", moving_square())
    write_pillow(root / "left" / "2.gif", moving_square(h=40, w=80))
    write_pillow(root / "right" / "3.webp", moving_square(t=10, h=32, w=32))
    write_pillow(root / "right" / "short.webp", moving_square(t=4))
    (root / "right" / "broken.mp4").write_bytes(b"garbage" * 20)
    (root / "right" / "notes.txt").write_text("ignored")
    opts = {**VideoConfig().model_dump(), "frames": 8, "size": 32}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = load_clip_folder(root, opts)
    assert len(caught) == 1
    notice = str(caught[0].message)
    assert "2 of 3" in notice and "1 clip(s) shorter" in notice and "1 undecodable" in notice
    assert c.classes == ["left", "right"] and c.labels.tolist() == [0, 0, 1]
    assert c.clips.shape == (3, 8, 32, 32, 3) and c.tracks is None and c.digits is None and c.fps == 8.0
    assert c.report["loaded"] == 3 and c.report["too_short"] == 1 and c.report["unreadable"] == 1
    assert c.report["other_files"] == 1 and any("broken.mp4" in s for s in c.report["skipped_examples"])
    np.testing.assert_array_equal(c.clips[2], moving_square(t=10, h=32, w=32)[:8])  # already 32x32: untouched
    # 80x40 is centre-cropped to its middle 40x40 before the resize: the square's left edge leaves the crop
    cropped = np.asarray(Image.fromarray(moving_square(h=40, w=80)[0, :, 20:60]).resize((32, 32)))
    assert np.abs(c.clips[1, 0].astype(int) - cropped).max() <= 1


def test_load_clip_folder_unlabelled_and_grey(tmp_path):
    write_pillow(tmp_path / "a.gif", moving_square(rgb=False, h=64, w=64))
    write_mp4(tmp_path / "b.mp4", moving_square(rgb=False, h=64, w=64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing changed, so no notice
        c = load_clip_folder(tmp_path, {"frames": 10})
    assert c.labels is None and c.classes == [] and c.clips.shape == (2, 10, 64, 64, 1)


def test_load_clip_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_clip_folder(tmp_path / "missing", {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="No clips"):
        load_clip_folder(tmp_path / "empty", {})
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.mp4").write_bytes(b"junk" * 10)
    (bad / "y.gif").write_bytes(b"junk" * 10)
    with pytest.raises(UserError, match="None of the 2 clip file"):
        load_clip_folder(bad, {})
    short = tmp_path / "short"
    short.mkdir()
    write_pillow(short / "s.gif", moving_square(t=5))
    with pytest.raises(UserError, match=r"data.video.frames=5"):
        load_clip_folder(short, {"frames": 16})
    mixed = tmp_path / "mixed"
    (mixed / "cls").mkdir(parents=True)
    write_pillow(mixed / "cls" / "a.gif", moving_square())
    write_pillow(mixed / "top.gif", moving_square())
    with pytest.raises(UserError, match="unclear which class"):
        load_clip_folder(mixed, {})


def test_is_video_dataset(tmp_path):
    assert is_video_dataset(MOVING_MNIST) and is_video_dataset(" Moving-MNIST ")
    assert not is_video_dataset("mnist") and not is_video_dataset("fsdd") and not is_video_dataset(None)
    clips, stills, anim, sound = (tmp_path / n for n in ("clips", "stills", "anim", "sound"))
    for folder in (clips, stills, anim, sound):
        (folder / "c").mkdir(parents=True)
    write_mp4(clips / "c" / "a.mp4", moving_square())
    Image.fromarray(moving_square()[0]).save(stills / "c" / "a.png")
    write_pillow(anim / "c" / "a.webp", moving_square())
    (sound / "c" / "a.wav").write_bytes(b"RIFF")
    assert is_video_dataset(f"folder:{clips}") and is_video_dataset(f"folder:{anim}")
    assert not is_video_dataset(f"folder:{stills}") and not is_video_dataset(f"folder:{sound}")
    assert not is_video_dataset(f"folder:{tmp_path / 'nowhere'}")
