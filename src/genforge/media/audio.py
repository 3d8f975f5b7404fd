"""Generated audio as files and bytes: WAV (16-bit PCM), FLAC (16-bit) and MP3, each with the run's provenance
where the format has a standard place for it, a signed C2PA manifest when a signer is given, and the keyed audio
mark when one is given; spectrogram grids for people to look at.

Where the record goes: WAV, an XMP packet in a `_PMX` chunk (the XMP specification's place in RIFF files) and a
short LIST/INFO comment that any player shows; FLAC, Vorbis comments (no XMP convention exists for FLAC):
DIGITAL_SOURCE_TYPE (the IPTC term), ENCODER, COMMENT and GENFORGE_PROVENANCE (the record as JSON); MP3, an
ID3v2.4 tag with the XMP packet in a PRIV frame owned by "XMP" (the XMP specification's place in MP3) and TSSE.
c2pa-python 0.38 signs and reads all three (audio/wav, audio/flac, audio/mpeg; checked in tests/test_audio_media.py).

soundfile (libsndfile) is imported when a file is written or read, so `genforge.media` stays importable where it
is not installed.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np

from genforge.media.audio_mark import AudioMark
from genforge.media.images import _write, save_grid
from genforge.media.provenance import FIELDS, SOURCE_TYPE, Record, Signer, c2pa_sign, parse_xmp, xmp_packet

FORMATS = {".wav": "wav", ".flac": "flac", ".mp3": "mp3"}
MIME = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg"}
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
MP3_LEVEL = 0.4  # libsndfile's compression level, constant bit rate: ~64 kbit/s for 8 kHz speech, where the audio
# mark survives (100% of 100 FSDD clips; VBR at the best quality, ~50 kbit/s, kept it in 67%; benchmarks/RESULTS.md)
PCM_SCALE = 32768  # int16 sample = round(x * 32768) clipped to [-32768, 32767]; read back as int / 32768


# ------------------------------------------------------------------------------------------------- writing

def quantize16(clip: np.ndarray) -> np.ndarray:
    """float samples -> int16, clipped to [-1, 1] and rounded (never wrapped around)."""
    return np.clip(np.round(np.asarray(clip, np.float64) * PCM_SCALE), -PCM_SCALE, PCM_SCALE - 1).astype(np.int16)


def _check_clip(clip: np.ndarray) -> np.ndarray:
    clip = np.asarray(clip)
    if clip.ndim != 1 or clip.size == 0:
        raise ValueError(f"expected one mono clip of shape (L,) with L > 0, got {clip.shape}")
    if not np.all(np.isfinite(clip)):
        raise ValueError("the clip holds NaN or infinite samples; nothing was written")
    return clip.astype(np.float64)


def encode_audio(clip: np.ndarray, sample_rate: int, fmt: str = "wav", record: Record | None = None,
                 signer: Signer | None = None, mark: AudioMark | None = None) -> bytes:
    """One float clip (L,) in [-1, 1] as WAV, FLAC or MP3 bytes: marked with `mark` (before the 16-bit rounding,
    which the mark survives), `record` embedded, then signed with C2PA when `signer` is given. `fmt="pcm"`: raw
    16-bit little-endian samples (OpenAI's response_format), which have nowhere to carry a record or manifest."""
    fmt = fmt.lower().lstrip(".")
    if fmt not in MIME and fmt != "pcm":
        raise ValueError(f"audio format {fmt!r}: use wav, flac or mp3 (or pcm for raw samples)")
    clip = _check_clip(clip)
    sample_rate = int(sample_rate)
    if mark is not None:
        clip = mark.embed(clip, sample_rate)
        if record is not None and not record.mark:
            record = record.with_(mark=mark.key.id)
    ints = quantize16(clip)
    if fmt == "pcm":
        return ints.astype("<i2").tobytes()
    data = _soundfile_bytes(ints, sample_rate, fmt)
    if record is not None:
        data = {"wav": _wav_with_record, "flac": _flac_with_record, "mp3": _mp3_with_record}[fmt](data, record)
    if signer is not None and record is not None:
        data = c2pa_sign(data, MIME[fmt], record, signer)
    return data


def write_audio(clips: np.ndarray, sample_rate: int, out: str, record: Record | None = None,
                signer: Signer | None = None, mark: AudioMark | None = None, fmt: str | None = None) -> list[Path]:
    """Write clips (N, L) or (L,) where `out` says: x.wav / x.flac / x.mp3, one clip; a folder (existing, or ending
    in /): 000.wav, 001.wav, ... in `fmt` (default wav), each with its own record (parameters.index = its place in
    the batch). Each file is written whole or not at all (temp file, then rename). Returns the paths written."""
    clips = np.asarray(clips)
    if clips.ndim == 1:
        clips = clips[None]
    if clips.ndim != 2 or len(clips) == 0:
        raise ValueError(f"expected clips of shape (N, L) or (L,), got {clips.shape}")
    path = Path(out)
    if str(out).endswith(("/", "\\")) or path.is_dir():
        fmt = (fmt or "wav").lower().lstrip(".")
        if fmt not in MIME:
            raise ValueError(f"audio format {fmt!r}: use wav, flac or mp3")
        width = max(3, len(str(len(clips) - 1)))
        written = []
        for i, clip in enumerate(clips):
            rec = record.with_(parameters={**record.parameters, "index": i}) if record is not None else None
            target = path / f"{i:0{width}d}.{fmt}"
            _write(target, encode_audio(clip, sample_rate, fmt, rec, signer, mark))
            written.append(target)
        return written
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"--out must end in .wav, .flac or .mp3 (one clip) or / (a folder of clips); got '{out}'.")
    if fmt is not None and fmt.lower().lstrip(".") != FORMATS[suffix]:
        raise ValueError(f"--out {out} is {FORMATS[suffix]}, but the format asked for is {fmt}; give one of them.")
    if len(clips) != 1:
        raise ValueError(f"--out {out} holds one clip, but there are {len(clips)}: give a folder (ending in /).")
    _write(path, encode_audio(clips[0], sample_rate, FORMATS[suffix], record, signer, mark))
    return [path]


