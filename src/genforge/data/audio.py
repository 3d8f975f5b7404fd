"""Audio datasets: reading recordings into fixed-length mono clips at the model's rate.

Names: "fsdd" (the Free Spoken Digit Dataset, a registry entry with its download and per-file checksums) and
`folder:PATH` of WAV/FLAC/MP3/OGG files (each immediate sub-folder is a class, or no sub-folders for unlabelled
clips; only a train split, like image folders). Every clip goes through the same steps, once, at load time:
read (soundfile) -> mix down to mono (the mean of the channels; a one-time notice) -> resample to the asked rate
(soxr, high quality) -> trim leading and trailing silence (trim_silence) -> fit to the asked length
(fit_length: the loudest window of a long clip, a short one centred between zeros). What was mixed down,
resampled, cropped or padded is counted in the dataset's report. Nothing is cached: 3,000 short WAVs load in
a few seconds.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from genforge.errors import UserError

from .download import ensure_split_files
from .registry import (AUDIO_KINDS, FSDD_LICENSE, FSDD_SPEAKERS, STANDARD_DATASETS, check_split, dataset_root,
                       parse_name, resolve_data_dir)

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")
FOLDER_LICENSE = "unknown (a user folder: the recordings' own terms apply)"
_MAX_EXAMPLES = 10
_MP3_FRAME = 1152  # an MP3 decoder may legitimately come up short of the header's count by up to one frame
_FIX = "Fix: replace it with an intact WAV/FLAC/MP3/OGG recording, or remove it"
_MIXDOWN_NOTICE = ("genforge mixes multi-channel recordings down to mono (the mean of the channels); "
                   "a dataset's report counts the files it mixed down")


@dataclass
class AudioDataset:
    """A whole split in memory: (N, length) float32 clips in [-1, 1], silence trimmed, fitted to length."""

    name: str
    clips: np.ndarray
    labels: np.ndarray | None  # (N,) int64 class index (FSDD: the digit); None for an unlabelled folder
    classes: list[str]
    speakers: np.ndarray | None  # (N,) int64 index into speaker_names, or None
    speaker_names: list[str]
    sample_rate: int
    license: str
    report: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.clips.shape[0])


def _wav_shortfall(path: Path) -> tuple[int, int] | None:
    """(bytes the WAV header promises for its samples, bytes present), when the data chunk is cut short.

    libsndfile quietly shortens such a file to the samples present, so a truncated download would pass as a
    shorter recording; the RIFF chunk sizes say what was written."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            size = os.fstat(f.fileno()).st_size
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                cid, clen = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"data":
                    present = size - f.tell()
                    # 0 and 0xFFFFFFFF are what streaming writers leave when they never went back to fill it in
                    if clen not in (0, 0xFFFFFFFF) and present < clen:
                        return clen, present
                    return None
                f.seek(clen + (clen & 1), os.SEEK_CUR)
    except OSError:
        return None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if text.startswith("Error opening"):  # soundfile repeats the path; the message names it already
        text = text.split("': ", 1)[-1]
    return text.splitlines()[0][:160].rstrip(".")


def _read_raw(path: Path) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 and the file's rate; a one-line UserError for anything that is not a whole
    recording."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UserError(f"Cannot read {path} ({exc.strerror or exc}). Fix: check the path and its permissions.") \
            from None
    if size == 0:
        raise UserError(f"{path} is empty (0 bytes), not a recording. {_FIX}.")
    try:
        with sf.SoundFile(str(path)) as f:
            declared, rate = f.frames, f.samplerate
            data = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, OSError) as exc:
        reason = _reason(exc)
        what = "is not audio that libsndfile can read" if "not recognised" in reason.lower() else \
            "is damaged or truncated"
        raise UserError(f"{path} {what} ({reason}). {_FIX}.") from None
    short = _wav_shortfall(path)
    if short is not None:
        raise UserError(f"{path} is truncated: its header promises {short[0]:,} bytes of samples but only "
                        f"{short[1]:,} are there. {_FIX}.")
    if data.shape[0] + _MP3_FRAME < declared:
        raise UserError(f"{path} is truncated: its header promises {declared:,} frames but only "
                        f"{data.shape[0]:,} could be decoded. {_FIX}.")
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise UserError(f"{path} holds no samples (a header without audio). {_FIX}.")
    if not np.isfinite(data).all():
        raise UserError(f"{path} holds NaN or infinite samples. {_FIX}.")
    return data, int(rate)


