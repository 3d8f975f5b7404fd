"""The Moving-MNIST evaluator: a small CNN on single frames that genforge trains itself on generated real clips.

It plays the role the image evaluators play (evaluator.py) for video runs on `moving-mnist`: its penultimate
layer gives per-frame features (the Fréchet distances of video_metrics.py), its digit head the identity of each
frame, its position head where the digit is. Nothing pretrained is used: the standard video metric (FVD) needs
I3D weights that cannot be had offline, and this network is trained on exactly the clips the runs learn from.

One evaluator per frame geometry, because a run's frames are the canvas area-downsampled to `size`: stored in
`<evaluators root>/moving-mnist-v1-<size>[-2digits][-canvas<C>]/` as config.json + model.safetensors (never a
pickle), trained with a fixed seed on first use; its id carries the weights' hash.

Training data: the MovingMnist train split (MNIST train digits) with the default motion at the run's canvas,
digit count and frame size, 4 frames per clip; test figures on the test split (MNIST test digits).

Its network, input conversion, recipe and augmentation are in video_evaluator_net.py (with why they are as they
are); this module holds the loaded evaluator, its cache and its training.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from genforge.errors import UserError
from genforge.evaluation.stored import read_evaluator, use_shipped
from genforge.evaluation.evaluator import (CONFIG_FILE, ROOT_ENV, VERSION, WEIGHTS_FILE, default_device,
                                           evaluators_root, progress_bar)
from genforge.evaluation.video_evaluator_net import (VIDEO_RECIPE, VideoEvaluatorNet, VideoRecipe,
                                                     _FusedVideoNet, augment_frames, frames_to_input)
from genforge.files import sha256_file

VIDEO_EVALUATOR_DATASETS = ("moving-mnist",)
DIGIT_SIZE = 28  # MNIST digits are pasted at 28 x 28 canvas pixels


def geometry(opts: dict) -> tuple[int, int, int]:
    """(canvas, frame size, digits) of a run's video settings (VideoConfig's dump); 1 or 2 digits only."""
    canvas = int(opts.get("canvas") or 64)
    size = int(opts.get("size") or canvas)
    digits = int(opts.get("digits") or 1)
    if digits not in (1, 2):
        raise UserError(f"The Moving-MNIST evaluator reads clips of 1 or 2 digits, not {digits}: {digits}-digit clips "
                        "have no class to check. Fix: evaluate runs with data.video.digits 1 or 2.")
    return canvas, size, digits


def video_evaluator_name(opts: dict) -> str:
    """The cache folder's name for these settings: moving-mnist-v1-<size>, + -2digits / -canvas<C> off default."""
    canvas, size, digits = geometry(opts)
    return (f"moving-mnist-{VERSION}-{size}" + (f"-{digits}digits" if digits != 1 else "")
            + (f"-canvas{canvas}" if canvas != 64 else ""))


def evaluator_opts(opts: dict, frames: int, clips: int) -> dict:
    """The generator settings the evaluator is trained and tested on: the defaults (bounce motion, default
    speed) at the run's canvas, frame size and digit count; nothing else of the run matters to a frame CNN."""
    from genforge.data.video import DEFAULT_OPTIONS

    canvas, size, digits = geometry(opts)
    return {**DEFAULT_OPTIONS, "canvas": canvas, "size": size, "digits": digits, "frames": frames, "clips": clips}


@dataclass
class VideoEvaluator:
    """A loaded Moving-MNIST evaluator: `extract(clips)` -> per-frame features, digit logits and positions."""

    directory: Path
    config: dict
    net: nn.Module  # _FusedVideoNet
    device: torch.device
    data_dir: Path | None
    _cache: dict = field(default_factory=dict, repr=False)

    dataset = "moving-mnist"
    modality = "video"

    @property
    def id(self) -> str:
        return f"{self.config['name']}-{self.config['weights_sha256'][:8]}"

    @property
    def classes(self) -> list[str]:
        return [str(d) for d in range(10)]

    @property
    def digits(self) -> int:
        return int(self.config["digits"])

    @property
    def canvas(self) -> int:
        return int(self.config["canvas"])

    @property
    def size(self) -> int:
        return int(self.config["size"])

    @property
    def has_positions(self) -> bool:
        return self.digits == 1

    @property
    def feature_dim(self) -> int:
        return int(self.config["arch"]["feature_dim"])

    @property
    def test_accuracy(self) -> float:
        return float(self.config["test"]["accuracy"])

    @property
    def position_rmse(self) -> float | None:
        """Per-axis RMS error of the position head on real test frames, canvas pixels (None: 2 digits)."""
        return self.config["test"].get("position_rmse_px")

    @torch.no_grad()
    def extract(self, clips, batch_size: int = 64, progress: bool = False, description: str = "frame features"):
        """uint8 clips (N, T, H, W, C) -> features (N, T, d), digit logits (N, T, 10) and top-left positions
        (N, T, 2) in canvas pixels (None for 2 digits); float32 on the CPU. Frames of another size are resized."""
        clips = np.asarray(clips)
        if clips.ndim != 5:
            raise ValueError(f"expected clips as (N, T, H, W, C), got shape {clips.shape}")
        n, t = clips.shape[:2]
        feats, logits, pos = [], [], []
        span = self.canvas - DIGIT_SIZE
        with progress_bar(progress, description, n) as advance:
            for start in range(0, n, batch_size):
                x = frames_to_input(clips[start:start + batch_size], self.size).to(self.device)
                f, lg, p = self.net(x)
                feats.append(f.float().cpu())
                logits.append(lg.float().cpu())
                if p is not None:
                    pos.append(p.float().cpu() * span)
                advance(min(batch_size, n - start))
        cat = lambda parts, d: (torch.cat(parts) if parts else torch.zeros(0, d)).reshape(n, t, d)  # noqa: E731
        return cat(feats, self.feature_dim), cat(logits, 10), (cat(pos, 2) if self.has_positions else None)