def _soundfile_bytes(ints: np.ndarray, rate: int, fmt: str) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    if fmt == "mp3":
        if rate not in MP3_RATES:
            raise ValueError(f"MP3 cannot hold {rate} Hz audio (it takes {', '.join(map(str, MP3_RATES))}); "
                             "write WAV or FLAC, or resample first.")
        sf.write(buf, ints.astype(np.float32) / PCM_SCALE, rate, format="MP3", subtype="MPEG_LAYER_III",
                 compression_level=MP3_LEVEL, bitrate_mode="CONSTANT")
    else:
        sf.write(buf, ints, rate, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()


def provenance_fields(record: Record) -> dict:
    """The record as `parse_xmp` reads it back: the source type and the fields that are set."""
    out = {"digital_source_type": SOURCE_TYPE}
    for name in FIELDS:
        value = getattr(record, name)
        if value not in (None, "", [], {}):
            out[name] = value
    return out


def _summary(record: Record) -> str:
    version = f" {record.version}" if record.version else ""
    return f"AI-generated audio (IPTC trainedAlgorithmicMedia): genforge{version}, model {record.model}"


# --- WAV: RIFF chunks

def _riff_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    chunks, pos = [], 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        chunks.append((cid, data[pos + 8:pos + 8 + size]))
        pos += 8 + size + (size & 1)
    return chunks


def _riff(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(cid + struct.pack("<I", len(p)) + p + b"\0" * (len(p) & 1) for cid, p in chunks)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body


def _wav_with_record(data: bytes, record: Record) -> bytes:
    def info(cid: bytes, text: str) -> bytes:
        raw = text.encode() + b"\0"
        return cid + struct.pack("<I", len(raw)) + raw + b"\0" * (len(raw) & 1)

    chunks = [c for c in _riff_chunks(data) if c[0] not in (b"_PMX", b"LIST")]
    listing = b"INFO" + info(b"ISFT", f"genforge {record.version}".strip()) + info(b"ICMT", _summary(record))
    return _riff(chunks + [(b"LIST", listing), (b"_PMX", xmp_packet(record))])


def _wav_record(data: bytes) -> dict | None:
    for cid, payload in _riff_chunks(data):
        if cid == b"_PMX":
            return parse_xmp(payload)
    return None


# --- FLAC: metadata blocks

def _flac_blocks(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """(metadata blocks as (type, body), the audio frames after them). A leading ID3v2 tag (where c2pa-python puts
    a FLAC file's manifest) is skipped."""
    start = _id3_frames(data)[1]
    if data[start:start + 4] != b"fLaC":
        raise ValueError("not a FLAC file")
    blocks, pos, last = [], start + 4, False
    while not last:
        if pos + 4 > len(data):
            raise ValueError("truncated FLAC metadata")
        head = data[pos]
        size = int.from_bytes(data[pos + 1:pos + 4], "big")
        blocks.append((head & 0x7F, data[pos + 4:pos + 4 + size]))
        last, pos = bool(head & 0x80), pos + 4 + size
    return blocks, data[pos:]


def _vorbis_comment(fields: dict[str, str], vendor: str) -> bytes:
    out = struct.pack("<I", len(vendor.encode())) + vendor.encode() + struct.pack("<I", len(fields))
    for name, value in fields.items():
        entry = f"{name}={value}".encode()
        out += struct.pack("<I", len(entry)) + entry
    return out


def _flac_with_record(data: bytes, record: Record) -> bytes:
    blocks, frames = _flac_blocks(data)
    comments = {"DIGITAL_SOURCE_TYPE": SOURCE_TYPE, "ENCODER": f"genforge {record.version}".strip(),
                "COMMENT": _summary(record),
                "GENFORGE_PROVENANCE": json.dumps(provenance_fields(record), sort_keys=True)}
    blocks = [blocks[0], (4, _vorbis_comment(comments, "genforge"))] + [b for b in blocks[1:] if b[0] not in (1, 4)]
    out = b"fLaC"
    for i, (kind, body) in enumerate(blocks):
        out += bytes([kind | (0x80 if i == len(blocks) - 1 else 0)]) + len(body).to_bytes(3, "big") + body
    return out + frames


def _flac_record(data: bytes) -> dict | None:
    for kind, body in _flac_blocks(data)[0]:
        if kind != 4:
            continue
        fields = {}
        try:
            pos = 4 + struct.unpack("<I", body[:4])[0]
            count, pos = struct.unpack("<I", body[pos:pos + 4])[0], pos + 4
            for _ in range(count):
                size = struct.unpack("<I", body[pos:pos + 4])[0]
                name, _, value = body[pos + 4:pos + 4 + size].decode("utf-8", "replace").partition("=")
                fields[name.upper()] = value
                pos += 4 + size
        except struct.error:
            pass  # a truncated comment block: keep what was read
        if "GENFORGE_PROVENANCE" in fields:
            try:
                found = json.loads(fields["GENFORGE_PROVENANCE"])
                if isinstance(found, dict):
                    return found
            except ValueError:
                pass
        if "DIGITAL_SOURCE_TYPE" in fields:
            return {"digital_source_type": fields["DIGITAL_SOURCE_TYPE"]}
    return None


# --- MP3: an ID3v2.4 tag in front

def _syncsafe(n: int) -> bytes:
    return bytes([(n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F])


def _unsyncsafe(b: bytes) -> int:
    return (b[0] << 21) | (b[1] << 14) | (b[2] << 7) | b[3]


def _id3_frames(data: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
    """(frames of the ID3v2 tag at the start of `data`, the tag's length); ([], 0) when there is none."""
    if data[:3] != b"ID3" or len(data) < 10:
        return [], 0
    major, flags, size = data[3], data[5], _unsyncsafe(data[6:10])
    end, pos = 10 + size, 10
    if flags & 0x40:  # extended header (v2.4: its size counts itself; v2.3: it does not)
        pos += _unsyncsafe(data[10:14]) if major == 4 else 4 + struct.unpack(">I", data[10:14])[0]
    frames = []
    while pos + 10 <= end and data[pos:pos + 4].strip(b"\0"):
        fid, raw = data[pos:pos + 4], data[pos + 4:pos + 8]
        fsize = _unsyncsafe(raw) if major == 4 else struct.unpack(">I", raw)[0]
        frames.append((fid, data[pos + 10:pos + 10 + fsize]))
        pos += 10 + fsize
    return frames, end


def _mp3_with_record(data: bytes, record: Record) -> bytes:
    _, tag_end = _id3_frames(data)
    frames = [(b"TSSE", b"\x03" + f"genforge {record.version}".strip().encode()),
              (b"COMM", b"\x03eng\0" + _summary(record).encode()),
              (b"PRIV", b"XMP\0" + xmp_packet(record))]
    body = b"".join(fid + _syncsafe(len(p)) + b"\0\0" + p for fid, p in frames)
    return b"ID3\x04\x00\x00" + _syncsafe(len(body)) + body + data[tag_end:]


def _mp3_record(data: bytes) -> dict | None:
    for fid, payload in _id3_frames(data)[0]:
        if fid == b"PRIV" and payload.startswith(b"XMP\0"):
            return parse_xmp(payload[4:])
    return None


# ------------------------------------------------------------------------------------------------- reading

def audio_format(data: bytes) -> str | None:
    """wav, flac, mp3 or ogg by the bytes' signature; None when they are none of these."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    tag = _id3_frames(data)[1]  # an ID3v2 tag leads MP3 files, and FLAC files that c2pa-python signed
    head = data[tag:].lstrip(b"\0")[:4]
    if head == b"fLaC":
        return "flac"
    if head[:4] == b"OggS" and not tag:
        return "ogg"
    if tag or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


def decode_audio(data: bytes) -> tuple[np.ndarray, int, dict | None]:
    """Encoded audio -> (float32 samples, (L,) mono or (L, channels) as stored; the sample rate; the embedded
    provenance in `parse_xmp`'s shape, or None). Raises ValueError for bytes that are not audio soundfile reads."""
    import soundfile as sf

    fmt = audio_format(data)
    if fmt is None:
        raise ValueError("not a WAV, FLAC, MP3 or Ogg file")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except Exception as e:  # libsndfile raises several types for a corrupt or truncated file
        raise ValueError(f"not audio soundfile can read ({type(e).__name__}: {e})") from e
    if samples.size == 0:
        raise ValueError("the file holds no samples")
    try:
        found = {"wav": _wav_record, "flac": _flac_record, "mp3": _mp3_record}.get(fmt, lambda _: None)(data)
    except (ValueError, IndexError, struct.error):
        found = None  # damaged metadata: the samples still count
    return samples, int(rate), found


# ------------------------------------------------------------------------------------------ spectrograms

_HEAT = np.array([[0, 0, 0], [30, 10, 70], [90, 20, 120], [170, 40, 90], [225, 90, 40], [250, 170, 30],
                  [255, 240, 150]], np.float64)  # dark (quiet) to light (loud)


def save_spectrogram_grid(specs: np.ndarray, path: str | Path, nrow: int | None = None, scale: int = 1,
                          colour: bool = True, record: Record | None = None, signer: Signer | None = None) -> Path:
    """Spectrograms (N, bins, frames) in [-1, 1] (row 0 the lowest frequency) as one PNG grid through
    media/images.py, flipped so that low frequencies are at the bottom; a dark-to-light colour ramp (or grey)."""
    specs = np.asarray(specs, np.float64)
    if specs.ndim == 2:
        specs = specs[None]
    if specs.ndim != 3 or len(specs) == 0:
        raise ValueError(f"expected spectrograms of shape (N, bins, frames), got {specs.shape}")
    level = (np.clip(np.nan_to_num(specs[:, ::-1, :]), -1, 1) + 1) / 2  # (N, bins, frames) in [0, 1], top = high
    if colour:
        pos = level * (len(_HEAT) - 1)
        i = np.minimum(pos.astype(int), len(_HEAT) - 2)
        frac = (pos - i)[..., None]
        images = np.rint(_HEAT[i] * (1 - frac) + _HEAT[i + 1] * frac).astype(np.uint8)
    else:
        images = np.rint(level * 255).astype(np.uint8)[..., None]
    return save_grid(images, path, nrow, scale=scale, record=record, signer=signer)