def _to_mono_rate(data: np.ndarray, rate: int, sample_rate: int | None, notice: bool = True
                  ) -> tuple[np.ndarray, int]:
    if data.shape[1] > 1 and notice:
        warnings.warn(_MIXDOWN_NOTICE, stacklevel=3)
    x = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if sample_rate is not None and int(sample_rate) != rate:
        x = soxr.resample(x, rate, int(sample_rate), quality="HQ").astype(np.float32, copy=False)
        rate = int(sample_rate)
    return np.ascontiguousarray(x, dtype=np.float32), rate


def read_audio(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """One recording as float32 mono samples (L,) and its rate, resampled to `sample_rate` when given.

    Multi-channel files are mixed down (the mean of the channels) with a one-time notice. Empty, truncated
    and non-audio files raise a one-line UserError naming the file."""
    if sample_rate is not None and int(sample_rate) <= 0:
        raise UserError(f"The sample rate must be positive, got {sample_rate}. Fix: pass e.g. 8000.")
    data, rate = _read_raw(Path(path).expanduser())
    return _to_mono_rate(data, rate, sample_rate)


def _frame_rms(x: np.ndarray, frame: int, hop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(RMS, start, end) of the windows x[i*hop : i*hop + frame] (the last one may be shorter), from a
    cumulative sum of squares."""
    power = np.concatenate([[0.0], np.cumsum(np.square(x, dtype=np.float64))])
    starts = np.arange(0, max(len(x) - frame, 0) + 1, hop)
    if starts[-1] + frame < len(x):
        starts = np.append(starts, starts[-1] + hop)
    ends = np.minimum(starts + frame, len(x))
    return np.sqrt((power[ends] - power[starts]) / np.maximum(ends - starts, 1)), starts, ends


def trim_silence(x: np.ndarray, top_db: float = 40.0, frame: int = 256) -> np.ndarray:
    """Drop the leading and trailing audio quieter than `top_db` below the clip's loudest frame.

    Loudness is the RMS of `frame`-sample windows every frame // 4 samples; the kept span runs from the start
    of the first window within top_db of the loudest to the end of the last one, so quiet sounds between two
    loud ones stay. A clip with no sound at all (every sample 0) comes back empty."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"trim_silence takes one mono clip (L,), got shape {x.shape}")
    if len(x) == 0:
        return x
    rms, starts, ends = _frame_rms(x, frame, max(frame // 4, 1))
    peak = rms.max()
    if peak <= 0:
        return x[:0]
    loud = np.flatnonzero(rms >= peak * 10.0 ** (-top_db / 20.0))
    return x[starts[loud[0]]:ends[loud[-1]]]


def fit_length(x: np.ndarray, length: int) -> np.ndarray:
    """Exactly `length` samples: a longer clip is cropped to its loudest `length`-sample window (the most
    energy; the earliest such window on ties), a shorter one is centred between zeros (the extra zero, for an
    odd difference, goes at the end)."""
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    if n == length:
        return x.copy()
    if n > length:
        power = np.concatenate([[0.0], np.cumsum(np.square(x, dtype=np.float64))])
        start = int(np.argmax(power[length:] - power[:-length]))
        return x[start:start + length].copy()
    out = np.zeros(length, dtype=np.float32)
    left = (length - n) // 2
    out[left:left + n] = x
    return out


def _audio_files(folder: Path) -> tuple[list[Path], int]:
    """Audio files under `folder`, recursively and sorted, hidden entries skipped; plus the other files' count."""
    found, others = [], 0
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            if name.lower().endswith(AUDIO_EXTENSIONS):
                found.append(Path(current) / name)
            else:
                others += 1
    return found, others


def _scan_folder(root: Path) -> tuple[list[tuple[Path, int | None]], list[str], int]:
    top, subfolders, others = [], [], 0
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            subfolders.append(Path(entry.path))
        elif entry.is_file():
            if entry.name.lower().endswith(AUDIO_EXTENSIONS):
                top.append(Path(entry.path))
            else:
                others += 1
    classes: list[str] = []
    files: list[tuple[Path, int | None]] = []
    for sub in subfolders:
        found, sub_others = _audio_files(sub)
        others += sub_others
        if found:
            files.extend((p, len(classes)) for p in found)
            classes.append(sub.name)
    if classes and top:
        raise UserError(f"{root} has class sub-folders ({', '.join(classes[:5])}) and also {len(top)} audio "
                        f"file(s) directly inside it (e.g. {top[0].name}), so it is unclear which class those "
                        "belong to. Fix: move them into a class sub-folder or out of the folder.")
    return (files if classes else [(p, None) for p in top]), classes, others


def _folder_holds_audio(root: Path) -> bool:
    from .folder import IMAGE_EXTENSIONS  # only the extension list; nothing is decoded

    audio = images = 0
    for _, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            ext = os.path.splitext(name)[1].lower()
            audio += ext in AUDIO_EXTENSIONS
            images += ext in IMAGE_EXTENSIONS
    return audio > 0 and images == 0


def is_audio_dataset(name: str) -> bool:
    """True for an audio dataset name: "fsdd", or folder:PATH whose files are audio (and no images)."""
    try:
        kind, key = parse_name(name)
    except UserError:
        return False
    if kind == "folder":
        return Path(key).is_dir() and _folder_holds_audio(Path(key))
    return kind == "standard" and STANDARD_DATASETS[key].kind in AUDIO_KINDS


def _load_clips(paths: list[Path], sample_rate: int, length: int, top_db: float, strict: bool
                ) -> tuple[np.ndarray, list[int], dict]:
    """Read, mix down, resample, trim and fit every file (threads: soundfile and soxr release the GIL).

    strict: a bad file is an error (a checksummed dataset); else it is skipped and counted (a user folder)."""
    def work(path: Path):
        try:
            data, rate = _read_raw(path)
        except UserError as exc:
            if strict:
                raise
            return exc
        channels = data.shape[1]
        x, _ = _to_mono_rate(data, rate, sample_rate, notice=False)  # counted; one notice for the dataset below
        trimmed = trim_silence(x, top_db)
        return fit_length(trimmed, length), channels, rate, len(trimmed)

    out = np.empty((len(paths), length), dtype=np.float32)
    keep: list[int] = []
    skipped: list[str] = []
    rates: Counter = Counter()
    mixed = cropped = padded = silent = 0
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, result in enumerate(pool.map(work, paths)):
            if isinstance(result, UserError):
                if len(skipped) < _MAX_EXAMPLES:
                    skipped.append(str(result))
                continue
            clip, channels, rate, n = result
            out[len(keep)] = np.clip(clip, -1.0, 1.0)
            keep.append(i)
            rates[rate] += 1
            mixed += channels > 1
            cropped += n > length
            padded += n < length
            silent += n == 0
    if mixed:
        warnings.warn(_MIXDOWN_NOTICE, stacklevel=3)
    report = {"files": len(paths), "loaded": len(keep), "unreadable": len(paths) - len(keep),
              "mixed_down": mixed, "resampled": sum(c for r, c in rates.items() if r != sample_rate),
              "source_rates": {int(r): c for r, c in sorted(rates.items())}, "cropped": cropped, "padded": padded,
              "silent": silent, "skipped_examples": skipped}
    return (out if len(keep) == len(paths) else out[:len(keep)].copy()), keep, report


def _check_shape(sample_rate: int, length: int) -> None:
    if int(sample_rate) <= 0 or int(length) <= 0:
        raise UserError(f"sample_rate and length must be positive, got {sample_rate} and {length}. "
                        "Fix: e.g. sample_rate=8000, length=8192.")


def load_audio_dataset(name: str, data_dir: str | Path | None = None, split: str = "train", sample_rate: int = 8000,
                       length: int = 8192, download: bool = True, top_db: float = 40.0) -> AudioDataset:
    """A whole split as (N, length) float32 mono clips at `sample_rate` (see the module docstring).

    "fsdd" lives under resolve_data_dir(data_dir)/fsdd/recordings and is downloaded (each file checked against
    its packaged sha256) when missing, unless download is False; its labels are the digits and its speakers the
    six speaker names in sorted order. "folder:PATH": sub-folders are classes; only a train split."""
    check_split(split)
    _check_shape(sample_rate, length)
    kind, key = parse_name(name)
    if kind == "folder":
        if split != "train":
            raise UserError("Folder datasets have no test split: every recording in the folder is used for "
                            "training. Fix: use split 'train', or load held-out recordings from another folder.")
        root = Path(key)
        if not root.is_dir():
            raise UserError(f"The audio folder {root} does not exist or is not a folder. Fix: check the path "
                            "after 'folder:' (relative paths are relative to the current directory).")
        files, classes, others = _scan_folder(root)
        if not files:
            raise UserError(f"No WAV/FLAC/MP3/OGG files found in {root} ({others} other file(s) ignored). Fix: put "
                            "the recordings in PATH/<class name>/ sub-folders, or directly in PATH if unlabelled.")
        clips, keep, report = _load_clips([p for p, _ in files], sample_rate, length, top_db, strict=False)
        if not keep:
            raise UserError(f"None of the {len(files)} audio file(s) in {root} could be read (e.g. "
                            f"{report['skipped_examples'][0]}). Fix: replace or remove the damaged files.")
        report["other_files"] = others
        labels = np.array([files[i][1] for i in keep], dtype=np.int64) if classes else None
        return AudioDataset(name.strip(), clips, labels, classes, None, [], int(sample_rate), FOLDER_LICENSE, report)
    spec = STANDARD_DATASETS[key] if kind == "standard" else None
    if spec is None or spec.kind not in AUDIO_KINDS:
        raise UserError(f"'{name}' is an image dataset, not audio. Fix: load it with load_image_dataset, or use "
                        "an audio dataset: fsdd, or folder:PATH of WAV/FLAC/MP3/OGG files.")
    files_dir = ensure_split_files(spec, resolve_data_dir(data_dir), split, download)
    names = [f.name for f in spec.splits[split]]
    clips, _, report = _load_clips([files_dir / n for n in names], sample_rate, length, top_db, strict=True)
    parts = [n[:-len(".wav")].split("_") for n in names]
    labels = np.array([int(p[0]) for p in parts], dtype=np.int64)
    speakers = np.array([FSDD_SPEAKERS.index(p[1]) for p in parts], dtype=np.int64)
    return AudioDataset(key, clips, labels, list(spec.classes), speakers, list(FSDD_SPEAKERS), int(sample_rate),
                        FSDD_LICENSE, report)


def audio_dataset_info(name: str, data_dir: str | Path | None = None) -> dict:
    """`genforge data info` for an audio dataset: counts, rates and checksums, without decoding the audio.

    Same keys as loading.dataset_info; a split's "shape" is None (clips are cut to a model's length when
    loaded) and it gives "seconds" and "sample_rates" instead. "files" holds one summary row plus a row per
    missing or mismatched file (at most ten)."""
    from .download import checksum_status

    kind, key = parse_name(name)
    if kind == "folder":
        root = Path(key)
        try:
            files, classes, others = _scan_folder(root) if root.is_dir() else ([], [], 0)
            paths = [p for p, _ in files]
            splits = {"train": _files_summary(paths)}
        except UserError as exc:
            classes, splits, others = [], {"train": {"count": None, "shape": None, "error": str(exc)}}, 0
        return {"name": name.strip(), "path": key, "splits": splits, "classes": classes, "files": [],
                "license": FOLDER_LICENSE, "report": {"other_files": others}}
    spec = STANDARD_DATASETS[key]
    root = dataset_root(spec, resolve_data_dir(data_dir))
    files_dir = spec.files_dir(root)
    rows, counts = [], Counter()
    for f in spec.all_files():
        path = files_dir / f.name
        status = checksum_status(path if path.is_file() else None, f)
        counts[status] += 1
        if status != "ok" and len(rows) < _MAX_EXAMPLES and not (status == "missing" and not path.parent.is_dir()):
            rows.append({"file": path.relative_to(root).as_posix(), "present": path.is_file(), "checksum": status})
    summary = ", ".join(f"{c} {s}" for s, c in sorted(counts.items()))
    files = [{"file": f"{spec.subfolder}/*.wav ({sum(counts.values())} files: {summary})",
              "present": counts["missing"] == 0, "checksum": "ok" if set(counts) == {"ok"} else "see below"}, *rows]
    splits = {}
    for split in ("train", "test"):
        missing = [f.name for f in spec.splits[split] if not (files_dir / f.name).is_file()]
        splits[split] = ({"count": None, "shape": None, "missing": missing} if missing else
                         _files_summary([files_dir / f.name for f in spec.splits[split]]))
    return {"name": key, "path": str(files_dir), "splits": splits, "classes": list(spec.classes),
            "speakers": list(FSDD_SPEAKERS), "files": files, "license": FSDD_LICENSE,
            "report": {"note": spec.note} if spec.note else {}}


def _files_summary(paths: list[Path]) -> dict:
    """Count, total seconds and rates from the files' headers; unreadable files are counted, not fatal."""
    seconds, rates, bad = 0.0, Counter(), []
    for p in paths:
        try:
            info = sf.info(str(p))
            seconds += info.frames / info.samplerate
            rates[int(info.samplerate)] += 1
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            bad.append(f"{p.name}: {_reason(exc)}")
    entry = {"count": len(paths) - len(bad), "shape": None, "seconds": round(seconds, 1),
             "sample_rates": {int(r): c for r, c in sorted(rates.items())}}
    if bad:
        entry["unreadable"] = bad[:_MAX_EXAMPLES]
    return entry
