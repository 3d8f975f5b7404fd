"""Training data of the video families: clips, drawn per step as float (B, T, C, H, W) in [-1, 1].

Moving MNIST is generated, not stored: clip i of the training split is a pure function of i (data/video.py), so
each process makes the clips of its slice of a per-epoch permutation on the fly, and a resumed run sees exactly
the clips it would have seen. A folder of clips is decoded once and held in memory as uint8.
"""

from __future__ import annotations

import numpy as np
import torch

from genforge.data.video import Clips, MovingMnist, is_moving_mnist, load_clip_folder
from genforge.errors import UserError
from genforge.methods.base import DataSpec


class _Decoded:
    """A folder's clips in memory, answering `clips(indices)` as MovingMnist does."""

    def __init__(self, clips: Clips):
        self.data, self.classes = clips, clips.classes

    def __len__(self) -> int:
        return len(self.data.clips)

    def clips(self, indices) -> Clips:
        idx = np.asarray(indices)
        d = self.data
        return Clips(d.clips[idx], d.labels[idx] if d.labels is not None else None, d.classes, None, None, d.fps)


def clips_to_model_range(clips: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, T, H, W, C) -> float32 (N, T, C, H, W) in [-1, 1]."""
    x = torch.as_tensor(clips)
    return x.permute(0, 1, 4, 2, 3).float().div_(127.5).sub_(1.0)


def clips_from_model_range(x: torch.Tensor) -> np.ndarray:
    """float (N, T, C, H, W) -> uint8 (N, T, H, W, C), clamped and rounded."""
    return x.float().add(1.0).mul(127.5).round_().clamp_(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()


class ClipData:
    unit = "clips"

    def __init__(self, source, batch: int, accum: int, rank: int, world: int, seed: int, spec: DataSpec,
                 meta: dict, device):
        self.source, self.spec, self.meta, self.device = source, spec, meta, device
        self.batch, self.accum, self.rank, self.world, self.seed = batch, accum, rank, world, seed
        self.items_per_step = batch * accum * world
        self.steps_per_epoch = len(source) // self.items_per_step
        self._epoch, self._perm = -1, None

    def micro_batches(self, step: int, rng: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(len(self.source), generator=g)
            self._epoch = epoch
        base = pos * self.items_per_step
        out = []
        for k in range(self.accum):
            start = base + (k * self.world + self.rank) * self.batch
            got = self.source.clips(self._perm[start : start + self.batch].numpy())
            labels = torch.as_tensor(got.labels, dtype=torch.long).to(self.device) if got.labels is not None else None
            out.append((clips_to_model_range(got.clips).to(self.device), labels))
        return out


def prepare_clip_data(cfg, data_dir, accelerator) -> ClipData:
    """The training clips named by cfg.data (moving-mnist or folder:PATH of clips), sized by cfg.data.video."""
    dcfg, tcfg = cfg.data, cfg.train
    if dcfg.image_size is not None or dcfg.channels is not None:
        raise UserError("data.image_size and data.channels do not apply to clips: set the frame side with "
                        "data.video.size (and the length with data.video.frames).")
    if dcfg.subset is not None:
        raise UserError("data.subset does not apply to clips: set data.video.clips (clips per epoch) instead.")
    if any(dcfg.augment.model_dump().values()):
        raise UserError("data.augment is for images; clips are not augmented. Remove data.augment.")
    opts = dcfg.video.model_dump()
    with accelerator.main_process_first():
        if is_moving_mnist(dcfg.dataset):
            source = MovingMnist("train", opts, data_dir)
        else:
            source = _Decoded(load_clip_folder(dcfg.dataset.split(":", 1)[1], opts))
    first = source.clips([0])
    _, t, h, w, c = first.clips.shape
    classes = list(source.classes) if first.labels is not None else []
    spec = DataSpec(h, w, c, len(classes), frames=t)
    meta = {"dataset": dcfg.dataset, "height": h, "width": w, "channels": c, "classes": classes, "value_range": [-1, 1],
            "frames": t, "fps": float(first.fps or opts["fps"]), "video": opts}
    data = ClipData(source, tcfg.batch_size, tcfg.grad_accum, accelerator.process_index, accelerator.num_processes,
                    tcfg.seed, spec, meta, accelerator.device)
    if data.steps_per_epoch == 0:
        raise UserError(f"The dataset has {len(source)} clips, fewer than one global batch ({tcfg.batch_size} x "
                        f"{tcfg.grad_accum} accumulation x {accelerator.num_processes} processes). Lower train.batch_size.")
    return data
