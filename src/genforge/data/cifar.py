"""CIFAR-10 "python version" batches (data_batch_1..5, test_batch, batches.meta).

These files are pickles, and unpickling runs whatever callables a file names. They are read with a
restricted unpickler that resolves only the few numpy reconstructors an ndarray needs (plus
latin-1 string encoding for Python 2 pickles), so a tampered or wrong file fails to load instead of
running code.
"""

from __future__ import annotations

import codecs
import importlib
import pickle
from pathlib import Path

import numpy as np
import torch

from genforge.errors import UserError

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
META = "batches.meta"
_PIXELS = 3 * 32 * 32
_REDOWNLOAD = ("Fix: delete it (or the whole cifar-10-batches-py folder) and download cifar-10-python.tar.gz "
               "again.")


def _numpy_attr(submodule: str, name: str):
    # numpy 2 moved numpy.core to numpy._core; pickles name either, depending on who wrote them.
    for module in (f"numpy._core.{submodule}", f"numpy.core.{submodule}"):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {submodule}.{name}")


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Python 3 pickles of bytes at protocol < 3 call _codecs.encode(text, 'latin1')."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1", errors)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_attr("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_attr("multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_attr("numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_attr("numeric", "_frombuffer"),
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        resolve = _ALLOWED.get((module, name))
        if resolve is None:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR-10 batch never does")
        return resolve()


def _unpickle(path: Path):
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, encoding="latin1").load()
    except OSError as exc:
        raise UserError(f"Cannot read {path} ({exc.strerror or exc}). Fix: check its permissions, or "
                        "delete it and download it again.") from None
    except Exception as exc:  # a damaged pickle can fail in many ways; all mean the same to the user
        raise UserError(f"{path} is damaged or not a CIFAR-10 batch: {exc}. {_REDOWNLOAD}") from None


def _get(entry: dict, key: str):
    # latin1 decoding gives str keys; a file written by Python 3 with bytes keys has b"..." keys.
    return entry[key] if key in entry else entry.get(key.encode())


def read_meta(path: Path) -> list[str]:
    """Class names, in label order, from batches.meta."""
    entry = _unpickle(path)
    names = _get(entry, "label_names") if isinstance(entry, dict) else None
    if not isinstance(names, (list, tuple)) or not names:
        raise UserError(f"{path} is damaged or not CIFAR-10 metadata: no 'label_names' list. {_REDOWNLOAD}")
    out = []
    for n in names:
        if isinstance(n, bytes):
            n = n.decode("utf-8", "replace")
        if not isinstance(n, str):
            raise UserError(f"{path} is damaged: label name {n!r} is not text. {_REDOWNLOAD}")
        out.append(n)
    return out


def read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch as (n, 3072) uint8 rows (R, G, B planes of 32x32) and (n,) int64 labels."""
    entry = _unpickle(path)
    if not isinstance(entry, dict):
        raise UserError(f"{path} is not a CIFAR-10 batch (it holds a {type(entry).__name__}, not a dict). "
                        f"{_REDOWNLOAD}")
    data, labels = _get(entry, "data"), _get(entry, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{path} is damaged: 'data' should be a uint8 array of shape (n, {_PIXELS}), "
                        f"got {got}. {_REDOWNLOAD}")
    try:
        labels = np.array(labels, dtype=np.int64)  # a copy: torch wants writable memory
    except (TypeError, ValueError):
        labels = None
    if labels is None or labels.ndim != 1 or len(labels) != len(data):
        raise UserError(f"{path} is damaged: it needs one integer label per image ({len(data)}). {_REDOWNLOAD}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{path} is damaged: labels must lie in 0..{num_classes - 1}. {_REDOWNLOAD}")
    return data, labels


def load_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All batches of a split as uint8 (N, 32, 32, 3) images, int64 labels and the class names."""
    classes = read_meta(folder / META)
    parts = [read_batch(folder / name, len(classes))
             for name in (TRAIN_BATCHES if split == "train" else TEST_BATCHES)]
    data = np.concatenate([d for d, _ in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([l for _, l in parts]) if len(parts) > 1 else parts[0][1]
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return torch.from_numpy(images), torch.from_numpy(labels), classes
