"""Tests for genforge.data.video: the Moving MNIST generator against its rules (box, constant speed, exact
reflections, determinism per index, labels = the digits pasted, split), and VideoConfig's validation. The real
MNIST files come from shared/data. Clip files and folders of clips are in test_data_video_files.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from genforge.data import load_image_dataset
from genforge.data import video
from genforge.data.video import MovingMnist
from genforge.errors import UserError
from genforge.training.config import VideoConfig, apply_overrides, validate

av = pytest.importorskip("av")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BOX = 64 - 28
EPS = 1e-4  # float32 tracks of float64 positions up to 36 px


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No test may read the user's data dir or mirrors, or download from the network."""
    monkeypatch.delenv("GENFORGE_MIRROR_MNIST", raising=False)
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "default-data-dir"))


def mm(split="train", **opts) -> MovingMnist:
    assert (SHARED_DATA / "mnist").is_dir(), f"shared MNIST not found: expected {SHARED_DATA / 'mnist'}"
    return MovingMnist(split, opts, data_dir=SHARED_DATA, download=False)


@pytest.fixture(scope="module")
def mnist():
    """split -> (images (N, 28, 28), labels, {image bytes: index}), read by the image loader, not video.py."""
    out = {}
    for split in ("train", "test"):
        ds = load_image_dataset("mnist", SHARED_DATA, split=split, download=False)
        images, labels = ds.images.numpy()[..., 0], ds.labels.numpy()
        lookup: dict[bytes, int] = {}
        for i, img in enumerate(images):
            lookup.setdefault(img.tobytes(), i)
        out[split] = (images, labels, lookup)
    return out


def boxes_of(tracks: np.ndarray) -> np.ndarray:
    return np.rint(tracks).astype(int)  # the pixel each digit is pasted at


def identify(clips, i: int, lookup: dict) -> list[int] | None:
    """The MNIST index of each digit of clip i: its box cropped on some frame where no other digit's ink
    reaches into it equals an MNIST image exactly (None if every frame is crowded)."""
    pos = boxes_of(clips.tracks[i])  # (T, D, 2)
    found = []
    for k in range(pos.shape[1]):
        crops = (clips.clips[i, t, y:y + 28, x:x + 28, 0].tobytes() for t, (x, y) in enumerate(pos[:, k]))
        match = next((lookup[c] for c in crops if c in lookup), None)
        if match is None:
            return None
        found.append(match)
    return found


def render(images: np.ndarray, which: list[int], tracks: np.ndarray) -> np.ndarray:
    """The clip rebuilt independently: each digit pasted at its rounded track, combined by max."""
    pos = boxes_of(tracks)
    out = np.zeros((len(tracks), 64, 64), np.uint8)
    for t in range(len(tracks)):
        for k, idx in enumerate(which):
            x, y = pos[t, k]
            out[t, y:y + 28, x:x + 28] = np.maximum(out[t, y:y + 28, x:x + 28], images[idx])
    return out


# ---------------------------------------------------------------- the generator's rules

def test_defaults_match_config():
    assert VideoConfig().model_dump() == video.DEFAULT_OPTIONS
    m = mm()
    assert len(m) == 60000 and m.frames == 16 and m.size == 64 and m.classes == [str(d) for d in range(10)]


