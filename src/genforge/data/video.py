"""Video datasets: Moving MNIST generated on the fly from the MNIST files, and folders of short clips.

Moving MNIST ("moving-mnist") follows Srivastava et al. 2015 (ICML, "Unsupervised learning of video
representations using LSTMs", and their data handler): 28-px MNIST digits on a 64-px black canvas, each from a
uniform random top-left in [0, canvas-28]^2 in a uniform random direction, a constant step per frame, overlaps
combined by max. Their step is 0.1 of the 36-px range for every clip, so the default speed is [3.6, 3.6]; a
wider [lo, hi] draws one speed per clip. Their wall rule is "bounce": after a step, a coordinate outside
[0, canvas-28] is set onto the wall it crossed and that velocity component turns away from it, so a bounce frame
shows the digit touching the wall and only the step into a wall is shortened. "stochastic" is Denton & Fergus
2018 (ICML, SVG's stochastic Moving MNIST): the same stop at a wall, then a fresh velocity pointing away, its
speed drawn from [lo, hi] and its angle within 75 degrees of the wall's normal (SVG draws the away-component in
1..4 px and the other in -4..4, up to atan(4) = 76 degrees); in a corner, 15..75 degrees into the open quadrant.
On purpose unlike the original: float positions pasted at their rounded pixel (it truncates, biasing digits to
the top-left); 1 digit by default (its 2-digit clips have no single label: 2 digits give the 55 unordered pair
classes "a+b", 3 digits no labels); 16 frames (its 20 are 10 seen + 10 to forecast, a split that
generation does not need).

Clip i is a pure function of (split, i, options): its random numbers are the raw output of PCG64 seeded by
SeedSequence([a fixed constant, split id, i]), which numpy keeps stable across releases (Generator methods it
does not promise), so index i is the same clip on every machine, worker and version. A longer clip starts as the
shorter one, and a "stochastic" clip follows its "bounce" twin until its first wall. Tracks are the digits' float
top-left (x, y) in canvas pixels before rounding; with `size` below the canvas the frames are area-averaged
(exact fractional overlaps, as a reshape-mean when size divides the canvas; Pillow's BOX is not fractional).

Folders of clips (folder:PATH): MP4/WebM/MKV/MOV/AVI decoded with PyAV, GIF/WebP/APNG with Pillow (FFmpeg has
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
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageSequence

from genforge.errors import UserError

from . import idx
from .download import ensure_split_files
from .registry import FOLDER_PREFIX, STANDARD_DATASETS, check_split, parse_name, resolve_data_dir

MOVING_MNIST = "moving-mnist"
_NAMES = frozenset({MOVING_MNIST, "moving_mnist", "movingmnist"})
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".webp", ".apng")
_PILLOW_EXTENSIONS = frozenset({".gif", ".webp", ".png", ".apng"})  # .png: APNG is often named so
_CLIP_FILES = frozenset(VIDEO_EXTENSIONS) | {".png"}
MOTIONS = ("bounce", "stochastic")
DIGIT = 28
DEFAULT_OPTIONS = {"frames": 16, "fps": 8.0, "digits": 1, "canvas": 64, "size": None, "motion": "bounce",
                   "speed": [3.6, 3.6], "clips": 60000}  # = training.config.VideoConfig().model_dump()
_SEED = 0x6D6E6973  # fixed forever: changing it changes every clip
_SPLIT_ID = {"train": 0, "test": 1}
_MAX_ANGLE = np.deg2rad(75.0)
_MIN_CORNER = np.deg2rad(15.0)
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


def _options(opts: dict | None) -> dict:
    """The defaults overlaid with `opts`, checked here too: the data layer does not import the config models."""
    o = {**DEFAULT_OPTIONS, **(opts or {})}
    if set(o) - set(DEFAULT_OPTIONS):
        raise UserError(f"Unknown video option(s) {', '.join(sorted(set(o) - set(DEFAULT_OPTIONS)))}. "
                        f"Fix: use {', '.join(DEFAULT_OPTIONS)}.")
    try:
        lo, hi = (float(v) for v in o["speed"])
        o = {**o, "frames": int(o["frames"]), "digits": int(o["digits"]), "canvas": int(o["canvas"]), "speed": [lo, hi],
             "fps": float(o["fps"]), "clips": int(o["clips"]), "size": None if o["size"] is None else int(o["size"])}
    except (TypeError, ValueError):
        raise UserError(f"Bad video options {opts}. Fix: numbers as in data.video, speed as [lo, hi].") from None
    canvas, size = o["canvas"], o["size"]
    problems = [text for bad, text in (
        (not 2 <= o["frames"] <= 64, f"frames must be 2..64, got {o['frames']}"),
        (not 1 <= o["digits"] <= 3, f"digits must be 1..3, got {o['digits']}"),
        (canvas < 32 or canvas % 2, f"canvas must be an even side >= 32, got {canvas}"),
        (size is not None and (size % 2 or not 16 <= size <= canvas), f"size must be None or even in 16..{canvas}"),
        (o["motion"] not in MOTIONS, f"motion must be one of {', '.join(MOTIONS)}, got {o['motion']!r}"),
        (not 0 < lo <= hi <= canvas - DIGIT, f"speed needs 0 < lo <= hi <= {canvas - DIGIT}, got [{lo}, {hi}]"),
        (o["fps"] <= 0 or o["clips"] < 1, "fps and clips must be positive")) if bad]
    if problems:
        raise UserError(f"Bad video options: {'; '.join(problems)}. Fix: set data.video within those limits.")
    return o


_DIGITS_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _mnist_digits(split: str, data_dir, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's (N, 28, 28) uint8 images and (N,) labels of `split`, read once per process (workers share it)."""
    spec = STANDARD_DATASETS["mnist"]
    try:
        files_dir = ensure_split_files(spec, resolve_data_dir(data_dir), split, download)
    except UserError as exc:
        raise UserError(f"moving-mnist draws its digits from MNIST's {split} split, which is not there. {exc}") \
            from None
    paths = [f.find(files_dir) for f in spec.splits[split]]
    key = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    if key not in _DIGITS_CACHE:
        try:
            data = [p.read_bytes() for p in paths]
        except OSError as exc:
            raise UserError(f"Cannot read {exc.filename} ({exc.strerror}). Fix: check its permissions, or delete "
                            "it and download it again.") from None
        images, labels = idx.images_and_labels(data[0], str(paths[0]), data[1], str(paths[1]), 10)
        _DIGITS_CACHE[key] = (np.ascontiguousarray(images.numpy()[..., 0]), labels.numpy())
    return _DIGITS_CACHE[key]


