"""The clip containers byte by byte: MP4 (H.264 through PyAV), animated WebP, GIF and APNG (Pillow), each with
its frame timing and, where the container has a place for it, an XMP packet. media/video.py builds on these.

Where XMP goes: WebP, its XMP chunk; APNG, an iTXt chunk keyed XML:com.adobe.xmp (as a still PNG); MP4, a
top-level `uuid` box with the XMP specification's UUID (BE7ACFCB-97A9-42E8-9C71-999491E3AFAC, part 3 of the
specification, the box exiftool and Adobe tools read), appended after the movie. GIF has no XMP here (the XMP
specification's GIF embedding, an application extension with a 258-byte "magic trailer", is read by few tools):
it gets a one-line comment for people, and its machine-readable record is the C2PA manifest when signed.

Timing: frame boundaries are placed at round(t * 1000 / fps) in the container's tick (1 ms for WebP and APNG,
10 ms for GIF), so a clip's total length is exact to one tick. Pillow's writers (and libwebp's) merge a frame
identical to the one before into one longer frame; the readers here undo that from the durations, so a clip with
held frames reads back with all of them.

PyAV (the `video` extra) is imported when an MP4 is written or read, so `genforge.media` stays importable
without it.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import numpy as np
from PIL import Image, ImageSequence, PngImagePlugin

XMP_UUID = bytes.fromhex("BE7ACFCB97A942E89C71999491E3AFAC")
MP4_CRF = 18  # x264's constant-rate factor: Moving-MNIST-like clips come back at ~48 dB PSNR and the keyed mark
# at a per-frame z of ~17 (crf 23: 45 dB, z 15; crf 35: 36 dB, z 4); a 16-frame 64x64 clip is ~3 kB
MP4_PRESET = "medium"
TICKS_MS = {"webp": 1, "apng": 1, "gif": 10}


def _av():
    try:
        import av
    except ImportError as e:
        raise ImportError("MP4 clips need PyAV: pip install 'genforge[video]'") from e
    return av


def boundaries(frames: int, fps: float, tick: int) -> list[int]:
    """Each frame's duration in ms, on a `tick`-ms grid, whose running sums stay within half a tick of t/fps."""
    edges = [int(round(t * 1000 / fps / tick)) * tick for t in range(frames + 1)]
    return [max(tick, b - a) for a, b in zip(edges, edges[1:])]


# ------------------------------------------------------------------------------------------------------ MP4

def encode_mp4(frames: np.ndarray, fps: float, crf: int = MP4_CRF) -> bytes:
    """uint8 (T, H, W, C) with even H and W -> an MP4 of H.264 (libx264, yuv420p, High profile, BT.601 limited
    range, tagged so that players convert back with the same matrix)."""
    av = _av()
    t, h, w, c = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 in yuv420p needs even sides, got {h}x{w}")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(int(crf)), "preset": MP4_PRESET}
        cc = stream.codec_context
        cc.colorspace = cc.color_primaries = cc.color_trc = 6  # SMPTE 170M (BT.601), what swscale converts with
        cc.color_range = 1  # limited ("tv") range, what every player expects of yuv420p H.264
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image[..., 0] if c == 1 else image, format="gray" if c == 1 else "rgb24")
            frame = frame.reformat(format="yuv420p", src_colorspace="itu601", dst_colorspace="itu601",
                                   interpolation="BICUBIC", src_color_range="JPEG", dst_color_range="MPEG")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def _boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """Top-level ISO BMFF boxes: (type, start, end). Stops at anything malformed."""
    out, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        head = 8
        if size == 1 and pos + 16 <= len(data):
            size, head = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        elif size == 0:
            size = len(data) - pos
        if size < head or pos + size > len(data):
            break
        out.append((kind, pos, pos + size))
        pos += size
    return out


def mp4_with_xmp(data: bytes, xmp: bytes) -> bytes:
    """`data` with its XMP uuid box replaced by (or given) one holding `xmp`, appended at the end."""
    kept = b"".join(data[a:b] for kind, a, b in _boxes(data)
                    if not (kind == b"uuid" and data[a + 8:a + 24] == XMP_UUID))
    box = XMP_UUID + xmp
    return kept + struct.pack(">I4s", 8 + len(box), b"uuid") + box


def mp4_xmp(data: bytes) -> bytes | None:
    for kind, a, b in _boxes(data):
        if kind == b"uuid" and data[a + 8:a + 24] == XMP_UUID:
            return data[a + 24:b]
    return None


def decode_av(data: bytes) -> tuple[np.ndarray, float, str]:
    """Any container FFmpeg reads (MP4, WebM, MOV, ...) -> (uint8 (T, H, W, 3), fps, FFmpeg's format name)."""
    av = _av()
    out, streams, rate, name = [], True, None, "?"
    try:
        with av.open(io.BytesIO(data)) as container:
            streams = bool(container.streams.video)
            if streams:
                stream = container.streams.video[0]
                for frame in container.decode(stream):
                    out.append(frame.to_ndarray(format="rgb24"))
                rate = stream.average_rate or stream.guessed_rate
            name = container.format.name
    except Exception as e:  # PyAV raises many types (FFmpegError subclasses) for foreign or damaged bytes
        raise ValueError(f"not a clip FFmpeg can read ({type(e).__name__}: {str(e)[:160]})") from e
    if not streams:
        raise ValueError("not a clip: the file has no video stream")
    if not out:
        raise ValueError("the file holds no frames")
    return np.stack(out), float(rate) if rate else 0.0, name