def is_video_evaluator_dataset(dataset: str) -> bool:
    return dataset in VIDEO_EVALUATOR_DATASETS


def _open(directory: Path, data_dir: Path | None, device: torch.device) -> VideoEvaluator:
    fix = f"Fix: delete {directory} and run `genforge evaluator train moving-mnist`."
    config, net = read_evaluator(directory, lambda c: VideoEvaluatorNet(c["size"], c["arch"], c["digits"] == 1), fix)
    if config.get("dataset") != "moving-mnist" or config.get("name") != directory.name:
        raise UserError(f"{directory} holds the evaluator '{config.get('name')}', not '{directory.name}'. {fix}")
    return VideoEvaluator(directory, config, _FusedVideoNet(net).to(device).eval().requires_grad_(False), device,
                          data_dir)


def load_video_evaluator(opts: dict, data_dir: str | Path | None = None, *, root: str | Path | None = None,
                         device: str | torch.device | None = None, train_if_missing: bool = True,
                         progress: bool = False) -> VideoEvaluator:
    """The Moving-MNIST evaluator for these video settings, trained on first use (with a notice on stderr)."""
    from genforge.data import resolve_data_dir

    data_dir = resolve_data_dir(data_dir)
    directory = evaluators_root(data_dir, root) / video_evaluator_name(opts)
    dev = default_device(device)
    if not (directory / WEIGHTS_FILE).exists() and not use_shipped(directory):
        _, size, digits = geometry(opts)
        cmd = f"genforge evaluator train moving-mnist --size {size}" + (f" --digits {digits}" if digits != 1 else "")
        if not train_if_missing:
            raise UserError(f"No {directory.name} evaluator in {directory.parent}. Fix: run `{cmd}`.")
        print(f"No {directory.name} evaluator in {directory.parent} and genforge ships none for it: training it now, once (a few minutes on "
              f"one CPU core; `{cmd}` does this ahead).", file=sys.stderr, flush=True)
        return train_video_evaluator(opts, data_dir, root=root, device=dev, progress=progress)
    return _open(directory, data_dir, dev)


def _targets(clips, digits: int, canvas: int):
    """Per-frame training targets of a Clips batch: digit (1 digit: index; 2: 10-hot presence), position or None."""
    n, t = clips.clips.shape[:2]
    ids = torch.as_tensor(np.asarray(clips.digits), dtype=torch.long)  # (n, D)
    if digits == 1:
        label = ids[:, 0].repeat_interleave(t)
    else:
        label = torch.zeros(n, 10).scatter_(1, ids, 1.0).repeat_interleave(t, dim=0)
    pos = None
    if digits == 1:
        pos = torch.as_tensor(np.asarray(clips.tracks)[:, :, 0, :], dtype=torch.float32).reshape(n * t, 2)
        pos = pos / (canvas - DIGIT_SIZE)
    return label, pos


def _scores(ev: VideoEvaluator, clips, digits: int, canvas: int) -> dict:
    """Test figures of the evaluator on a Clips batch: accuracy per frame, position errors in canvas pixels."""
    _, logits, pos = ev.extract(clips.clips)
    label, target = _targets(clips, digits, canvas)
    logits = logits.reshape(-1, 10)
    if digits == 1:
        out = {"accuracy": round(float((logits.argmax(1) == label).float().mean()), 5)}
        err = pos.reshape(-1, 2) - target * (canvas - DIGIT_SIZE)
        out.update(position_mae_px=round(float(err.abs().mean()), 4),
                   position_rmse_px=round(float(err.square().mean().sqrt()), 4))
    else:  # a frame is right when all ten presence bits are
        out = {"accuracy": round(float(((logits > 0).float() == label).all(1).float().mean()), 5)}
    return {**out, "frames": len(logits)}