@pytest.mark.parametrize("digits", [1, 2, 3])
@pytest.mark.parametrize("motion", ["bounce", "stochastic"])
def test_clip_is_its_digits_pasted_inside_the_box(mnist, digits, motion):
    """Rebuilt from the MNIST images found in it, each clip matches exactly: digits inside the box on every
    frame, at their rounded tracks, combined by max, nothing anywhere else."""
    images, labels, lookup = mnist["train"]
    c = mm(digits=digits, motion=motion, speed=[2.0, 6.0]).clips(range(40))
    assert c.clips.shape == (40, 16, 64, 64, 1) and c.clips.dtype == np.uint8
    assert c.tracks.shape == (40, 16, digits, 2) and c.tracks.dtype == np.float32
    assert c.tracks.min() >= 0 and c.tracks.max() <= BOX
    inside = np.zeros((40, 16, 64, 64), bool)
    pos = boxes_of(c.tracks)
    for i, t, k in np.ndindex(40, 16, digits):
        x, y = pos[i, t, k]
        inside[i, t, y:y + 28, x:x + 28] = True
        assert c.clips[i, t, y:y + 28, x:x + 28].max() > 0  # each digit is drawn on every frame
    assert not c.clips[..., 0][~inside].any()  # and nothing outside the digits' boxes
    checked = 0
    for i in range(40):
        which = identify(c, i, lookup)
        if which is None:  # the digits overlap on every frame: nothing to crop cleanly
            continue
        np.testing.assert_array_equal(c.clips[i, ..., 0], render(images, which, c.tracks[i]))
        np.testing.assert_array_equal(c.digits[i], labels[which])
        checked += 1
    assert checked >= {1: 40, 2: 20, 3: 4}[digits]  # crowded 3-digit clips are often not separable


def steps(tracks: np.ndarray) -> np.ndarray:
    return np.diff(tracks.astype(np.float64), axis=0)  # (T-1, D, 2)


def at_wall(v: np.ndarray) -> np.ndarray:
    return (np.abs(v) < EPS) | (np.abs(v - BOX) < EPS)


def test_bounce_speed_is_constant_between_bounces():
    c = mm(digits=2, speed=[2.0, 5.0]).clips(range(64))
    speeds = []
    for tr in c.tracks:
        d = steps(tr)
        for k in range(2):
            for axis in range(2):
                v = np.abs(d[:, k, axis]).max()  # the full step; only a step onto a wall is shorter
                free = ~at_wall(tr[1:, k, axis])
                assert free.sum() >= 5
                np.testing.assert_allclose(np.abs(d[free, k, axis]), v, atol=EPS)
                assert np.all(np.abs(d[~free, k, axis]) <= v + EPS)
                speeds.append(v)
    # one speed per clip and digit, drawn from [2, 5]
    full = np.array(speeds).reshape(-1, 2)
    norm = np.hypot(full[:, 0], full[:, 1])
    assert norm.min() >= 2.0 - EPS and norm.max() <= 5.0 + EPS and norm.std() > 0.5


def test_default_speed_is_the_original_step():
    c = mm().clips(range(16))
    for tr in c.tracks:
        d, free = steps(tr)[:, 0], ~at_wall(tr[1:, 0]).any(axis=1)
        np.testing.assert_allclose(np.hypot(d[free, 0], d[free, 1]), 0.1 * BOX, atol=EPS)


@pytest.mark.parametrize("motion", ["bounce", "stochastic"])
def test_velocity_turns_only_at_a_wall(motion):
    """A velocity component changes sign only on a frame where the digit touches a wall ("bounce": that
    component's wall; "stochastic" draws both components again at any wall), and always turns away from it."""
    c = mm(digits=2, motion=motion, speed=[2.0, 5.0]).clips(range(64))
    turns = 0
    for tr in c.tracks.astype(np.float64):
        d = steps(tr)
        for t in range(1, len(tr) - 1):
            for k in range(2):
                for axis in range(2):
                    before, after, here = d[t - 1, k, axis], d[t, k, axis], tr[t, k, axis]
                    if before * after < 0:
                        turns += 1
                        assert at_wall(here) if motion == "bounce" else at_wall(tr[t, k]).any(), (t, k, axis)
                    if abs(here) < EPS:
                        assert after > 0
                    elif abs(here - BOX) < EPS:
                        assert after < 0
    assert turns >= 40  # the rule was exercised