# ------------------------------------------------------------------------------------------------ Pillow

def encode_animated(frames: np.ndarray, fmt: str, fps: float, xmp: bytes | None = None,
                    comment: str | None = None) -> bytes:
    """uint8 (T, H, W, C) as an animated WebP (lossless), GIF or APNG that loops forever. WebP holds RGB only:
    grey frames are written as three equal channels. GIF: grey frames exactly (a grey palette), colour through
    one 256-colour palette for the whole clip (no flicker between frames; no dithering, which would add noise the
    keyed mark reads as damage)."""
    t, h, w, c = frames.shape
    durations = boundaries(t, fps, TICKS_MS[fmt])
    grey = c == 1
    if fmt == "webp" and grey:
        frames, grey = np.repeat(frames, 3, axis=-1), False
    if grey:
        images = [Image.fromarray(f[..., 0], "L") for f in frames]
    elif fmt == "gif":
        strip = Image.fromarray(frames.reshape(t * h, w, 3), "RGB")
        palette = strip.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        images = [Image.fromarray(f, "RGB").quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    else:
        images = [Image.fromarray(f, "RGB") for f in frames]
    first, rest = images[0], images[1:]
    buf = io.BytesIO()
    if fmt == "webp":
        first.save(buf, "WEBP", save_all=True, append_images=rest, duration=durations, loop=0, lossless=True,
                   method=4, **({"xmp": xmp} if xmp else {}))
    elif fmt == "gif":
        first.save(buf, "GIF", save_all=True, append_images=rest, duration=durations, loop=0,
                   **({"comment": comment} if comment else {}))
    else:
        info = PngImagePlugin.PngInfo()
        if xmp:
            info.add_itxt("XML:com.adobe.xmp", xmp.decode(), zip=False)
        first.save(buf, "PNG", save_all=True, append_images=rest, duration=durations, loop=0, pnginfo=info,
                   default_image=False)
    return buf.getvalue()


def read_animated(data: bytes) -> tuple[np.ndarray, np.ndarray, bytes | None, str]:
    """An animated (or still) WebP, GIF or PNG as stored -> (uint8 (K, H, W, 3) frames, their durations in ms,
    the XMP packet or None, format: "webp" | "gif" | "apng" | "png"). Transparency is composited over black."""
    try:
        im = Image.open(io.BytesIO(data))
        fmt = {"WEBP": "webp", "GIF": "gif", "PNG": "png"}.get(im.format or "")
        frames, durations = [], []
        for frame in ImageSequence.Iterator(im) if fmt else []:
            frame.load()
            durations.append(float(frame.info.get("duration") or 0))
            if frame.mode in ("RGBA", "LA", "PA") or "transparency" in frame.info:
                rgba = frame.convert("RGBA")
                frame = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
            frames.append(np.asarray(frame.convert("RGB")))
        xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    except Exception as e:  # Pillow raises several types for a corrupt or foreign file
        raise ValueError(f"not a clip Pillow can read ({type(e).__name__}: {e})") from e
    if fmt is None:
        raise ValueError(f"not a clip: {im.format} is not a clip format")
    if fmt == "png" and len(frames) > 1:
        fmt = "apng"
    return np.stack(frames), np.array(durations), xmp.encode() if isinstance(xmp, str) else xmp, fmt


def expand(frames: np.ndarray, durations: np.ndarray, fps: float | None = None,
           count: int | None = None) -> tuple[np.ndarray, float]:
    """Undo the merging of held frames: (the clip sampled at the middle of each original frame's interval, its
    fps). The original frame count is `count` when known (a record says it), else the total time at `fps`, else
    each frame counts as its duration over the shortest one's. A still, or a GIF that leaves timing to the
    viewer (zero durations), is returned as it is, at `fps` or 0."""
    if count and count * frames[0].size > 1 << 30:
        count = None  # a record's frame count that would take gigabytes is not believed
    if len(frames) == 1 and count:  # held throughout: a writer may keep no duration for a lone frame
        return np.repeat(frames, count, axis=0), float(fps or 0)
    if len(frames) == 1 or durations.min() <= 0:
        return frames, float(fps or 0)
    total = float(durations.sum())
    if count is None and fps:
        count = int(round(total * fps / 1000))
    if not count or count < len(frames):
        count = int(np.maximum(1, np.rint(durations / durations.min())).sum())
    rate = count * 1000 / total
    if fps and abs(rate - fps) <= 0.02 * fps:
        rate = float(fps)  # the container's ticks (10 ms in GIF) only approximate it
    if count == len(frames):
        return frames, round(rate, 3)
    starts = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    middles = (np.arange(count) + 0.5) * total / count
    return frames[np.searchsorted(starts, middles, side="right") - 1], round(rate, 3)
