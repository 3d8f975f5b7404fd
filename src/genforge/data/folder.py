"""Image folders: `folder:PATH`.

Layout rules, chosen so that a folder means one obvious thing:
- PNG/JPEG/WebP files (extensions in any case) are images; other files and hidden entries
  (names starting with ".") are ignored and counted.
- If PATH has sub-folders with images, each immediate sub-folder is a class (sorted by name; images
  in deeper folders belong to their top sub-folder). Images lying directly in PATH as well would
  be ambiguous, so that is an error.
- If PATH has no such sub-folders, its images are an unlabelled dataset.

Cleaning happens once, at load time: files Pillow cannot decode and byte-identical duplicates (same
sha256; the first in sorted order is kept) are skipped and counted in the report, not fatal.

Size: with image_size, every image is resized (bilinear, antialiased) straight to a square
image_size x image_size, stretching non-square images. Without it, images are resized to the most
common size in the folder (ties: the size seen first), so one odd file cannot dictate the shape.
Channels: grayscale images (modes 1, L, LA, 16-bit) give C=1 if all images are grayscale, else
every image becomes RGB (C=3); transparent pixels are composited over black. EXIF orientation is
applied, so phone photos come out upright.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from genforge.errors import UserError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp"})
_HIGH_DEPTH_GRAY = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_GRAY_MODES = frozenset({"1", "L", "LA"}) | _HIGH_DEPTH_GRAY
_EXIF_ORIENTATION = 0x0112
_MAX_EXAMPLES = 10
_LAYOUT_FIX = ("put the images in PATH/<class name>/ sub-folders (one per class), or directly in PATH "
               "(no sub-folders) for an unlabelled dataset")


@dataclass
class _Candidate:
    path: Path
    label: int | None
    size: tuple[int, int]  # (width, height) after EXIF rotation
    gray: bool


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_images(folder: Path) -> tuple[list[Path], int]:
    """Images under `folder`, recursively, in a stable sorted order; plus the count of other files."""
    images: list[Path] = []
    others = 0
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if _visible(d))
        for name in sorted(f for f in files if _visible(f)):
            if _is_image(name):
                images.append(Path(current) / name)
            else:
                others += 1
    return images, others


def _scan(root: Path) -> tuple[list[tuple[Path, int | None]], list[str], int, list[str]]:
    """(files with labels, class names, other-file count, sub-folders without images)."""
    top_images: list[Path] = []
    subfolders: list[Path] = []
    others = 0
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not _visible(entry.name):
            continue
        if entry.is_dir():
            subfolders.append(Path(entry.path))
        elif entry.is_file():
            if _is_image(entry.name):
                top_images.append(Path(entry.path))
            else:
                others += 1
    classes: list[str] = []
    files: list[tuple[Path, int | None]] = []
    empty: list[str] = []
    for sub in subfolders:
        images, sub_others = _walk_images(sub)
        others += sub_others
        if not images:
            empty.append(sub.name)
            continue
        files.extend((p, len(classes)) for p in images)
        classes.append(sub.name)
    if classes and top_images:
        raise UserError(f"{root} has class sub-folders ({', '.join(classes[:5])}{'...' if len(classes) > 5 else ''}) "
                        f"and also {len(top_images)} image(s) directly inside it (e.g. {top_images[0].name}), "
                        f"so it is unclear which class those belong to. Fix: move them into a class "
                        f"sub-folder or out of {root}.")
    if not classes:
        files = [(p, None) for p in top_images]
    return files, classes, others, empty


def _probe(path: Path) -> tuple[bytes, tuple[int, int], bool]:
    """Content hash, upright size and grayscale-ness, from the bytes and the image header only."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).digest()
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
        try:
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:  # a broken EXIF block is not worth rejecting the image for
            orientation = 1
        if orientation in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
            width, height = height, width
        return digest, (width, height), im.mode in _GRAY_MODES


def _to_mode(im: Image.Image, channels: int) -> Image.Image:
    if im.mode in _HIGH_DEPTH_GRAY:
        # Pillow's convert("L") clips 16-bit values at 255; scale them instead.
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F" and a.size and a.max() <= 1.0:
            a = a * 255.0
        elif im.mode.startswith("I;16") or (a.size and a.max() > 255):
            a = a / 257.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return im.convert("L" if channels == 1 else "RGB")


