"""The spoken-digit evaluator: a small CNN on log-mel spectrograms that genforge trains itself on FSDD.

It plays the role the image evaluators play (evaluator.py) for audio runs: its penultimate layer gives the
features for the Fréchet distance, KID and nearest-neighbour memorization, its digit head the Inception score
and conditional accuracy, its speaker head the speaker diversity. Stored the same way, in
`<evaluators root>/fsdd-v1/` as config.json + model.safetensors (plus cached real features), trained with a
fixed seed on first use or by `genforge evaluator train fsdd`; its id carries the weights' hash.

Its network, front end, recipe and augmentation are in audio_classifier_net.py (with why they are as they are);
this module holds the loaded evaluator, its cache and its training.
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
from genforge.evaluation.audio_classifier_net import (AUDIO_RECIPES, AudioEvaluatorNet, AudioRecipe,  # noqa: F401
                                                     LogMel, _FusedAudioNet, augment_clips, hz_to_mel, mel_filterbank,
                                                     mel_to_hz)
from genforge.evaluation.stored import read_evaluator, use_shipped
from genforge.evaluation.evaluator import (CONFIG_FILE, ROOT_ENV, WEIGHTS_FILE, default_device, evaluator_name,
                                           evaluators_root, progress_bar)
from genforge.evaluation.feature_cache import store_reference
from genforge.files import sha256_file

AUDIO_EVALUATOR_DATASETS = ("fsdd",)


@dataclass
class AudioEvaluator:
    """A loaded spoken-digit evaluator: `extract(clips)` -> (features, digit logits, speaker logits)."""

    dataset: str
    directory: Path
    config: dict
    net: nn.Module  # _FusedAudioNet
    device: torch.device
    data_dir: Path | None
    _cache: dict = field(default_factory=dict, repr=False)

    modality = "audio"

    @property
    def id(self) -> str:
        return f"{evaluator_name(self.dataset)}-{self.config['weights_sha256'][:8]}"

    @property
    def classes(self) -> list[str]:
        return list(self.config["classes"])

    @property
    def speakers(self) -> list[str]:
        return list(self.config["speakers"])

    @property
    def num_classes(self) -> int:
        return len(self.config["classes"])

    @property
    def feature_dim(self) -> int:
        return int(self.config["arch"]["feature_dim"])

    @property
    def sample_rate(self) -> int:
        return int(self.config["frontend"]["sample_rate"])

    @property
    def length(self) -> int:
        return int(self.config["frontend"]["length"])

    @property
    def test_accuracy(self) -> float:
        return float(self.config["test_accuracy"])

    def prepare(self, clips, sample_rate: int | None = None) -> torch.Tensor:
        """(N, L) or (L,) float clips at `sample_rate` (default: the evaluator's) -> float32 (N, length) at the
        evaluator's rate: resampled with soxr when the rates differ, then fitted to its length as FSDD's clips were
        (genforge.data.audio.fit_length). Silence is not trimmed: the clips are judged as generated."""
        x = np.asarray(clips.detach().cpu() if isinstance(clips, torch.Tensor) else clips, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2:
            raise ValueError(f"expected clips as (N, L) or (L,), got shape {x.shape}")
        rate = self.sample_rate if sample_rate is None else int(sample_rate)
        if rate != self.sample_rate:
            import soxr

            x = [soxr.resample(c, rate, self.sample_rate) for c in x]
        if len(x) == 0:
            return torch.zeros(0, self.length)
        if any(len(c) != self.length for c in x):
            from genforge.data.audio import fit_length

            x = [fit_length(c, self.length) for c in x]
        return torch.from_numpy(np.stack(x).astype(np.float32, copy=False))

    @torch.no_grad()
    def extract(self, clips, sample_rate: int | None = None, batch_size: int = 500, progress: bool = False,
                description: str = "features") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features (N, feature_dim), digit logits (N, classes) and speaker logits (N, speakers), float32 on the CPU."""
        x = self.prepare(clips, sample_rate)
        out: list[list[torch.Tensor]] = [[], [], []]
        with progress_bar(progress, description, len(x)) as advance:
            for start in range(0, len(x), batch_size):
                for acc, t in zip(out, self.net(x[start:start + batch_size].to(self.device))):
                    acc.append(t.float().cpu())
                advance(min(batch_size, len(x) - start))
        sizes = (self.feature_dim, self.num_classes, len(self.speakers))
        return tuple(torch.cat(o) if o else torch.zeros(0, s) for o, s in zip(out, sizes))


def is_audio_evaluator_dataset(dataset: str) -> bool:
    return dataset in AUDIO_EVALUATOR_DATASETS


def _check_dataset(dataset: str) -> None:
    if not is_audio_evaluator_dataset(dataset):
        raise UserError(f"No audio evaluator for '{dataset}': genforge's audio metrics need a classifier trained on "
                        f"the same data, and it has one for {', '.join(AUDIO_EVALUATOR_DATASETS)}.")


def _open(directory: Path, dataset: str, data_dir: Path | None, device: torch.device) -> AudioEvaluator:
    fix = f"Fix: delete {directory} and run `genforge evaluator train {dataset}`."
    config, net = read_evaluator(directory, lambda c: AudioEvaluatorNet(c["frontend"], c["arch"], len(c["classes"]),
                                                                        len(c["speakers"])), fix)
    if config.get("dataset") != dataset:
        raise UserError(f"{directory} holds an evaluator for '{config.get('dataset')}', not '{dataset}'. {fix}")
    return AudioEvaluator(dataset, directory, config, _FusedAudioNet(net).to(device).eval().requires_grad_(False),
                          device, data_dir)


def load_audio_evaluator(dataset: str = "fsdd", data_dir: str | Path | None = None, *, root: str | Path | None = None,
                         device: str | torch.device | None = None, train_if_missing: bool = True,
                         progress: bool = False) -> AudioEvaluator:
    """The spoken-digit evaluator, trained on first use (with a notice on stderr: it takes a few minutes)."""
    from genforge.data import resolve_data_dir

    _check_dataset(dataset)
    data_dir = resolve_data_dir(data_dir)
    directory = evaluators_root(data_dir, root) / evaluator_name(dataset)
    dev = default_device(device)
    if not (directory / WEIGHTS_FILE).exists() and not use_shipped(directory):
        if not train_if_missing:
            raise UserError(f"No {dataset} evaluator in {directory.parent}. Fix: run `genforge evaluator train {dataset}`.")
        print(f"No {dataset} evaluator in {directory.parent} and genforge ships none for it: training it now, once (a few minutes on 2 CPU "
              f"cores; `genforge evaluator train {dataset}` does this ahead).", file=sys.stderr, flush=True)
        return train_audio_evaluator(dataset, data_dir, root=root, device=dev, progress=progress)
    return _open(directory, dataset, data_dir, dev)


def _split(dataset, data_dir, split, recipe: AudioRecipe, given):
    if given is not None:
        return given
    from genforge.data.audio import load_audio_dataset

    return load_audio_dataset(dataset, data_dir, split=split, sample_rate=recipe.sample_rate, length=recipe.length)


def train_audio_evaluator(dataset: str = "fsdd", data_dir: str | Path | None = None, *, root: str | Path | None = None,
                          epochs: float | None = None, max_steps: int | None = None, seed: int = 0,
                          device: str | torch.device | None = None, progress: bool = False, force: bool = False,
                          recipe: AudioRecipe | None = None, train_set=None, test_set=None) -> AudioEvaluator:
    """Train the spoken-digit evaluator with a fixed seed, store it with its test accuracy and training time, and
    return it loaded. epochs / max_steps shorten training; `recipe`, `train_set` / `test_set` (AudioDataset-like:
    clips, labels, speakers, classes, speaker_names) replace the defaults (tests, benchmarks). Written under a
    temporary name and renamed, so a killed run leaves no half evaluator."""
    from genforge.data import resolve_data_dir

    _check_dataset(dataset)
    recipe = recipe or AUDIO_RECIPES[dataset]
    if (epochs is not None and not epochs > 0) or (max_steps is not None and max_steps < 1):
        raise UserError("epochs must be > 0 and max_steps >= 1.")
    data_dir = resolve_data_dir(data_dir) if train_set is None or test_set is None else data_dir
    root_dir = evaluators_root(data_dir, root)
    target = root_dir / evaluator_name(dataset)
    dev = default_device(device)
    if target.exists() and not force:
        return _open(target, dataset, data_dir, dev)
    train_set = _split(dataset, data_dir, "train", recipe, train_set)
    test_set = _split(dataset, data_dir, "test", recipe, test_set)
    try:
        root_dir.mkdir(parents=True, exist_ok=True)
        tmp = root_dir / f".tmp-{evaluator_name(dataset)}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise UserError(f"Cannot write the evaluator cache in {root_dir} ({e.strerror}). "
                        f"Fix: set ${ROOT_ENV} to a writable folder.") from None

    clips = torch.as_tensor(np.asarray(train_set.clips, dtype=np.float32))
    labels = torch.as_tensor(np.asarray(train_set.labels), dtype=torch.long)
    speaker_names = list(train_set.speaker_names or [])
    speakers = (torch.as_tensor(np.asarray(train_set.speakers), dtype=torch.long) if train_set.speakers is not None
                else torch.zeros(len(clips), dtype=torch.long))
    n = len(clips)
    batch = min(recipe.batch_size, n)
    torch.manual_seed(seed)
    net = AudioEvaluatorNet(recipe.frontend(), recipe.arch(), len(train_set.classes), len(speaker_names)).to(dev)
    with torch.no_grad():  # per-mel standardisation from the (unaugmented) training clips
        logmel = torch.cat([net.frontend.log_mel(clips[i:i + 500].to(dev)) for i in range(0, n, 500)])
        net.frontend.mean.copy_(logmel.mean(dim=(0, 2))[:, None])
        net.frontend.std.copy_(logmel.std(dim=(0, 2))[:, None].clamp_min(1e-3))
    steps_per_epoch = n // batch
    total = max(1, int(max_steps if max_steps is not None else math.ceil((epochs or recipe.epochs) * steps_per_epoch)))
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.max_lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.max_lr, total_steps=total, pct_start=0.2)
    t0 = time.perf_counter()
    epoch, perm = -1, None
    net.train()
    with progress_bar(progress, f"training the {dataset} evaluator", total) as advance:
        for step in range(total):
            e, pos = divmod(step, steps_per_epoch)
            if e != epoch:
                epoch, perm = e, torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + e))
            idx = perm[pos * batch:(pos + 1) * batch]
            x = augment_clips(clips[idx], recipe, torch.Generator().manual_seed(seed * 7_919 + step))
            _, digit, speaker = net(x.to(dev))
            loss = F.cross_entropy(digit, labels[idx].to(dev), label_smoothing=recipe.label_smoothing)
            if speaker_names:
                loss = loss + recipe.speaker_weight * F.cross_entropy(speaker, speakers[idx].to(dev),
                                                                      label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            advance(1, f"loss {loss.item():.3f}" if step % 20 == 0 else None)
    seconds = time.perf_counter() - t0

    net.eval()
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp / WEIGHTS_FILE))
    config = {
        "genforge_evaluator": 1, "modality": "audio", "version": "v1", "dataset": dataset,
        "classes": list(train_set.classes), "speakers": speaker_names,
        "frontend": recipe.frontend(), "arch": recipe.arch(),
        "training": {**asdict(recipe), "seed": seed, "steps": total, "epochs_done": round(total * batch / n, 3),
                     "train_clips": n, "precision": "fp32", "device": str(dev), "threads": torch.get_num_threads(),
                     "seconds": round(seconds, 1), "torch": torch.__version__},
        "weights_sha256": sha256_file(tmp / WEIGHTS_FILE),
    }
    ev = AudioEvaluator(dataset, tmp, {**config, "test_accuracy": 0.0},
                        _FusedAudioNet(net).requires_grad_(False), dev, data_dir)
    feats, digit, speaker = ev.extract(test_set.clips)
    test_labels = torch.as_tensor(np.asarray(test_set.labels), dtype=torch.long)
    config["test_accuracy"] = round(float((digit.argmax(1) == test_labels).float().mean()), 5)
    config["test_clips"] = len(test_labels)
    test_speakers = None
    if speaker_names and test_set.speakers is not None:
        test_speakers = torch.as_tensor(np.asarray(test_set.speakers), dtype=torch.long)
        config["speaker_test_accuracy"] = round(float((speaker.argmax(1) == test_speakers).float().mean()), 5)
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    store_clip_reference(tmp, "test", feats, digit, speaker, test_labels, test_speakers, config["weights_sha256"])
    if target.exists():  # force: swap the old one out only once the new one is complete
        old = root_dir / f".old-{evaluator_name(dataset)}-{os.getpid()}"
        os.replace(target, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first: use its evaluator
        shutil.rmtree(tmp, ignore_errors=True)
    return _open(target, dataset, data_dir, dev)


def store_clip_reference(directory: Path, split: str, features, digit_logits, speaker_logits, labels, speakers,
                         weights_sha256: str) -> None:
    """The image evaluators' feature cache (feature_cache.py) with two heads in one file: `logits` holds the
    digit logits then the speaker logits side by side, `labels` the digit and the speaker (-1: unknown) per clip."""
    speakers = torch.full_like(labels, -1) if speakers is None else speakers
    store_reference(directory, split, features, torch.cat([digit_logits, speaker_logits], 1),
                    torch.stack([labels, speakers], 1), weights_sha256)