def pair_classes() -> list[str]:
    """The 55 unordered digit pairs "a+b" (a <= b), in class-index order: index a*10 - a*(a-1)/2 + (b-a)."""
    return [f"{a}+{b}" for a in range(10) for b in range(a, 10)]


def _uniforms(split_id: int, indices: np.ndarray, k: int) -> np.ndarray:
    """(n, k) float64 in [0, 1): the first k raw PCG64 draws of each clip's own stream, 53 bits each."""
    raw = np.empty((len(indices), k), dtype=np.uint64)
    for row, i in enumerate(indices):
        raw[row] = np.random.PCG64(np.random.SeedSequence([_SEED, split_id, int(i)])).random_raw(k)
    return (raw >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _trajectories(u: np.ndarray, frames: int, digits: int, box: int, motion: str, speed: list[float]) -> np.ndarray:
    """(n, T, D, 2) float64 top-left positions from the clip's uniforms (layout in MovingMnist.clips)."""
    n, d = len(u), digits
    lo, hi = speed
    x, y = u[:, d:2 * d] * box, u[:, 2 * d:3 * d] * box
    theta, s = u[:, 3 * d:4 * d] * 2 * np.pi, lo + (hi - lo) * u[:, 4 * d:5 * d]
    vx, vy = s * np.cos(theta), s * np.sin(theta)
    pool = u[:, 5 * d:].reshape(n, frames, d, 2)
    out = np.empty((n, frames, d, 2))
    for t in range(frames):
        out[:, t, :, 0], out[:, t, :, 1] = x, y
        if t == frames - 1:
            break
        x, y = x + vx, y + vy
        low_x, high_x, low_y, high_y = x <= 0, x >= box, y <= 0, y >= box
        x, y = np.clip(x, 0, box), np.clip(y, 0, box)
        hit_x, hit_y = low_x | high_x, low_y | high_y
        away_x, away_y = np.where(low_x, 1.0, -1.0), np.where(low_y, 1.0, -1.0)
        if motion == "bounce":
            vx = np.where(hit_x, away_x * np.abs(vx), vx)
            vy = np.where(hit_y, away_y * np.abs(vy), vy)
            continue
        a, s = pool[:, t, :, 0], lo + (hi - lo) * pool[:, t, :, 1]
        phi = (2 * a - 1) * _MAX_ANGLE  # from the wall's normal
        psi = _MIN_CORNER + a * (_MAX_ANGLE - _MIN_CORNER)  # a corner: inside the quadrant away from both walls
        corner = hit_x & hit_y
        nvx = np.where(corner, away_x * s * np.cos(psi), np.where(hit_x, away_x * s * np.cos(phi), s * np.sin(phi)))
        nvy = np.where(corner, away_y * s * np.sin(psi), np.where(hit_y, away_y * s * np.cos(phi), s * np.sin(phi)))
        hit = hit_x | hit_y
        vx, vy = np.where(hit, nvx, vx), np.where(hit, nvy, vy)
    return out


def _area_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights of exact area averaging: output pixel i covers [i*src/dst, (i+1)*src/dst)."""
    edges = np.arange(dst + 1) * (src / dst)
    left, right = np.arange(src)[None, :], np.arange(1, src + 1)[None, :]
    overlap = np.clip(np.minimum(right, edges[1:, None]) - np.maximum(left, edges[:-1, None]), 0, None)
    return (overlap / (src / dst)).astype(np.float32)


def downsample(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [..., S, S] frames area-averaged to [..., size, size], rounded (integer sums when size divides S)."""
    side = frames.shape[-1]
    if size == side:
        return frames
    lead = frames.shape[:-2]
    if side % size == 0:
        f = side // size
        rows = sum(frames[..., j::f, :].astype(np.uint16) for j in range(f))
        total = sum(rows[..., j::f] for j in range(f))
        return ((total + f * f // 2) // (f * f)).astype(np.uint8)
    a = _area_matrix(side, size)  # two 2-D products: one GEMM each, not thousands of tiny ones
    x = frames.reshape(-1, side).astype(np.float32) @ a.T  # columns
    x = np.swapaxes(x.reshape(-1, side, size), 1, 2).reshape(-1, side) @ a.T  # rows, transposed
    small = np.swapaxes(x.reshape(-1, size, size), 1, 2).reshape(*lead, size, size)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


class MovingMnist:
    """Moving MNIST clips generated on demand from MNIST's `split` digits (see the module docstring)."""

    def __init__(self, split: str, opts: dict, data_dir=None, download: bool = True):
        self.split = check_split(split)
        self.opts = _options(opts)
        self.images, self.digit_labels = _mnist_digits(split, data_dir, download)
        d = self.opts["digits"]
        self.classes = [str(k) for k in range(10)] if d == 1 else pair_classes() if d == 2 else []
        self.frames, self.fps = self.opts["frames"], self.opts["fps"]
        self.size = self.opts["size"] or self.opts["canvas"]
        self.channels = 1

    def __len__(self) -> int:
        return self.opts["clips"]

    def clips(self, indices) -> Clips:
        """Clips `indices` (any non-negative ints; len(self) is only the epoch), each a function of its index."""
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        if index.size and index.min() < 0:
            raise UserError(f"Moving MNIST clip indices must be >= 0, got {int(index.min())}.")
        o = self.opts
        n, t, d, canvas = len(index), o["frames"], o["digits"], o["canvas"]
        box = canvas - DIGIT
        # per clip: D digit choices, D x, D y, D angles, D speeds, then (T, D, 2) uniforms for "stochastic"
        u = _uniforms(_SPLIT_ID[self.split], index, 5 * d + 2 * t * d)
        which = np.minimum((u[:, :d] * len(self.images)).astype(np.int64), len(self.images) - 1)
        tracks = _trajectories(u, t, d, box, o["motion"], o["speed"])
        x, y = np.rint(tracks).astype(np.int64).transpose(3, 0, 1, 2)  # (n, T, D) each
        out = np.zeros((n, t, canvas, canvas), dtype=np.uint8)
        windows = sliding_window_view(out, (DIGIT, DIGIT), axis=(2, 3), writeable=True)  # views into out
        clip_at, frame_at = np.arange(n)[:, None], np.arange(t)[None, :]
        for k in range(d):  # one digit per frame per pass, so no two writes of a pass overlap
            at = (clip_at, frame_at, y[..., k], x[..., k])
            windows[at] = np.maximum(windows[at], self.images[which[:, k]][:, None])
        video = downsample(out, self.size)[..., None]
        shown = self.digit_labels[which].astype(np.int64)
        if d == 1:
            labels = shown[:, 0].copy()
        elif d == 2:
            a, b = shown.min(axis=1), shown.max(axis=1)
            labels = a * 10 - a * (a - 1) // 2 + (b - a)
        else:
            labels = None
        return Clips(video, labels, list(self.classes), tracks.astype(np.float32), shown, self.fps)


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


def _folder_holds_clips(root: Path) -> bool:
    """Clip files and no stills or audio; .webp/.png count as clips when the first few are animated."""
    from .audio import AUDIO_EXTENSIONS
    from .folder import IMAGE_EXTENSIONS

    files = [p for p in _visible_files(root) if p.suffix.lower() in _CLIP_FILES | IMAGE_EXTENSIONS |
             set(AUDIO_EXTENSIONS)]
    maybe = [p for p in files if p.suffix.lower() in (".webp", ".png")]
    if not files or any(not _is_clip(p) for p in files):
        return False
    return all(_animated(p) for p in maybe[:3])


def is_moving_mnist(name: str) -> bool:
    return isinstance(name, str) and name.strip().lower() in _NAMES


def is_video_dataset(name: str) -> bool:
    """True for "moving-mnist", or folder:PATH whose files are clips (no still images or audio among them)."""
    if not isinstance(name, str) or not name.strip().lower().startswith(FOLDER_PREFIX):
        return isinstance(name, str) and name.strip().lower() in _NAMES
    try:
        folder = Path(parse_name(name)[1])
    except UserError:
        return False
    return folder.is_dir() and _folder_holds_clips(folder)