def test_stochastic_changes_velocity_only_at_walls():
    bounce = mm(digits=1, speed=[2.0, 5.0]).clips(range(64)).tracks.astype(np.float64)
    stoch = mm(digits=1, motion="stochastic", speed=[2.0, 5.0]).clips(range(64)).tracks.astype(np.float64)
    changes = 0
    for b, s in zip(bounce, stoch):
        d = steps(s)[:, 0]
        first_wall = next((t for t in range(1, len(s)) if at_wall(s[t, 0]).any()), len(s))
        np.testing.assert_allclose(s[:first_wall + 1], b[:first_wall + 1], atol=EPS)  # the bounce twin until then
        for t in range(1, len(d)):
            wall = at_wall(s[t, 0]).any()
            if not np.allclose(d[t], d[t - 1], atol=EPS) and not wall:
                assert at_wall(s[t - 1, 0]).any() or at_wall(s[t + 1, 0]).any()  # a step into / out of a wall
            if wall and t + 1 < len(s) and not at_wall(s[t + 1, 0]).any():
                sp = np.hypot(*d[t])
                assert 2.0 - EPS <= sp <= 5.0 + EPS  # a fresh speed from [lo, hi]
                changes += not np.isclose(sp, np.hypot(*d[t - 1]), atol=1e-3) or \
                    not np.allclose(np.abs(d[t]), np.abs(d[t - 1]), atol=1e-3)
    assert changes >= 10  # the direction or speed really was drawn again


def test_same_index_same_clip_across_objects_orders_and_batches():
    a, b = mm(digits=2, motion="stochastic"), mm(digits=2, motion="stochastic")
    whole = a.clips([3, 17, 1000, 59999, 123456])
    for i, idx in enumerate([3, 17, 1000, 59999, 123456]):
        alone = b.clips([idx])
        np.testing.assert_array_equal(alone.clips[0], whole.clips[i])
        np.testing.assert_array_equal(alone.tracks[0], whole.tracks[i])
        assert alone.labels[0] == whole.labels[i]
    shuffled = b.clips([59999, 3, 1000])
    np.testing.assert_array_equal(shuffled.clips, whole.clips[[3, 0, 2]])
    longer = mm(digits=2, motion="stochastic", frames=24).clips([3, 17])
    np.testing.assert_array_equal(longer.clips[:, :16], whole.clips[:2])  # a longer clip starts as the shorter


def test_clips_are_pinned_across_machines():
    """Clip i is fixed forever: these digests were computed once; any change to the generator (or a numpy that
    changed PCG64 or SeedSequence) breaks every saved dataset index and must be deliberate."""
    c = mm().clips([0, 1])
    np.testing.assert_allclose(c.tracks[0, :3, 0], [[21.28829575, 17.61812592], [18.3100605, 15.59572411],
                                                    [15.33182335, 13.5733223]], atol=1e-5)
    assert hashlib.sha256(c.clips.tobytes()).hexdigest()[:16] == "ca60947d794130c4"


def test_different_indices_and_splits_differ():
    c = mm().clips(range(32))
    flat = c.clips.reshape(32, -1)
    assert len({row.tobytes() for row in flat}) == 32
    assert not np.array_equal(mm("test").clips(range(8)).clips, c.clips[:8])


def test_labels_are_the_digits_shown(mnist):
    images, labels, lookup = mnist["train"]
    one = mm().clips(range(24))
    for i in range(24):
        (idx,) = identify(one, i, lookup)
        assert one.labels[i] == labels[idx] == one.digits[i, 0]
    m2 = mm(digits=2)
    assert m2.classes == video.pair_classes() and len(m2.classes) == 55 and m2.classes[-1] == "9+9"
    two = m2.clips(range(64))
    for i in range(64):
        a, b = sorted(two.digits[i])
        assert m2.classes[two.labels[i]] == f"{a}+{b}"
        which = identify(two, i, lookup)
        if which is not None:
            assert sorted(labels[which]) == [a, b]
    assert len(set(two.labels.tolist())) > 20
    three = mm(digits=3).clips(range(4))
    assert three.labels is None and three.digits.shape == (4, 3) and mm(digits=3).classes == []


