"""Clips through media/ (issue 25): MP4, animated WebP, GIF and APNG written and read back (frames, held frames,
frame count, fps), the record as XMP where the container has a place for it, C2PA signed, read and broken by
tampering in every format, the keyed image mark pooled over frames (found in marked clips after each writer, not in
unmarked ones, not inflated by still clips), filmstrips, `write_clips`' naming rules, and `genforge verify` on
clip files."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from genforge.cli import app
from genforge.media import ImageMark, MarkKey, Record
from genforge.media.images import decode
from genforge.media.provenance import SOURCE_TYPE, c2pa_read, throwaway_certificate
from genforge.media.clip_mark import clip_scores, detect_clip_mark
from genforge.media.video import (decode_clip, encode_clip, filmstrip, save_filmstrip,
                                  write_clips)
from genforge.media.video_containers import encode_mp4
from genforge.media.watermark import psnr
from genforge.verification import GENERATED, NOT_FOUND, TAMPERED, verify

pytest.importorskip("av", reason="the video extra is installed by the test extra")

KEY = MarkKey(b"0123456789abcdef0123456789abcdef")
OTHER = MarkKey(b"fedcba9876543210fedcba9876543210")
DIGITS = Path(__file__).resolve().parents[1] / "src/genforge/data/embedded/mnist-mini/t10k-images-idx3-ubyte.gz"
runner = CliRunner()


@pytest.fixture(scope="module")
def digits():
    raw = gzip.decompress(DIGITS.read_bytes())
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)


def moving(digits, i, frames=16, side=64, speed=3.6):
    """A Moving-MNIST-like grey clip (T, side, side, 1): digit i bouncing off the walls, standing in for a
    generated one (the data module's generator is tested on its own)."""
    rng = np.random.default_rng(i)
    pos, angle = rng.uniform(0, side - 28, 2), rng.uniform(0, 2 * np.pi)
    vel = speed * np.array([np.cos(angle), np.sin(angle)])
    clip = np.zeros((frames, side, side, 1), np.uint8)
    for t in range(frames):
        x, y = np.rint(pos).astype(int)
        clip[t, y:y + 28, x:x + 28, 0] = digits[i]
        pos = pos + vel
        for k in range(2):
            if not 0 <= pos[k] <= side - 28:
                pos[k], vel[k] = np.clip(pos[k], 0, side - 28), -vel[k]
    return clip


def colour(clip):
    """A grey clip tinted onto a smooth colour background: colour content with edges in the chroma."""
    g = clip.astype(np.float64) / 255
    yy, xx = np.mgrid[0:clip.shape[1], 0:clip.shape[2]] / max(clip.shape[1] - 1, 1)
    back = np.stack([40 + 60 * xx, 50 + 40 * yy, 90 - 30 * xx], -1)
    return np.clip(np.rint(back * (1 - g) + np.array([230, 180, 60]) * g), 0, 255).astype(np.uint8)


def _record(**kw):
    return Record(model="moving-tiny", model_hash="sha256:abc", family="video-gan", version="0.1.0", seed=7,
                  parameters={"label": 3, **kw}, mark=KEY.id, mark_scheme="image-v2")


@pytest.fixture(scope="module")
def signer():
    pytest.importorskip("c2pa", reason="the provenance extra is installed by the test extra")
    return throwaway_certificate()[0]


# ----------------------------------------------------------------------------------------------- writers

@pytest.mark.parametrize("fmt", ["webp", "apng", "gif"])
def test_lossless_writers_round_trip_grey_clips_exactly_with_held_frames(digits, fmt):
    clip = moving(digits, 1)
    clip[6] = clip[7] = clip[5]  # held frames: the writers merge them into one longer frame
    frames, fps, _, found = decode_clip(encode_clip(clip, fmt, fps=8))
    assert found == fmt and fps == 8.0
    assert frames.shape == clip.shape and np.array_equal(frames, clip)


@pytest.mark.parametrize("fmt", ["webp", "apng"])
def test_webp_and_apng_keep_colour_exactly_and_any_frame_rate(digits, fmt):
    clip = colour(moving(digits, 2, frames=9))
    frames, fps, record, _ = decode_clip(encode_clip(clip, fmt, fps=7.5, record=_record()))
    assert np.array_equal(frames, clip) and fps == 7.5
    assert record["parameters"]["clip"] == {"frames": 9, "fps": 7.5, "size": [64, 64], "scale": 1}


def test_gif_colour_goes_through_one_palette_and_keeps_its_timing(digits):
    clip = colour(moving(digits, 3, frames=10))
    frames, fps, record, fmt = decode_clip(encode_clip(clip, "gif", fps=12.5, record=_record()))
    assert fmt == "gif" and record is None  # GIF carries no XMP
    assert frames.shape == clip.shape and psnr(frames, clip) > 35  # measured 42 dB
    assert abs(fps - 12.5) < 0.2  # 10 ms ticks: 80 ms frames exactly here


def test_mp4_is_h264_within_a_measured_psnr_bound(digits):
    import av

    grey = moving(digits, 4)
    data = encode_clip(grey, "mp4", fps=8)
    frames, fps, _, fmt = decode_clip(data)
    assert fmt == "mp4" and fps == 8.0 and frames.shape == grey.shape  # grey stays grey (C=1)
    assert psnr(frames, grey) > 45  # measured 52-55 dB at crf 18
    tinted = colour(grey)
    frames = decode_clip(encode_clip(tinted, "mp4", fps=24))[0]
    assert frames.shape == tinted.shape and psnr(frames, tinted) > 31  # 4:2:0 chroma: measured 34-36 dB
    with av.open(__import__("io").BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"


def test_odd_frame_sizes_reach_mp4_at_twice_the_scale(digits):
    clip = colour(moving(digits, 5, frames=6, side=34))[:, :27, :31]
    assert not np.array_equal(clip[0], clip[1])
    data = encode_clip(clip, "mp4", fps=8, record=_record())
    stored, _, record, _ = decode_clip(data)
    assert stored.shape == (6, 54, 62, 3)  # even sides, no invented row or column
    assert record["parameters"]["clip"]["scale"] == 2 and record["parameters"]["clip"]["size"] == [27, 31]
    native = decode_clip(data, native=True)[0]
    assert native.shape == clip.shape and psnr(native, clip) > 33
    assert decode_clip(encode_clip(clip, "webp", fps=8, scale=3))[0].shape == (6, 81, 93, 3)  # scale for viewing
    still = np.repeat(clip[:1], 5, axis=0)  # one frame throughout: only the record can say how many
    assert len(decode_clip(encode_clip(still, "webp", 8))[0]) == 1
    assert len(decode_clip(encode_clip(still, "webp", 8, _record()))[0]) == 5


def test_xmp_record_round_trips_where_the_container_has_a_place(digits):
    clip = moving(digits, 6, frames=4)
    for fmt in ("webp", "apng", "mp4"):
        record = decode_clip(encode_clip(clip, fmt, 8, _record()))[2]
        assert record["digital_source_type"] == SOURCE_TYPE, fmt
        assert record["model"] == "moving-tiny" and record["seed"] == 7 and record["mark"] == KEY.id
        assert record["parameters"]["label"] == 3 and record["parameters"]["clip"]["frames"] == 4
        assert decode_clip(encode_clip(clip, fmt, 8))[2] is None  # no record: no XMP
    assert decode_clip(encode_clip(clip, "gif", 8, _record()))[2] is None


def test_bad_clips_and_bytes_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        encode_clip(np.zeros((4, 16, 16, 3), np.float32), "mp4")
    with pytest.raises(ValueError, match="clip format"):
        encode_clip(np.zeros((4, 16, 16, 3), np.uint8), "avi")
    with pytest.raises(ValueError, match="fps"):
        encode_clip(np.zeros((4, 16, 16, 3), np.uint8), "gif", fps=0)
    with pytest.raises(ValueError, match="not a clip"):
        decode_clip(b"\x00" * 300)


# -------------------------------------------------------------------------------------------------- C2PA

@pytest.mark.parametrize("fmt", ["mp4", "webp", "gif", "apng"])
def test_c2pa_signs_every_clip_format_and_tampering_breaks_it(digits, signer, fmt):
    clip = moving(digits, 7, frames=8)
    data = encode_clip(clip, fmt, 8, _record(), signer)
    found = c2pa_read(data)
    assert found["state"] == "Valid" and found["source_type"] == SOURCE_TYPE
    assert set(found["failures"]) <= {"signingCredential.untrusted"}  # a test CA is in no trust list
    assert found["record"]["model"] == "moving-tiny" and found["record"]["parameters"]["clip"]["frames"] == 8
    frames, fps, _, _ = decode_clip(data)  # still a playable clip after signing
    assert fps == 8.0 and (np.array_equal(frames, clip) if fmt != "mp4" else psnr(frames, clip) > 40)
    tampered = bytearray(data)
    tampered[len(data) - 40] ^= 0x55  # inside the last frame's data (GIF, WebP, APNG) or the movie's boxes (MP4)
    assert c2pa_read(bytes(tampered))["state"] == "Invalid"
    assert c2pa_read(encode_clip(clip, fmt, 8, _record())) is None  # unsigned: no manifest


# -------------------------------------------------------------------------------------------------- mark

@pytest.mark.parametrize("fmt", ["mp4", "webp", "gif"])
def test_pooled_mark_is_found_in_marked_clips_and_nowhere_else(digits, fmt):
    mark = ImageMark(KEY)
    for i in (10, 11):
        plain = moving(digits, i)
        marked = mark.embed(plain)  # what the generators do: the image mark on every frame
        found = detect_clip_mark(mark, decode_clip(encode_clip(marked, fmt, 8))[0])
        assert found["detected"] and found["z"] > 10, found  # measured 18-20
        assert found["frames"] == 16 and found["key_id"] == KEY.id
        assert not detect_clip_mark(ImageMark(OTHER), decode_clip(encode_clip(marked, fmt, 8))[0])["detected"]
        assert not detect_clip_mark(mark, decode_clip(encode_clip(plain, fmt, 8))[0])["detected"]


def test_pooling_does_not_count_a_still_frame_twice(digits):
    """A still clip is one frame's evidence: naive pooling (all frames independent) would multiply its z by
    sqrt(T) and turn chance agreement into detections."""
    mark = ImageMark(KEY)
    zs = []
    for i in range(20, 44):
        frame = moving(digits, i, frames=1)
        still = np.repeat(frame, 12, axis=0)
        pooled, per_frame, _ = clip_scores(mark, still)
        assert pooled == pytest.approx(mark.scores(frame)[0][0]) and np.allclose(per_frame, pooled)
        assert not detect_clip_mark(mark, still)["detected"]
        zs.append(pooled)
    assert np.std(zs) < 1.6 and max(zs) < 4  # z ~ N(0, 1) per still clip, not N(0, 12)
    marked = mark.embed(moving(digits, 45))  # moving content adds observations: pooled beats the median frame
    assert clip_scores(mark, marked)[0] > float(np.median(mark.scores(marked)[0]))


def test_a_clip_is_found_after_h264_at_crf_28_and_pooling_helps(digits):
    """The issue's clip aim: H.264 at crf 28 (libx264's default is 23). The pooled z beats the median frame's."""
    mark = ImageMark(KEY)
    for i in (10, 12):
        frames = decode_clip(encode_mp4(mark.embed(moving(digits, i)), 8, crf=28))[0]
        found = detect_clip_mark(mark, frames)
        assert found["detected"] and found["scheme"] == "image-v2", found
        assert found["z_pooled"] > float(np.median(mark.scores(frames)[0])), found


def test_a_version_1_clip_still_verifies(digits):
    """Clips written before version 2 carry the old lattice: the v1 detector still reads them, v2 does not."""
    from genforge.media.legacy_mark import ImageMarkV1

    old = ImageMarkV1(KEY).embed(moving(digits, 14))
    assert detect_clip_mark(ImageMarkV1(KEY), old)["detected"]
    assert not detect_clip_mark(ImageMark(KEY), old)["detected"]


# --------------------------------------------------------------------------------------- filmstrip, files

def test_filmstrip_puts_frames_across_and_samples_down(digits):
    clips = np.stack([moving(digits, i, frames=5, side=32) for i in range(3)])
    strip = filmstrip(clips, pad=2)
    assert strip.shape == (3 * 34 + 2, 5 * 34 + 2, 1)
    for i in range(3):
        for t in range(5):
            y, x = 2 + i * 34, 2 + t * 34
            assert np.array_equal(strip[y:y + 32, x:x + 32], clips[i, t])
    assert filmstrip(clips, scale=2, pad=1).shape == (2 * (3 * 33 + 1), 2 * (5 * 33 + 1), 1)


def test_write_clips_names_files_as_documented(digits, tmp_path):
    clips = np.stack([moving(digits, i, frames=4, side=32) for i in range(3)])
    folder = write_clips(clips, str(tmp_path / "out") + "/", fps=8, record=_record())
    assert [p.name for p in folder] == ["clip_000.mp4", "clip_001.mp4", "clip_002.mp4"]
    assert [decode_clip(p.read_bytes())[2]["parameters"]["index"] for p in folder] == [0, 1, 2]
    assert [p.name for p in write_clips(clips, tmp_path / "out", 8, fmt="gif")][1] == "clip_001.gif"  # existing folder
    assert [p.name for p in write_clips(clips, tmp_path / "many.webp", 8)] == ["many_000.webp", "many_001.webp",
                                                                              "many_002.webp"]
    one = write_clips(clips[:1], tmp_path / "one.apng", 8, record=_record())
    assert one == [tmp_path / "one.apng"] and decode_clip(one[0].read_bytes())[3] == "apng"
    assert "index" not in decode_clip(one[0].read_bytes())[2]["parameters"]
    strip = write_clips(clips, tmp_path / "strip.png", 8, record=_record())  # .png: a filmstrip
    pixels, xmp, fmt = decode(strip[0].read_bytes())
    assert fmt == "PNG" and pixels.shape == (3 * 34 + 2, 4 * 34 + 2, 1) and b"filmstrip" in xmp
    apng = write_clips(clips[:1], tmp_path / "anim.png", 8, filmstrip=False)  # unless asked for a clip
    assert decode_clip(apng[0].read_bytes())[3] == "apng"
    assert decode(write_clips(clips, tmp_path / "s.webp", 8, filmstrip=True)[0].read_bytes())[0].shape[0] == 104
    arr = write_clips(clips, tmp_path / "raw.npy", 8)
    assert np.array_equal(np.load(arr[0]), clips)
    assert not list(tmp_path.rglob("*.tmp"))  # written whole, then renamed
    with pytest.raises(ValueError, match="--out must end in"):
        write_clips(clips, tmp_path / "x.avi", 8)
    with pytest.raises(ValueError, match="format asked for"):
        write_clips(clips[:1], tmp_path / "x.mp4", 8, fmt="gif")


# ------------------------------------------------------------------------------------------------ verify

@pytest.fixture()
def keyfile(tmp_path, monkeypatch):
    monkeypatch.delenv("GENFORGE_MARK_KEY", raising=False)
    monkeypatch.delenv("GENFORGE_MARK_KEY_FILE", raising=False)
    path = tmp_path / "mark.key"
    path.write_text(KEY.secret.decode())
    return path


def test_verify_reports_record_manifest_and_pooled_mark_of_clips(digits, signer, keyfile, tmp_path):
    marked = ImageMark(KEY).embed(moving(digits, 13, frames=8))
    signed = write_clips(marked, tmp_path / "signed.mp4", 8, _record(), signer)[0]
    result = runner.invoke(app, ["verify", str(signed), "--key", str(keyfile), "--json"])
    assert result.exit_code == GENERATED, result.output
    report = json.loads(result.output)
    assert report["kind"] == "video" and "8 frames of 64x64, 8 fps" in report["source"]
    assert report["metadata"]["model"] == "moving-tiny" and report["c2pa"]["state"] == "Valid"
    assert report["marks"][0]["detected"] and report["marks"][0]["frames"] == 8
    text = runner.invoke(app, ["verify", str(signed), "--key", str(keyfile)]).output
    assert "C2PA: Valid" in text and "mark (key" in text and "found" in text
    # GIF: no XMP, so without the key nothing says "generated"; with it, the mark does
    gif = write_clips(marked, tmp_path / "plain.gif", 8, _record())[0]
    report = verify(str(gif), [])
    assert report.verdict == NOT_FOUND and report.metadata is None and any("GIF" in n for n in report.notes)
    assert verify(str(gif), [KEY]).verdict == GENERATED and not verify(str(gif), [OTHER]).marks[0]["detected"]
    for fmt in ("webp", "apng"):  # animated stills' formats are read as clips, their XMP as the record
        report = verify(str(write_clips(marked, tmp_path / f"c.{fmt}", 8, _record(), filmstrip=False)[0]), [KEY])
        assert report.kind == "video" and report.verdict == GENERATED and report.metadata["model"] == "moving-tiny"
        assert report.marks[0]["detected"]
    # an odd-sized clip, enlarged for MP4: found with the record's scale and, record stripped, through the views
    odd_clip = ImageMark(KEY).embed(moving(digits, 13, frames=8)[:, :63, :61])  # marked at its own size
    odd = write_clips(odd_clip, tmp_path / "odd.mp4", 8, _record())[0]
    assert verify(str(odd), [KEY]).marks[0]["detected"]
    unsigned = write_clips(odd_clip, tmp_path / "bare.mp4", 8)[0]
    assert verify(str(unsigned), [KEY]).marks[0]["detected"]
    # tampered after signing: exit 3
    tampered = bytearray(signed.read_bytes())
    tampered[-40] ^= 0x55
    (tmp_path / "bad.mp4").write_bytes(bytes(tampered))
    assert runner.invoke(app, ["verify", str(tmp_path / "bad.mp4")]).exit_code == TAMPERED


def test_verify_cuts_a_filmstrip_back_into_clips(digits, keyfile, tmp_path):
    mark = ImageMark(KEY)
    clips = np.stack([mark.embed(moving(digits, i, frames=6)) for i in (14, 15, 16)])
    strip = save_filmstrip(clips, tmp_path / "strip.png", scale=2, record=_record())
    report = verify(str(strip), [KEY])
    assert report.kind == "image" and report.verdict == GENERATED
    assert report.marks[0]["tiles"] == 3 and report.marks[0]["tiles_detected"] == 3
    plain = save_filmstrip(np.stack([moving(digits, i, frames=6) for i in (14, 15, 16)]), tmp_path / "p.png",
                           record=_record())
    assert verify(str(plain), [KEY]).marks[0]["tiles_detected"] == 0


def test_verify_explains_unreadable_clips_in_one_line(tmp_path, digits):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(bytes(range(256)) * 4)
    result = runner.invoke(app, ["verify", str(junk)])
    assert result.exit_code == 2 and "junk.mp4" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    half = tmp_path / "half.gif"
    half.write_bytes(encode_clip(moving(digits, 17, frames=4), "gif", 8)[:200])
    result = runner.invoke(app, ["verify", str(half)])
    assert result.exit_code == 2 and "half.gif" in result.output
    result = runner.invoke(app, ["verify", str(tmp_path / "missing.mp4")])
    assert result.exit_code == 2 and "no such file" in result.output


def test_small_frames_are_written_to_mp4_large_enough_to_keep_the_mark(digits):
    """H.264 codes 16x16 macroblocks: 32-px frames lost the mark at crf 28 (benchmarks/RESULTS.md), 64-px ones kept
    it. The enlargement is recorded, and `verify` (and decode_clip(native=True)) undo it."""
    from genforge.media.video import mp4_scale

    assert mp4_scale(32, 32) == 2 and mp4_scale(16, 24) == 4 and mp4_scale(64, 64) == 1 and mp4_scale(2, 2) == 16
    mark, big, native = ImageMark(KEY), [], []
    for i in range(15, 23):
        clip = mark.embed(moving(digits, i, side=32))
        data = encode_clip(clip, "mp4", 8, _record(), scale=mp4_scale(32, 32))
        frames, _, record, _ = decode_clip(data, native=True)
        assert frames.shape == clip.shape and record["mark_scheme"] == "image-v2"
        # a re-encode at crf 28 of what was written (record gone), against the same of the clip at 32 px
        big.append(detect_clip_mark(mark, decode_clip(encode_mp4(decode_clip(data)[0], 8, crf=28))[0]))
        native.append(detect_clip_mark(mark, decode_clip(encode_mp4(clip, 8, crf=28))[0]))
    assert all(b["z"] > n["z"] + 1 for b, n in zip(big, native)), [(b["z"], n["z"]) for b, n in zip(big, native)]
    # measured 5 of 8 against 0 of 8 on these digit-filled frames; 52 of 52 generated clips (benchmarks/clip_marks.py)
    assert sum(b["detected"] for b in big) >= 4 > sum(n["detected"] for n in native)
