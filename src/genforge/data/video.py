"""Video datasets: Moving MNIST generated on the fly from the MNIST files (folders of clips: clip_files.py).

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

Folders of clips are read by data/clip_files.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from genforge.errors import UserError

from . import idx
from .clip_files import (  # noqa: F401
    VIDEO_EXTENSIONS,
    Clips,
    folder_holds_clips,
    load_clip_folder,
    read_clip,
)
from .download import ensure_split_files
from .registry import (
    FOLDER_PREFIX,
    STANDARD_DATASETS,
    check_split,
    parse_name,
    resolve_data_dir,
)

MOVING_MNIST = "moving-mnist"
_NAMES = frozenset({MOVING_MNIST, "moving_mnist", "movingmnist"})
MOTIONS = ("bounce", "stochastic")
DIGIT = 28
DEFAULT_OPTIONS = {"frames": 16, "fps": 8.0, "digits": 1, "canvas": 64, "size": None, "motion": "bounce",
                   "speed": [3.6, 3.6], "clips": 60000}  # = training.config.VideoConfig().model_dump()
_SEED = 0x6D6E6973  # fixed forever: changing it changes every clip
_SPLIT_ID = {"train": 0, "test": 1}
_MAX_ANGLE = np.deg2rad(75.0)
_MIN_CORNER = np.deg2rad(15.0)


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
    return folder.is_dir() and folder_holds_clips(folder)


def video_dataset_info(name: str, data_dir=None) -> dict:
    """`genforge data info` of a clip dataset with default options: Moving MNIST's shape, classes and the MNIST files
    it draws from (generated, so its split sizes are per epoch); a folder's decoded clips."""
    opts = _options(None)
    shape = [opts["frames"], opts["canvas"], opts["canvas"], 1]
    if is_moving_mnist(name):
        from .loading import dataset_info

        mnist = dataset_info("mnist", data_dir)
        return {"name": MOVING_MNIST, "path": f"generated from MNIST in {mnist.get('path')}",
                "splits": {split: {"count": opts["clips"], "shape": shape, "unit": "clips per epoch (generated)"}
                           for split in ("train", "test")},
                "classes": [str(d) for d in range(10)], "files": mnist.get("files", []), "report": {}}
    folder = parse_name(name)[1]
    try:
        got = load_clip_folder(folder, opts)
        splits = {"train": {"count": len(got.clips), "shape": list(got.clips.shape[1:]), "unit": "clips"}}
        classes, report = got.classes, got.report
    except UserError as exc:
        splits, classes, report = {"train": {"count": None, "shape": None, "error": str(exc)}}, [], {}
    return {"name": name.strip(), "path": folder, "splits": splits, "classes": classes, "files": [], "report": report}
