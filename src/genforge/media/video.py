"""Generated clips as files and bytes: MP4 (H.264), animated WebP, GIF and APNG, each with the run's provenance
where the container has a place for it and a signed C2PA manifest when a signer is given; filmstrips (frames
across, samples down) as still images for people to look at; the keyed image mark detected with its evidence
pooled over a clip's frames.

A clip is uint8 (T, H, W, C), C = 1 (grey) or 3; many clips (N, T, H, W, C). What each format keeps:
- MP4: H.264 in yuv420p at crf 18 (video_containers.MP4_CRF): lossy; grey Moving-MNIST clips come back at
  ~48 dB PSNR, colour loses what 4:2:0 chroma subsampling drops. yuv420p needs even sides: a clip with an odd
  side is written at twice the scale asked (nearest neighbour), never padded or cropped, so no pixel is invented
  and the mark's 8x8 blocks stay whole; the record says the scale, and `decode_clip(native=True)` undoes it.
  XMP in a top-level uuid box.
- WebP: lossless, exact (grey is stored as three equal channels and read back as grey). XMP chunk.
- GIF: grey exact (a grey palette); colour through one 256-colour palette for the clip, so lossy. No XMP: GIF
  carries a one-line comment for people, and its record only in the C2PA manifest (when signed). 10 ms ticks.
- APNG: lossless, exact; `.apng`, or `.png` when a clip (not a filmstrip) is asked for. XMP in an iTXt chunk.
c2pa-python 0.38 signs and reads all four (video/mp4, image/webp, image/gif, and image/png for APNG, which it
has no type of its own for; checked in tests/test_media_video.py); the frames still decode after signing.

The record's parameters gain "clip": {"frames", "fps", "size": [H, W] before scaling, "scale"}, and "index"
(its place in the batch) when several clips are written; a filmstrip's gain "filmstrip" (its layout), which
`genforge verify` uses to cut it back into clips.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from genforge.media.images import FORMATS as STILL_FORMATS
from genforge.media.images import _write, encode, make_grid
from genforge.media.provenance import Record, Signer, c2pa_sign, parse_xmp, xmp_packet
from genforge.media.video_containers import (decode_av, encode_animated, encode_mp4, expand, mp4_with_xmp, mp4_xmp,
                                             read_animated)
from genforge.media.watermark import _shrink

CLIP_FORMATS = {".mp4": "mp4", ".webp": "webp", ".gif": "gif", ".apng": "apng", ".png": "apng"}
MIME = {"mp4": "video/mp4", "webp": "image/webp", "gif": "image/gif", "apng": "image/png"}
SUFFIX = {"mp4": ".mp4", "webp": ".webp", "gif": ".gif", "apng": ".apng"}


MP4_MIN_SIDE = 64  # H.264 codes 16x16 macroblocks: a 32-px frame is four of them


def mp4_scale(h: int, w: int) -> int:
    """The smallest whole enlargement (nearest neighbour, recorded, undone by `decode_clip(native=True)` and by
    `verify`) that writes an MP4's frames at least MP4_MIN_SIDE px a side. The keyed mark in 32-px frames did not
    survive a re-encode at crf 28 (8-15% of clips found); written at 64 px, 100% (benchmarks/RESULTS.md, issue 28)."""
    return min(16, max(1, math.ceil(MP4_MIN_SIDE / max(1, min(h, w)))))


def check_clips(clips: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, C) or (N, T, H, W, C), C 1 or 3 -> (N, T, H, W, C)."""
    clips = np.asarray(clips)
    if clips.ndim == 4:
        clips = clips[None]
    if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[-1] not in (1, 3) or 0 in clips.shape:
        raise ValueError(f"expected uint8 clips (T, H, W, 1|3) or (N, T, H, W, 1|3), got {clips.dtype} {clips.shape}")
    return clips


def _format(fmt: str) -> str:
    name = fmt.lower().lstrip(".")
    name = "apng" if name == "png" else name
    if name not in MIME:
        raise ValueError(f"clip format {fmt!r}: use mp4, webp, gif or apng")
    return name


def _upscale(frames: np.ndarray, k: int) -> np.ndarray:
    return frames if k == 1 else frames.repeat(k, axis=-3).repeat(k, axis=-2)


