"""Folders of clips (folder:PATH): MP4/WebM/MKV/MOV/AVI decoded with PyAV, GIF/WebP/APNG with Pillow (FFmpeg has
no animated-WebP decoder). Layout as for image folders: immediate sub-folders are classes. A clip keeps its first
`frames` frames at their own rate; shorter clips are dropped and counted, not looped or held, since a loop seam
is a teleport and a held frame a frozen digit. Frames are centre-cropped square and resized to the model's side,
with one notice. A clip is grey (C=1) when its channels are equal in every frame; a folder when all its clips are.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

from genforge.errors import UserError

from .registry import FOLDER_PREFIX

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".webp", ".apng")
_PILLOW_EXTENSIONS = frozenset({".gif", ".webp", ".png", ".apng"})  # .png: APNG is often named so
_CLIP_FILES = frozenset(VIDEO_EXTENSIONS) | {".png"}
_UNKNOWN_FPS = 10.0  # what browsers use for GIF frames that carry no delay
_MAX_EXAMPLES = 10
_FIX = "Fix: replace it with an intact MP4/WebM/GIF/WebP/APNG clip, or remove it"


@dataclass
class Clips:
    """Many clips in memory, with their ground truth when generated."""

    clips: np.ndarray  # uint8 [n, T, H, W, C]
    labels: np.ndarray | None  # int64 [n] class index, or None (unlabelled folder, 3-digit Moving MNIST)
    classes: list[str]
    tracks: np.ndarray | None  # float32 [n, T, D, 2]: each digit's top-left (x, y) in canvas pixels, pre-rounding
    digits: np.ndarray | None  # int64 [n, D]: the MNIST class of each of the D digits
    fps: float
    report: dict = field(default_factory=dict)  # folders: files, loaded, unreadable, too_short, resized, ...

    def __len__(self) -> int:
        return int(self.clips.shape[0])


def _read_pillow(path: Path, frames: int | None) -> tuple[list[np.ndarray], float]:
    out, durations = [], []
    with Image.open(path) as im:
        for frame in ImageSequence.Iterator(im):
            if frames is not None and len(out) >= frames:
                break
            frame.load()
            durations.append(frame.info.get("duration") or 0)
            if frame.mode in ("RGBA", "LA", "PA") or "transparency" in frame.info:
                rgba = frame.convert("RGBA")
                frame = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
            out.append(np.asarray(frame.convert("RGB"), dtype=np.uint8))
    positive = [d for d in durations if d > 0]
    if not positive:
        return out, _UNKNOWN_FPS
    # GIF, WebP and APNG writers merge identical consecutive frames into one longer frame: a frame that lasts k
    # ticks of the shortest duration is k frames of the clip
    tick = float(min(positive))
    held = [max(1, round(d / tick)) if d > 0 else 1 for d in durations]
    if any(k > 1 for k in held):
        out = [f for f, k in zip(out, held) for _ in range(k)][: frames or None]
    return out, 1000.0 / tick


def _read_av(path: Path, frames: int | None) -> tuple[list[np.ndarray], float]:
    try:
        import av
    except ImportError:
        raise UserError(f"Decoding {path.suffix} clips needs PyAV. Fix: pip install 'genforge[video]'.") from None
    out, stamps = [], []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise UserError(f"{path} has no video stream. {_FIX}.")
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if frames is not None and len(out) >= frames:
                break
            alpha = any(c.is_alpha for c in frame.format.components)
            rgb = frame.to_ndarray(format="rgba" if alpha else "rgb24")
            if alpha:
                rgb = (rgb[..., :3].astype(np.uint16) * rgb[..., 3:] // 255).astype(np.uint8)
            out.append(rgb)
            if frame.pts is not None and frame.time_base is not None:
                stamps.append(float(frame.pts * frame.time_base))
        rate = stream.average_rate or stream.guessed_rate
    steps = np.diff(stamps)  # no declared rate: the frames' own timestamps
    if rate or not len(steps) or np.median(steps) <= 0:
        return out, float(rate) if rate else _UNKNOWN_FPS
    return out, 1.0 / float(np.median(steps))


def read_clip(path, frames: int | None = None) -> tuple[np.ndarray, float]:
    """One clip file as uint8 [T, H, W, C] and its frame rate; only the first `frames` frames when given.

    C is 1 when the three channels are equal in every frame, else 3; transparency is composited over black.
    Missing, empty, undecodable and frameless files raise a one-line UserError naming the file."""
    path = Path(path).expanduser()
    if frames is not None and int(frames) < 1:
        raise UserError(f"frames must be at least 1, got {frames}.")
    if not path.is_file():
        raise UserError(f"No such clip file: {path}. Fix: check the path.")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty (0 bytes), not a clip. {_FIX}.")
    try:
        reader = _read_pillow if path.suffix.lower() in _PILLOW_EXTENSIONS else _read_av
        out, fps = reader(path, None if frames is None else int(frames))
    except UserError:
        raise
    except Exception as exc:  # PyAV and Pillow raise many types for a bad file; all mean "undecodable"
        reason = (str(exc).strip() or type(exc).__name__).splitlines()[0].split("] ", 1)[-1]  # drop "[Errno N]"
        reason = reason.replace(f": '{path}'", "").replace(f" '{path}'", "")[:160].rstrip(".")  # it is named below
        raise UserError(f"{path} could not be decoded as a clip ({reason}). {_FIX}.") from None
    if not out:
        raise UserError(f"{path} holds no frames. {_FIX}.")
    if len({f.shape for f in out}) > 1:
        raise UserError(f"{path} changes frame size mid-clip ({out[0].shape[:2]} then another). {_FIX}.")
    clip = np.stack(out)
    if np.array_equal(clip[..., 0], clip[..., 1]) and np.array_equal(clip[..., 0], clip[..., 2]):
        clip = np.ascontiguousarray(clip[..., :1])
    return clip, fps


def _fit(clip: np.ndarray, side: int) -> tuple[np.ndarray, bool]:
    """Centre-crop to a square, resize to side x side (bilinear, antialiased when shrinking); (clip, changed)."""
    t, h, w, c = clip.shape
    if (h, w) == (side, side):
        return clip, False
    crop = min(h, w)
    top, left = (h - crop) // 2, (w - crop) // 2
    square = clip[:, top:top + crop, left:left + crop]
    out = np.empty((t, side, side, c), dtype=np.uint8)
    for k in range(t):
        im = Image.fromarray(square[k, ..., 0] if c == 1 else square[k])
        out[k] = np.asarray(im.resize((side, side), Image.Resampling.BILINEAR)).reshape(side, side, c)
    return out, True


def _visible_files(folder: Path) -> list[Path]:
    """Files under `folder`, recursively and sorted, hidden entries skipped."""
    found = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(current) / f for f in sorted(files) if not f.startswith("."))
    return found


def _is_clip(path: Path) -> bool:
    return path.suffix.lower() in _CLIP_FILES


def _scan(root: Path) -> tuple[list[tuple[Path, int | None]], list[str], int]:
    """(clip files with labels, class names, other-file count): the rules of image folders (data/folder.py)."""
    entries = sorted((e for e in os.scandir(root) if not e.name.startswith(".")), key=lambda e: e.name)
    top = [Path(e.path) for e in entries if e.is_file()]
    others = sum(not _is_clip(p) for p in top)
    top = [p for p in top if _is_clip(p)]
    classes, files = [], []
    for sub in (Path(e.path) for e in entries if e.is_dir()):
        found = _visible_files(sub)
        others += sum(not _is_clip(p) for p in found)
        if any(_is_clip(p) for p in found):
            files.extend((p, len(classes)) for p in found if _is_clip(p))
            classes.append(sub.name)
    if classes and top:
        raise UserError(f"{root} has class sub-folders ({', '.join(classes[:5])}) and also {len(top)} clip(s) "
                        f"directly inside it (e.g. {top[0].name}), so it is unclear which class those belong to. "
                        "Fix: move them into a class sub-folder or out of the folder.")
    return (files if classes else [(p, None) for p in top]), classes, others


def load_clip_folder(path, opts: dict) -> Clips:
    """Every clip under `path` (sub-folders as classes), cut to opts frames and fitted to the model's square side
    (opts size, else canvas); see the module docstring. Undecodable and too-short clips are skipped and counted
    in the report; one notice says what was skipped or resized."""
    from .video import (
        _options,  # the video options' one validator (video.py imports this module)
    )

    o = _options(opts)
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"The clip folder {root} {'is a file' if root.exists() else 'does not exist'}. Fix: write "
                        f"{FOLDER_PREFIX}PATH with the folder that holds the clips.")
    files, classes, others = _scan(root)
    if not files:
        raise UserError(f"No clips ({', '.join(e[1:].upper() for e in VIDEO_EXTENSIONS)}) found in {root} ({others} "
                        "other file(s) ignored). Fix: put the clips in PATH/<class name>/ sub-folders, or directly "
                        "in PATH if unlabelled.")
    frames, side = o["frames"], o["size"] or o["canvas"]

    def work(item):
        try:
            clip, fps = read_clip(item[0], frames)
        except UserError as exc:
            return exc
        if len(clip) < frames:
            return len(clip)
        fitted, changed = _fit(clip, side)
        return fitted, changed, fps

    kept, labels, skipped = [], [], []
    unreadable, short, longest, resized, rates = 0, 0, 0, 0, Counter()
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # FFmpeg decodes without the GIL
        for (p, label), result in zip(files, pool.map(work, files)):
            if isinstance(result, (UserError, int)):
                bad = isinstance(result, UserError)
                unreadable, short, longest = unreadable + bad, short + (not bad), max(longest, 0 if bad else result)
                if len(skipped) < _MAX_EXAMPLES:
                    skipped.append(str(result) if bad else f"{p.relative_to(root).as_posix()}: {result} frame(s), "
                                                           f"fewer than {frames}")
            else:
                kept.append(result[0])
                labels.append(label)
                resized += result[1]
                rates[round(result[2], 3)] += 1
    if not kept:
        if short:
            raise UserError(f"No clip in {root} has {frames} frames ({short} shorter, the longest {longest}; "
                            f"{unreadable} undecodable). Fix: set data.video.frames={max(longest, 2)} or add "
                            "longer clips.")
        raise UserError(f"None of the {len(files)} clip file(s) in {root} could be decoded (e.g. {skipped[0]}). "
                        "Fix: replace or remove the damaged files.")
    channels = 1 if all(c.shape[-1] == 1 for c in kept) else 3
    clips = np.stack([np.repeat(c, 3, axis=-1) if c.shape[-1] < channels else c for c in kept])
    report = {"files": len(files), "loaded": len(kept), "unreadable": unreadable, "too_short": short,
              "resized": resized, "source_fps": dict(sorted(rates.items())), "other_files": others,
              "skipped_examples": skipped}
    changes = [text for count, text in (
        (resized, f"centre-cropped/resized {resized} of {len(kept)} clip(s) to {side}x{side}"),
        (short, f"dropped {short} clip(s) shorter than {frames} frames"),
        (unreadable, f"skipped {unreadable} undecodable file(s) (the report lists them)")) if count]
    if changes:
        warnings.warn(f"genforge, loading clips from {root}: {'; '.join(changes)}.", stacklevel=2)
    return Clips(clips, np.array(labels, dtype=np.int64) if classes else None, classes, None, None, o["fps"],
                 report)


def _animated(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            return bool(getattr(im, "is_animated", False))
    except Exception:  # unreadable: not evidence of a still image either
        return True


def folder_holds_clips(root: Path) -> bool:
    """Clip files and no stills or audio; .webp/.png count as clips when the first few are animated."""
    from .audio import AUDIO_EXTENSIONS
    from .folder import IMAGE_EXTENSIONS

    files = [p for p in _visible_files(root) if p.suffix.lower() in _CLIP_FILES | IMAGE_EXTENSIONS |
             set(AUDIO_EXTENSIONS)]
    maybe = [p for p in files if p.suffix.lower() in (".webp", ".png")]
    if not files or any(not _is_clip(p) for p in files):
        return False
    return all(_animated(p) for p in maybe[:3])
