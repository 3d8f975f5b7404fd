"""Image datasets shipped as one tar(.gz) of `<split>/<class>/<image>` files, read in place.

Nothing is unpacked: the archive is decompressed in memory and every member decoded with Pillow.
Order is deterministic (member names sorted within a split) and a label is the class's position in the
list the caller gives (the registry's canonical order), never the order of folders in the archive.

Decoding tens of thousands of small JPEGs takes ~12 s on an idle CPU core, so the decoded arrays are kept
as one safetensors file per archive in `<cache dir>/decoded/` (see registry.cache_dir). The data folder
is never written (it may be a read-only shared mount). The cache file is named after a hash of the
archive's sha256, the class list and the image shape, so a replaced archive is never served stale
pixels; a damaged or unreadable cache is ignored and rebuilt. Where the cache folder cannot be
written, the decoded arrays are kept in memory for the rest of the process instead, so a second split
does not decode the archive again.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import os
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from genforge.errors import UserError

from .registry import SPLITS, cache_dir

log = logging.getLogger("genforge.data")

CACHE_FORMAT = "genforge-decoded-archive-1"
CACHE_SUBDIR = "decoded"
_GZIP_MAGIC = b"\x1f\x8b"
_in_memory: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _members(path: Path, raw: bytes, classes: tuple[str, ...], fix: str) -> dict[str, list[tuple[str, int, bytes]]]:
    """{split: [(member name, label, bytes)]}, sorted by name; raises on anything but the expected layout."""
    try:
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
        found: dict[str, list[tuple[str, int, bytes]]] = {split: [] for split in SPLITS}
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if member.isdir() or any(p.startswith(".") and p != ".." for p in parts):
                    continue  # folders, and hidden files a packing tool may add (macOS "._x.jpg")
                if not member.isfile():
                    raise UserError(f"{path} holds a link or special file '{member.name}', which this dataset's "
                                    f"archive never has. {fix}")
                if len(parts) != 3 or parts[0] not in SPLITS or parts[1] not in classes:
                    raise UserError(f"{path} holds an unexpected member '{member.name}': every file must be "
                                    f"<split>/<class>/<image> with split {' or '.join(SPLITS)} and class one of "
                                    f"{', '.join(classes)}. {fix}")
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise UserError(f"{path} is truncated: member '{member.name}' is cut short. {fix}")
                found[parts[0]].append((member.name, classes.index(parts[1]), data))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:  # gzip.BadGzipFile is an OSError
        raise UserError(f"{path} is damaged or truncated: it cannot be read as a tar.gz archive "
                        f"({_reason(exc)}). {fix}") from None
    for split, items in found.items():
        if not items:
            raise UserError(f"{path} holds no images under {split}/ (it should have {split}/<class>/<image> "
                            f"files). {fix}")
        items.sort(key=lambda item: item[0])
    return found


def _decode(path: Path, items: list[tuple[str, int, bytes]], shape: tuple[int, int, int], fix: str
            ) -> tuple[np.ndarray, np.ndarray]:
    h, w, c = shape
    images = np.empty((len(items), h, w, c), dtype=np.uint8)
    labels = np.fromiter((label for _, label, _ in items), dtype=np.int64, count=len(items))
    mode = "L" if c == 1 else "RGB"
    for i, (name, _, data) in enumerate(items):
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.size != (w, h):  # checked on the header, before decoding any pixels
                    raise UserError(f"{path}: member '{name}' is a {im.size[0]}x{im.size[1]} image, but every "
                                    f"image of this dataset is {w}x{h}. {fix}")
                im.load()
                images[i] = np.asarray(im if im.mode == mode else im.convert(mode)).reshape(h, w, c)
        except UserError:
            raise
        except Exception as exc:  # Pillow raises many types for bad data; all mean "not a usable image"
            raise UserError(f"{path}: member '{name}' is not an image Pillow can decode ({_reason(exc)}). "
                            f"{fix}") from None
    return images, labels


def _file_sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _cache_file(path: Path, key: str) -> Path:
    return cache_dir() / CACHE_SUBDIR / f"{path.name}-{key[:24]}.safetensors"


def _read_cache(file: Path, split: str, shape: tuple[int, int, int], num_classes: int
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            if (f.metadata() or {}).get("format") != CACHE_FORMAT:
                return None
            images, labels = f.get_tensor(f"{split}.images"), f.get_tensor(f"{split}.labels")
    except Exception:  # missing, damaged or half-written: decode again (a cache is never the only copy)
        return None
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != shape or len(images) == 0:
        return None
    if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
        return None
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        return None
    return images, labels


def _write_cache(file: Path, source: Path, archive_sha: str, decoded: dict[str, tuple[torch.Tensor, torch.Tensor]]
                 ) -> bool:
    """Store every split in one file, atomically; drop older caches of the same archive path. False if the
    cache folder cannot be written."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors = {}
    for split, (images, labels) in decoded.items():
        tensors[f"{split}.images"], tensors[f"{split}.labels"] = images, labels
    metadata = {"format": CACHE_FORMAT, "source": str(source), "archive_sha256": archive_sha}
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, file)
    except Exception as exc:  # OSError, or safetensors' own error for a full disk
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        log.warning("cannot cache the decoded %s in %s (%s); keeping it in memory for this run",
                    source.name, file.parent, _reason(exc))
        return False
    for old in file.parent.glob(f"{source.name}-*.safetensors"):  # a replaced archive's stale copy
        if old == file:
            continue
        try:
            with safe_open(str(old), framework="pt") as f:
                stale = (f.metadata() or {}).get("source") == str(source)
            if stale:
                old.unlink()
        except Exception:
            continue
    return True


def load_split(path: Path, split: str, classes: tuple[str, ...], shape: tuple[int, int, int], fix: str
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of the archive at `path` as uint8 (N, H, W, C) images and int64 labels.

    `fix` ends every error message: what the user should do about a bad archive (the registry knows
    where a good copy comes from; this module does not).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"Cannot read {path} ({exc.strerror or exc}). Fix: check its permissions.") from None
    archive_sha = _file_sha256(raw)
    key = hashlib.sha256(json.dumps([CACHE_FORMAT, archive_sha, list(classes), list(shape)]).encode()).hexdigest()
    if key in _in_memory:
        images, labels = _in_memory[key][split]
        return images.clone(), labels.clone()
    file = _cache_file(path, key)
    cached = _read_cache(file, split, shape, len(classes))
    if cached is not None:
        return cached

    log.info("decoding %s (first use; the result is cached in %s)", path, file.parent)
    members = _members(path, raw, tuple(classes), fix)
    decoded = {}
    for name, items in members.items():
        images, labels = _decode(path, items, shape, fix)
        decoded[name] = (torch.from_numpy(images), torch.from_numpy(labels))
    if not _write_cache(file, path, archive_sha, decoded):
        _in_memory.clear()  # keep one archive at most
        _in_memory[key] = decoded
        images, labels = decoded[split]
        return images.clone(), labels.clone()
    return decoded[split]