def encode_clip(clip: np.ndarray, fmt: str = "mp4", fps: float = 8.0, record: Record | None = None,
                signer: Signer | None = None, scale: int = 1) -> bytes:
    """One uint8 (T, H, W, C) clip as MP4, WebP, GIF or APNG bytes ("png" means APNG here), playing at `fps` and
    looping; `scale` enlarges small clips for viewing (nearest neighbour). `record` goes in as XMP where the
    container has a place (not GIF) with the clip's layout added, then the bytes are signed with C2PA when `signer`
    is given."""
    fmt = _format(fmt)
    clip = check_clips(clip)[0]
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a whole number >= 1, got {scale}")
    t, h, w, _ = clip.shape
    scale = int(scale)
    if fmt == "mp4" and (h * scale % 2 or w * scale % 2):
        scale *= 2  # yuv420p needs even sides: enlarge rather than invent a row or column
    if record is not None:
        layout = {"frames": t, "fps": float(fps), "size": [h, w], "scale": scale}
        record = record.with_(parameters={**record.parameters, "clip": layout})
    frames = _upscale(clip, scale)
    xmp = xmp_packet(record) if record is not None else None
    if fmt == "mp4":
        data = encode_mp4(frames, fps)
        if xmp is not None:
            data = mp4_with_xmp(data, xmp)
    else:
        comment = None
        if record is not None and fmt == "gif":
            comment = (f"AI-generated (IPTC trainedAlgorithmicMedia): genforge {record.version}".rstrip() +
                       f", model {record.model}")
        data = encode_animated(frames, fmt, fps, None if fmt == "gif" else xmp, comment)
    if signer is not None and record is not None:
        data = c2pa_sign(data, MIME[fmt], record, signer)
    return data


def clip_format(data: bytes) -> str | None:
    """mp4, webp, gif or apng when `data` is a clip in one of them (WebP, GIF and PNG only when animated), mkv for
    Matroska/WebM; None otherwise (a still image, audio, text)."""
    if data[4:8] == b"ftyp":
        return "mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "mkv"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" or data[:4] == b"GIF8" or data[:8] == b"\x89PNG\r\n\x1a\n":
        try:
            with Image.open(io.BytesIO(data)) as im:
                if getattr(im, "n_frames", 1) > 1:
                    return {"WEBP": "webp", "GIF": "gif", "PNG": "apng"}.get(im.format or "")
        except Exception:  # a damaged header: not a clip we can read; the image path reports it
            return None
    return None


def decode_clip(data: bytes, native: bool = False) -> tuple[np.ndarray, float, dict | None, str]:
    """Encoded clip bytes -> (uint8 (T, H, W, C) frames, fps, the embedded record in `parse_xmp`'s shape or None,
    format: mp4 | webp | gif | apng (png/webp/gif for a still), or FFmpeg's name for other containers).
    C is 1 when the three channels are equal in every frame. Frames a writer merged (held frames) are restored.
    `native`: undo the writer's enlargement (the record's clip.scale) by averaging each scale x scale block.
    Raises ValueError for bytes that are not a clip; ImportError for MP4 without PyAV."""
    record, layout = None, {}
    if data[:4] in (b"RIFF", b"GIF8") or data[:8] == b"\x89PNG\r\n\x1a\n":
        stored, durations, xmp, fmt = read_animated(data)
        record = parse_xmp(xmp)
        layout = clip_layout(record)
        frames, fps = expand(stored, durations, layout.get("fps"), layout.get("frames"))
    else:
        frames, fps, fmt = decode_av(data)
        if data[4:8] == b"ftyp":
            fmt = "mp4"
            record = parse_xmp(mp4_xmp(data))
            layout = clip_layout(record)
            if layout.get("fps") and abs(fps - layout["fps"]) <= 0.01 * layout["fps"]:
                fps = float(layout["fps"])
    if np.array_equal(frames[..., 0], frames[..., 1]) and np.array_equal(frames[..., 0], frames[..., 2]):
        frames = np.ascontiguousarray(frames[..., :1])
    k = layout.get("scale", 1)
    if native and k > 1 and list(frames.shape[1:3]) == [s * k for s in layout.get("size", [])]:
        frames = np.stack([_shrink(f, k) for f in frames])
    return frames, fps, record, fmt


def clip_layout(record: dict | None) -> dict:
    """The record's clip layout, the fields that are well-formed: frames (int), fps (float), size ([H, W]),
    scale (int). A file's metadata is not trusted to be sane (a huge frame count must not allocate gigabytes)."""
    raw = ((record or {}).get("parameters") or {}).get("clip") if isinstance(record, dict) else None
    if not isinstance(raw, dict):
        return {}
    out = {}
    if isinstance(raw.get("frames"), int) and 1 <= raw["frames"] <= 100_000:
        out["frames"] = raw["frames"]
    if isinstance(raw.get("fps"), (int, float)) and 0 < raw["fps"] <= 1000:
        out["fps"] = float(raw["fps"])
    size = raw.get("size")
    if isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size):
        out["size"] = size
    if isinstance(raw.get("scale"), int) and 1 <= raw["scale"] <= 64:
        out["scale"] = raw["scale"]
    return out


