"""The in-memory dataset every reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageDataset:
    """A whole image dataset held in memory as one uint8 tensor.

    Small image datasets fit in RAM many times over, and one contiguous tensor lets the training
    loop index random batches directly, with no per-item Python work and no DataLoader workers.

    images: uint8 (N, H, W, C), C = 1 or 3, contiguous.
    labels: int64 (N,), or None for an unlabelled dataset.
    classes: class names in label order ([] when unlabelled).
    report: what cleaning did (folder datasets: files, loaded, unreadable, duplicates, ...); {} for
        standard files.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None
    classes: list[str]
    report: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[-1] not in (1, 3):
            raise ValueError(f"images must be uint8 (N, H, W, C) with C in (1, 3), got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")
        if not self.images.is_contiguous():
            self.images = self.images.contiguous()
        if self.labels is not None and (self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]):
            raise ValueError(f"labels must be int64 of shape ({len(self.images)},), got "
                             f"{self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        _, h, w, c = self.images.shape
        return int(h), int(w), int(c)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def evenly_spaced(total: int, n: int | None) -> torch.Tensor:
    """Indices of `n` items evenly strided over `total` (every index when n is None or >= total), from the first
    to the last: the subset every held-out score takes of a split. Files are often ordered (CIFAR-10's JPEG copy
    by class, MNIST's test set by writer, a text by its plays), so the first n items are no fair sample of the
    split; a strided one is, and is deterministic, so it is the same on every rank, evaluation and resume."""
    if n is None or n >= total:
        return torch.arange(total)
    if n <= 1:
        return torch.zeros(max(n, 0), dtype=torch.long)
    return torch.div(torch.arange(n) * (total - 1) + (n - 1) // 2, n - 1, rounding_mode="floor")  # round(i (N-1)/(n-1))
