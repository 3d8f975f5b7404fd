"""Files written atomically: a temporary file beside the target, then a rename, so a kill mid-write
never leaves a half-written config, log or weights file. A leaf module: the artifact code and the
methods (a GAN's cluster assignment) both write through it without importing each other."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import save_file


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file, read in 1 MB blocks (weights and graphs can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """safetensors (no pickle), written atomically; tensors are moved to the CPU and made contiguous."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata or {})
    os.replace(tmp, path)
    return path
