"""Where evaluators are stored and how a stored one is opened and run on images.

`evaluators_root` / `evaluator_name` locate an evaluator's folder (`config.json` + `model.safetensors`, loaded
without unpickling); `Evaluator` is a loaded one, whose `extract` turns images of any size and channel count into
features and logits. `default_device` and `progress_bar` are shared by the audio and video evaluators too.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genforge.data import from_model_range, resolve_data_dir, to_model_range
from genforge.errors import UserError
from genforge.evaluation.evaluator_net import _build, _FusedEvaluator
from genforge.evaluation.stored import read_evaluator

VERSION = "v1"
ROOT_ENV = "GENFORGE_EVALUATORS"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as genforge.data converts RGB to grayscale


def default_device(device: str | torch.device | None = None) -> torch.device:
    """`device`, else this process's GPU (cuda:LOCAL_RANK under `accelerate launch`, so that sharded sampling
    and evaluation put one process on each GPU), else the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def evaluators_root(data_dir: str | Path | None = None, root: str | Path | None = None) -> Path:
    """Where evaluators are cached: `root`, else $GENFORGE_EVALUATORS, else <data_dir>/evaluators."""
    if root is None and os.environ.get(ROOT_ENV, "").strip():
        root = os.environ[ROOT_ENV].strip()
    if root is not None:
        return Path(root).expanduser().resolve()
    beside_data = resolve_data_dir(data_dir) / "evaluators"
    parent = beside_data.parent
    writable = parent.is_dir() and os.access(parent, os.W_OK) and parent.stat().st_mode & 0o222  # root ignores modes
    if beside_data.exists() or writable or not parent.exists():
        return beside_data
    # a read-only data folder (a shared mount): keep evaluators in the user's cache instead
    return Path("~/.cache/genforge/evaluators").expanduser()


def evaluator_name(dataset: str) -> str:
    return f"{dataset}-{VERSION}"


def as_uint8_nhwc(images) -> torch.Tensor:
    """uint8 (N, H, W, C) numpy/tensor as is; float (N, C, H, W) in [-1, 1] (a method's output) quantised
    like a saved image, so the evaluator sees exactly what a user would save."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"expected images as a 4-d array, got {type(images).__name__} "
                         f"{tuple(getattr(images, 'shape', ()))}")
    if images.is_floating_point():
        return from_model_range(images)
    if images.dtype != torch.uint8 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 (N, H, W, C) with C in (1, 3) or float (N, C, H, W) in [-1, 1], got "
                         f"{images.dtype} {tuple(images.shape)}")
    return images


def to_input(x: torch.Tensor, height: int, width: int, channels: int) -> torch.Tensor:
    """float NCHW in [-1, 1] of any size / channel count -> the evaluator's input size and channels."""
    if x.shape[1] == 3 and channels == 1:
        x = (x * torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != channels:
        raise ValueError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return x.contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str, total: int):
    """A rich progress bar on stderr, or a no-op; yields `advance(k, info=None)` (None keeps the info text)."""
    if not enabled:
        yield lambda k=1, info=None: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn(f"[bold]{description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("<"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                  console=Console(stderr=True), refresh_per_second=4) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(k: int = 1, info: str | None = None) -> None:
            if info is None:
                bar.update(task, advance=k)
            else:
                bar.update(task, advance=k, info=info)

        yield advance


@dataclass
class Evaluator:
    """A loaded evaluator: `extract(images)` -> (features, logits), plus what it was trained on."""

    dataset: str
    directory: Path
    config: dict
    net: nn.Module  # _FusedEvaluator
    device: torch.device
    data_dir: Path
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def id(self) -> str:
        return f"{evaluator_name(self.dataset)}-{self.config['weights_sha256'][:8]}"

    @property
    def classes(self) -> list[str]:
        return list(self.config["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.config["classes"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        h, w, c = self.config["image_shape"]
        return int(h), int(w), int(c)

    @property
    def feature_dim(self) -> int:
        return int(self.config["arch"]["feature_dim"])

    @property
    def test_accuracy(self) -> float:
        return float(self.config["test_accuracy"])

    @torch.no_grad()
    def extract(self, images, batch_size: int = 500, progress: bool = False,
                description: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
        """Features (N, feature_dim) and class logits (N, classes), float32 on the CPU.

        images: uint8 (N, H, W, C) (numpy or tensor) or float (N, C, H, W) in [-1, 1]; any size and
        1 or 3 channels (resized and converted to the evaluator's input). Runs in fp32 so features do
        not depend on whether the hardware has bf16 units.
        """
        images = as_uint8_nhwc(images)
        h, w, c = self.image_shape
        feats, logits = [], []
        with progress_bar(progress, description, len(images)) as advance:
            for start in range(0, len(images), batch_size):
                x = to_model_range(images[start:start + batch_size].to(self.device))
                f, lg = self.net(to_input(x, h, w, c))
                feats.append(f.float().cpu())
                logits.append(lg.float().cpu())
                advance(len(x))
        if not feats:
            return torch.zeros(0, self.feature_dim), torch.zeros(0, self.num_classes)
        return torch.cat(feats), torch.cat(logits)


def _open(directory: Path, dataset: str, data_dir: Path, device: torch.device) -> Evaluator:
    fix = f"Fix: delete {directory} and run `genforge evaluator train {dataset}`."
    config, net = read_evaluator(directory, _build, fix)
    if config.get("dataset") != dataset:
        raise UserError(f"{directory} holds an evaluator for '{config.get('dataset')}', not '{dataset}'. {fix}")
    net = _FusedEvaluator(net).to(device).eval().to(memory_format=torch.channels_last).requires_grad_(False)
    return Evaluator(dataset, directory, config, net, device, data_dir)