def test_test_split_draws_test_digits(mnist):
    test_images, test_labels, test_lookup = mnist["test"]
    train_lookup = mnist["train"][2]
    c = mm("test").clips(range(24))
    in_train = 0
    for i in range(24):
        (idx,) = identify(c, i, test_lookup)
        assert c.labels[i] == test_labels[idx]
        x, y = boxes_of(c.tracks[i, 0, 0])
        in_train += c.clips[i, 0, y:y + 28, x:x + 28, 0].tobytes() in train_lookup
    assert in_train <= 1  # (MNIST has a handful of train/test duplicates)
    c_train = mm("train").clips(range(24))
    assert all(identify(c_train, i, train_lookup) is not None for i in range(24))


def test_downsampled_frames_are_area_averages():
    full = mm(digits=2).clips(range(6))
    half = mm(digits=2, size=32).clips(range(6))
    assert half.clips.shape == (6, 16, 32, 32, 1)
    np.testing.assert_array_equal(half.tracks, full.tracks)  # still in canvas pixels
    mean = full.clips[..., 0].reshape(6, 16, 32, 2, 32, 2).astype(np.float64).mean(axis=(3, 5))
    assert np.abs(half.clips[..., 0] - mean).max() <= 0.5 + 1e-9
    odd = mm(digits=2, size=48).clips(range(2))
    assert odd.clips.shape == (2, 16, 48, 48, 1)
    # exact area average: 64 -> 192 by repeating each pixel 3x, then 4x4 means (Pillow's BOX is not fractional)
    up = full.clips[:2, ..., 0].repeat(3, axis=2).repeat(3, axis=3).astype(np.float64)
    ref = up.reshape(2, 16, 48, 4, 48, 4).mean(axis=(3, 5))
    assert np.abs(odd.clips[..., 0] - ref).max() <= 0.5 + 1e-6


def test_bad_options_and_indices_and_missing_mnist(tmp_path):
    with pytest.raises(UserError, match="speed"):
        mm(speed=[5.0, 2.0])
    with pytest.raises(UserError, match="size"):
        mm(size=30 + 1)
    with pytest.raises(UserError, match="Unknown video option"):
        mm(colour=True)
    with pytest.raises(UserError, match=">= 0"):
        mm().clips([-1])
    with pytest.raises(UserError) as err:
        MovingMnist("train", {}, data_dir=tmp_path, download=False)
    assert "moving-mnist" in str(err.value) and str(tmp_path / "mnist") in str(err.value)


# ---------------------------------------------------------------- config

def test_video_config_validation():
    cfg = validate(apply_overrides({}, ["data.video.speed=[2, 5]", "data.video.size=32", "data.video.digits=2",
                                        "data.video.motion=stochastic"]))
    assert cfg.data.video.speed == [2.0, 5.0] and cfg.data.video.size == 32
    for override, words in [("data.video.speed=[5, 2]", "lo <= hi"), ("data.video.speed=[0, 2]", "lo <= hi"),
                            ("data.video.speed=[3]", "[lo, hi]"), ("data.video.speed=[1, 40]", "at most"),
                            ("data.video.size=33", "even side"), ("data.video.size=80", "even side"),
                            ("data.video.size=8", "even side"), ("data.video.canvas=63", "even"),
                            ("data.video.canvas=16", "greater than or equal to 32"),
                            ("data.video.frames=1", "greater than or equal to 2"),
                            ("data.video.frames=65", "less than or equal to 64"),
                            ("data.video.digits=4", "less than or equal to 3"),
                            ("data.video.motion=wobble", "'bounce' or 'stochastic'"),
                            ("data.video.fps=0", "greater than 0")]:
        with pytest.raises(UserError) as err:
            validate(apply_overrides({}, [override]))
        key = override.split("=")[0]
        assert key in str(err.value) and words in str(err.value), (override, str(err.value))
    with pytest.raises(UserError, match="Unknown config key 'data.video.colour'"):
        apply_overrides({}, ["data.video.colour=1"])
    assert all(f.description for f in VideoConfig.model_fields.values())
