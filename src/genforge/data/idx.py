"""IDX files (MNIST, Fashion-MNIST), gzipped or raw.

The whole payload is decompressed once and viewed with np.frombuffer: 60,000 MNIST images load in
a fraction of a second. Every header field and the exact payload length are checked, because a
half-downloaded file otherwise decodes into silently wrong images.
"""

from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np
import torch

from genforge.errors import UserError

IMAGE_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, H, W)
LABEL_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)
_GZIP_MAGIC = b"\x1f\x8b"
REDOWNLOAD = "Fix: delete it and download it again (or copy it again from where you got it)."


def _damaged(source: str, problem: str, fix: str) -> UserError:
    return UserError(f"{source} is damaged or not an IDX file: {problem}. {fix}")


def decompress(data: bytes, source: str, fix: str = REDOWNLOAD) -> bytes:
    """Gunzip when the bytes are gzip, whatever the file is called (browsers often store the
    decompressed file under its .gz name)."""
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise _damaged(source, f"bad gzip data ({exc})", fix) from None


def parse_idx(data: bytes, source: str, magic: int, fix: str = REDOWNLOAD) -> np.ndarray:
    """Decode IDX bytes (gzipped or not) into a uint8 array of the header's shape."""
    raw = decompress(data, source, fix)
    ndim = magic & 0xFF
    header_len = 4 + 4 * ndim
    kind = "image" if magic == IMAGE_MAGIC else "label"
    if len(raw) < header_len:
        raise _damaged(source, f"only {len(raw)} bytes, shorter than the {header_len}-byte header", fix)
    (found,) = struct.unpack_from(">I", raw, 0)
    if found != magic:
        raise _damaged(source, f"magic number 0x{found:08x}, expected 0x{magic:08x} for an IDX {kind} "
                               "file", fix)
    dims = struct.unpack_from(f">{ndim}I", raw, 4)
    if 0 in dims:
        raise _damaged(source, f"header declares an empty array of shape {dims}", fix)
    expected = header_len + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "has trailing bytes"
        raise _damaged(source, f"{state}: {len(raw)} bytes, the header {dims} needs exactly {expected}", fix)
    # copy(): own, writable memory (np.frombuffer over bytes is read-only, which torch warns about).
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims).copy()


def images_and_labels(image_bytes: bytes, image_source: str, label_bytes: bytes, label_source: str,
                      num_classes: int, fix: str = REDOWNLOAD) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode an image/label file pair into uint8 (N, H, W, 1) images and int64 (N,) labels."""
    images = parse_idx(image_bytes, image_source, IMAGE_MAGIC, fix)
    labels = parse_idx(label_bytes, label_source, LABEL_MAGIC, fix)
    if len(images) != len(labels):
        raise UserError(f"{image_source} has {len(images)} images but {label_source} has {len(labels)} "
                        f"labels; they must come from the same release. Fix: delete both and download "
                        "them again.")
    top = int(labels.max())
    if top >= num_classes:
        raise _damaged(label_source, f"label {top} is outside 0..{num_classes - 1}", fix)
    n, h, w = images.shape
    return (torch.from_numpy(images.reshape(n, h, w, 1)),
            torch.from_numpy(labels.astype(np.int64)))