def train_video_evaluator(opts: dict, data_dir: str | Path | None = None, *, root: str | Path | None = None,
                          epochs: float | None = None, max_steps: int | None = None, seed: int = 0,
                          device: str | torch.device | None = None, progress: bool = False, force: bool = False,
                          recipe: VideoRecipe | None = None) -> VideoEvaluator:
    """Train the evaluator for these video settings (canvas, size, digits) with a fixed seed, store it with its
    test figures and training time, and return it loaded. epochs / max_steps / `recipe` shorten training (tests).
    Written under a temporary name and renamed, so a killed run leaves no half evaluator."""
    from genforge.data import resolve_data_dir
    from genforge.data.video import MovingMnist

    recipe = recipe or VIDEO_RECIPE
    if (epochs is not None and not epochs > 0) or (max_steps is not None and max_steps < 1):
        raise UserError("epochs must be > 0 and max_steps >= 1.")
    data_dir = resolve_data_dir(data_dir)
    root_dir = evaluators_root(data_dir, root)
    name = video_evaluator_name(opts)
    target = root_dir / name
    dev = default_device(device)
    if (target / WEIGHTS_FILE).exists() and not force:
        return _open(target, data_dir, dev)
    canvas, size, digits = geometry(opts)
    train_opts = evaluator_opts(opts, recipe.frames_per_clip, recipe.train_clips)
    test_opts = evaluator_opts(opts, recipe.frames_per_clip, recipe.test_clips)
    t_data = time.perf_counter()
    train = MovingMnist("train", train_opts, data_dir).clips(np.arange(recipe.train_clips))
    test = MovingMnist("test", test_opts, data_dir).clips(np.arange(recipe.test_clips))
    data_seconds = time.perf_counter() - t_data
    try:
        root_dir.mkdir(parents=True, exist_ok=True)
        tmp = root_dir / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise UserError(f"Cannot write the evaluator cache in {root_dir} ({e.strerror}). "
                        f"Fix: set ${ROOT_ENV} to a writable folder.") from None

    frames = frames_to_input(train.clips, size)
    label, pos = _targets(train, digits, canvas)
    n = len(frames)
    batch = min(recipe.batch_size, n)
    torch.manual_seed(seed)
    arch = recipe.arch(size)
    net = VideoEvaluatorNet(size, arch, digits == 1).to(dev)
    steps_per_epoch = n // batch
    total = max(1, int(max_steps if max_steps is not None else math.ceil((epochs or recipe.epochs) * steps_per_epoch)))
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.max_lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.max_lr, total_steps=total, pct_start=0.2)
    t0 = time.perf_counter()
    epoch, perm = -1, None
    net.train()
    with progress_bar(progress, f"training the {name} evaluator", total) as advance:
        for step in range(total):
            e, at = divmod(step, steps_per_epoch)
            if e != epoch:
                epoch, perm = e, torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + e))
            idx = perm[at * batch:(at + 1) * batch]
            x = augment_frames(frames[idx], recipe, torch.Generator().manual_seed(seed * 7_919 + step))
            _, logits, p = net(x.to(dev))
            y = label[idx].to(dev)
            if digits == 1:
                loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
                where = pos[idx].to(dev)
                loss = loss + recipe.position_weight * (F.mse_loss(p, where) if recipe.position_beta is None else
                                                        F.smooth_l1_loss(p, where, beta=recipe.position_beta))
            else:
                loss = F.binary_cross_entropy_with_logits(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            advance(1, f"loss {loss.item():.3f}" if step % 20 == 0 else None)
    seconds = time.perf_counter() - t0

    net.eval()
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp / WEIGHTS_FILE))
    config = {
        "genforge_evaluator": 1, "modality": "video", "version": VERSION, "dataset": "moving-mnist", "name": name,
        "canvas": canvas, "size": size, "digits": digits, "digit_size": DIGIT_SIZE, "arch": arch,
        "heads": {"digit": "10-way identity" if digits == 1 else "10 x presence (multi-label)",
                  "position": "top-left (x, y) / (canvas - 28)" if digits == 1 else None},
        "data": {"train": {"split": "train", "clips": recipe.train_clips, "opts": train_opts},
                 "test": {"split": "test", "clips": recipe.test_clips, "opts": test_opts}},
        "training": {**asdict(recipe), "seed": seed, "steps": total, "epochs_done": round(total * batch / n, 3),
                     "train_frames": n, "precision": "fp32", "device": str(dev), "threads": torch.get_num_threads(),
                     "seconds": round(seconds, 1), "data_seconds": round(data_seconds, 1), "torch": torch.__version__},
        "weights_sha256": sha256_file(tmp / WEIGHTS_FILE),
    }
    ev = VideoEvaluator(tmp, {**config, "test": {"accuracy": 0.0}}, _FusedVideoNet(net).requires_grad_(False), dev,
                        data_dir)
    config["test"] = _scores(ev, test, digits, canvas)
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    if target.exists():  # force (or a damaged folder): swap the old one out only once the new one is complete
        old = root_dir / f".old-{name}-{os.getpid()}"
        os.replace(target, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first: use its evaluator
        shutil.rmtree(tmp, ignore_errors=True)
    return _open(target, data_dir, dev)