# ------------------------------------------------------------------------------------------------ writing

def filmstrip(clips: np.ndarray, scale: int = 1, pad: int = 2) -> np.ndarray:
    """uint8 (N, T, H, W, C) -> one uint8 image: clip i's frames left to right in row i, `pad` pixels of black
    between and around; shape (N*(H+pad)+pad, T*(W+pad)+pad, C), times `scale` (nearest neighbour)."""
    clips = check_clips(clips)
    n, t, h, w, c = clips.shape
    strip = make_grid(clips.reshape(n * t, h, w, c), nrow=t, pad=pad)
    return _upscale(strip, int(scale))


def save_filmstrip(clips: np.ndarray, path: str | Path, scale: int = 1, record: Record | None = None,
                   signer: Signer | None = None, pad: int = 2) -> Path:
    """A filmstrip of the clips as one still PNG, JPEG or WebP (by `path`'s suffix) with the record's XMP (and
    C2PA when `signer` is given); the layout goes into the record so `genforge verify` can cut the clips out."""
    path = Path(path)
    clips = check_clips(clips)
    fmt = STILL_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"a filmstrip is a .png, .jpg or .webp image; got '{path}'.")
    if record is not None:
        n, t, h, w, _ = clips.shape
        layout = {"clips": n, "frames": t, "tile": [h, w], "pad": pad, "scale": scale}
        record = record.with_(parameters={**record.parameters, "filmstrip": layout})
    _write(path, encode(filmstrip(clips, scale, pad), fmt, record, signer))
    return path


def write_clips(clips: np.ndarray, out: str | Path, fps: float, record: Record | None = None,
                signer: Signer | None = None, scale: int = 1, fmt: str | None = None,
                filmstrip: bool | None = None) -> list[Path]:
    """Write clips (N, T, H, W, C) or one (T, H, W, C) where `out` says, each file whole or not at all (a temporary
    file, then a rename). Returns the paths written.

    - a folder (existing, or ending in /): clip_000.mp4, clip_001.mp4, ... in `fmt` (mp4 by default; webp, gif,
      apng), each with its own record (parameters.index = its place in the batch);
    - x.mp4 / x.webp / x.gif / x.apng: that file for one clip; for several, x_000.mp4, x_001.mp4, ... beside it;
    - x.png / x.jpg: a filmstrip (frames across, samples down) as one still image. `.png` is both a still and an
      animated format: it means a filmstrip unless `filmstrip=False`, which writes APNG to x.png (x.apng is always
      APNG). `filmstrip=True` makes any still suffix (also .webp) a filmstrip;
    - x.npy: the uint8 array (N, T, H, W, C), no metadata (a pipeline's intermediate, not a media file)."""
    clips = check_clips(clips)
    path = Path(out)
    n = len(clips)
    suffix = path.suffix.lower()
    as_dir = str(out).endswith(("/", "\\")) or path.is_dir()
    if as_dir:
        fmt = _format(fmt or "mp4")
        width = max(3, len(str(n - 1)))
        targets = [path / f"clip_{i:0{width}d}{SUFFIX[fmt]}" for i in range(n)]
    elif suffix == ".npy":
        buf = io.BytesIO()
        np.save(buf, clips)
        _write(path, buf.getvalue())
        return [path]
    elif suffix in STILL_FORMATS and (filmstrip or (filmstrip is None and suffix != ".webp")):
        return [save_filmstrip(clips, path, scale, record, signer)]
    elif suffix in CLIP_FORMATS:
        if fmt is not None and _format(fmt) != CLIP_FORMATS[suffix]:
            raise ValueError(f"--out {out} is {CLIP_FORMATS[suffix]}, but the format asked for is {fmt}; give one.")
        fmt = CLIP_FORMATS[suffix]
        width = max(3, len(str(n - 1)))
        targets = [path] if n == 1 else [path.with_name(f"{path.stem}_{i:0{width}d}{path.suffix}") for i in range(n)]
    else:
        raise ValueError(f"--out must end in .mp4, .webp, .gif or .apng (clips), .png or .jpg (a filmstrip), .npy "
                         f"(array) or / (a folder of clips); got '{out}'.")
    for i, (clip, target) in enumerate(zip(clips, targets)):
        rec = record
        if record is not None and (n > 1 or as_dir):
            rec = record.with_(parameters={**record.parameters, "index": i})
        _write(target, encode_clip(clip, fmt, fps, rec, signer, scale))
    return targets