def _decode(path: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        im = _to_mode(im, channels)
        if im.size != size:
            im = im.resize(size, Image.Resampling.BILINEAR)  # Pillow antialiases when shrinking
        arr = np.asarray(im, dtype=np.uint8)
    return arr.reshape(size[1], size[0], channels)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def load_folder(root: Path, image_size: int | None = None, channels: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None, list[str], dict]:
    """Read every image under `root` into uint8 (N, H, W, C); see the module docstring for the rules."""
    if not root.exists():
        raise UserError(f"The image folder {root} does not exist. Fix: check the path after 'folder:' "
                        "(relative paths are relative to the current directory).")
    if not root.is_dir():
        raise UserError(f"{root} is a file, not a folder. Fix: write folder:PATH with the folder that "
                        "holds the images.")
    files, classes, others, empty = _scan(root)
    if not files:
        raise UserError(f"No PNG/JPEG/WebP images found in {root} ({others} other file(s) ignored). "
                        f"Fix: {_LAYOUT_FIX}.")

    skipped: list[str] = []
    unreadable = duplicates = 0
    seen: set[bytes] = set()
    candidates: list[_Candidate] = []

    def skip(path: Path, why: str) -> None:
        if len(skipped) < _MAX_EXAMPLES:
            skipped.append(f"{path.relative_to(root).as_posix()}: {why}")

    for path, label in files:
        try:
            digest, size, gray = _probe(path)
        except Exception as exc:  # Pillow raises many types for bad files; all mean "unreadable"
            unreadable += 1
            skip(path, f"unreadable ({_reason(exc)})")
            continue
        if digest in seen:
            duplicates += 1
            skip(path, "exact duplicate of an earlier file")
            continue
        seen.add(digest)
        candidates.append(_Candidate(path, label, size, gray))

    if candidates:
        if image_size is not None:
            target = (image_size, image_size)
        else:
            counts = Counter(c.size for c in candidates)
            best = max(counts.values())
            target = next(c.size for c in candidates if counts[c.size] == best)
        c_out = channels if channels is not None else (1 if all(c.gray for c in candidates) else 3)
        out = np.empty((len(candidates), target[1], target[0], c_out), dtype=np.uint8)

        def work(c: _Candidate):
            try:
                return _decode(c.path, target, c_out)
            except Exception as exc:
                return exc

        keep: list[int] = []
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for i, (c, result) in enumerate(zip(candidates, pool.map(work, candidates))):
                if isinstance(result, BaseException):
                    unreadable += 1
                    skip(c.path, f"unreadable ({_reason(result)})")
                else:
                    out[len(keep)] = result
                    keep.append(i)
        candidates = [candidates[i] for i in keep]

    if not candidates:
        raise UserError(f"None of the {len(files)} image file(s) in {root} could be read "
                        f"(e.g. {'; '.join(skipped[:3])}). Fix: replace or remove the damaged files.")

    n = len(candidates)
    images = torch.from_numpy(out[:n] if n == len(out) else out[:n].copy())
    labels = None if not classes else torch.tensor([c.label for c in candidates], dtype=torch.int64)
    report = {
        "files": len(files),
        "loaded": n,
        "unreadable": unreadable,
        "duplicates": duplicates,
        "resized": sum(c.size != target for c in candidates),
        "other_files": others,
        "skipped_examples": skipped,
    }
    if empty:
        report["folders_without_images"] = empty
    return images, labels, classes, report


def read_images(path: str | Path, height: int, width: int, channels: int) -> tuple[torch.Tensor, list[Path], list[str]]:
    """Images given to a model (one file, or every image in a folder, sorted), as uint8 (N, H, W, C) of the
    model's shape: converted to its channels, centre-cropped to its aspect ratio and resized.

    Returns (images, paths, notes); each note is one line saying what was changed, for the caller to show.
    Unreadable files are refused: a model's input is not a dataset from which bad files can be dropped.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        paths = sorted(p for p in _walk_images(path)[0])
        if not paths:
            raise UserError(f"{path} holds no PNG/JPEG/WebP images. Fix: pass an image file or a folder of images.")
    elif path.is_file():
        paths = [path]
    else:
        raise UserError(f"No such image or folder: {path}.")
    arrays, resized, converted = [], 0, 0
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                gray = im.mode in _GRAY_MODES
                im = _to_mode(im, channels)
                w, h = im.size
                target = width / height
                if abs(w / h - target) > 1e-6:  # centre crop to the model's aspect ratio before resizing
                    cw, ch = (round(h * target), h) if w / h > target else (w, round(w / target))
                    left, top = (w - cw) // 2, (h - ch) // 2
                    im = im.crop((left, top, left + cw, top + ch))
                if im.size != (width, height):
                    im = im.resize((width, height), Image.Resampling.BILINEAR)
                    resized += 1
                converted += int(gray != (channels == 1))
                arrays.append(np.asarray(im, dtype=np.uint8).reshape(height, width, channels))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise UserError(f"Cannot read {p} as an image ({_reason(exc)}). Fix: pass PNG, JPEG or WebP files.") from None
    notes = []
    if resized:
        notes.append(f"resized {resized} of {len(paths)} image(s) to the model's {width}x{height} (centre-cropped to its shape)")
    if converted:
        notes.append(f"converted {converted} of {len(paths)} image(s) to {'grey' if channels == 1 else 'RGB'}, "
                     f"as the model expects")
    return torch.from_numpy(np.stack(arrays)), paths, notes
