"""The evaluator's cached features of a real split: one safetensors file per split, tagged with the evaluator's
weights hash so a retrained evaluator never reads stale features. Below both evaluator.py (which caches the test
features it computes while training) and reference.py (which reads and fills the cache), keeping imports one-way."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def _path(directory: Path, split: str) -> Path:
    return directory / f"features-{split}.safetensors"


def store_reference(directory: Path, split: str, features: torch.Tensor, logits: torch.Tensor,
                    labels: torch.Tensor, weights_sha256: str) -> None:
    """Write atomically; a read-only cache folder only costs recomputation next time."""
    path = _path(directory, split)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({"features": features.contiguous(), "logits": logits.contiguous(), "labels": labels.contiguous()},
                  str(tmp), metadata={"weights_sha256": weights_sha256, "split": split, "count": str(len(features))})
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def read_reference(path: Path, weights_sha256: str) -> dict[str, torch.Tensor] | None:
    try:
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("weights_sha256") != weights_sha256:
                return None
            return {k: f.get_tensor(k) for k in ("features", "logits", "labels")}
    except Exception:  # missing, damaged or foreign file: recompute
        return None
