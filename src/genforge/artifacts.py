"""A trained model as a directory: `config.json` + `model.safetensors`, and `genforge.load(dir)`.

Loading reads JSON and safetensors only, never pickle, so opening someone else's model runs no code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from genforge.data import from_model_range
from genforge.errors import UserError
from genforge.methods import DataSpec, get_method

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
BEST_WEIGHTS_FILE = "model-best.safetensors"  # best in-training evaluation score, when evaluation was on


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_config(run_dir: Path, meta: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")


def save_weights(run_dir: Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                 name: str = WEIGHTS_FILE) -> Path:
    path = run_dir / name
    tmp = path.with_name(f".{path.name}.tmp")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(tmp), metadata=metadata or {})
    os.replace(tmp, path)
    return path


def read_config(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise UserError(f"Run directory not found: {run_dir}. Pass the --out folder of a `genforge train` run.")
    if not path.exists():
        raise UserError(f"{run_dir} is not a genforge run: it has no {CONFIG_FILE}. Pass the --out folder of a `genforge train` run.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); the run directory is damaged.") from None


class ImageGenerator:
    """A loaded image model: `generate(n, seed, labels)` -> uint8 (N, H, W, C)."""

    def __init__(self, run_dir: Path, meta: dict, net: torch.nn.Module, device: torch.device,
                 weights_file: str = WEIGHTS_FILE):
        self.run_dir, self.meta, self.net, self.device = run_dir, meta, net, device
        self.weights_file = weights_file  # which weights were loaded: model.safetensors or model-best.safetensors
        data = meta["data"]
        self.spec = DataSpec(data["height"], data["width"], data["channels"], len(data.get("classes") or []))
        self.method = get_method(meta["family"])
        self.classes: list[str] = list(data.get("classes") or [])
        self.conditional: bool = bool(meta["model"].get("conditional", False))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.spec.height, self.spec.width, self.spec.channels)

    def label_index(self, label: int | str) -> int:
        """A class index from an int or a class name ("7", "Sneaker")."""
        if isinstance(label, str):
            if label in self.classes:
                return self.classes.index(label)
            if label.lstrip("-").isdigit():
                label = int(label)
            else:
                raise UserError(f"Unknown label '{label}'. This model's classes: {', '.join(self.classes)}.")
        if not 0 <= int(label) < len(self.classes):
            raise UserError(f"Label {label} is out of range: this model has {len(self.classes)} classes (0..{len(self.classes) - 1}).")
        return int(label)

    @torch.no_grad()
    def generate(self, n: int, seed: int | None = None, labels=None, batch_size: int = 500) -> np.ndarray:
        """n images as uint8 (N, H, W, C). `labels`: one label (int or class name) or one per image."""
        if n < 1:
            raise UserError(f"n must be at least 1, got {n}.")
        label_t = None
        if labels is not None:
            if not self.conditional:
                raise UserError("This model is not class-conditional: drop --label / labels.")
            if isinstance(labels, (int, str, np.integer)):
                labels = [labels] * n
            labels = [self.label_index(lab) for lab in labels]
            if len(labels) != n:
                raise UserError(f"Got {len(labels)} labels for {n} images: give one label, or one per image.")
            label_t = torch.tensor(labels, dtype=torch.long)
        elif self.conditional:
            label_t = torch.arange(n) % self.spec.num_classes
        rng = torch.Generator().manual_seed(int(seed) if seed is not None else int(torch.seed() % 2**63))
        out = []
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            lab = label_t[start : start + m] if label_t is not None else None
            x = self.method.sample(self.net, self.spec, m, lab, rng, self.device)
            out.append(from_model_range(x.float()).cpu())
        return torch.cat(out).numpy()

    def save_grid(self, images: np.ndarray, path: str | Path, nrow: int | None = None) -> Path:
        from genforge.visual import save_grid

        return save_grid(images, path, nrow)


def load(run_dir: str | Path, device: str | torch.device | None = None, select: str | None = None) -> ImageGenerator:
    """Load a trained run directory for generation (safetensors only).

    `select`: "best" (the weights with the best in-training evaluation), "last", or None = best when the
    run kept one, else last.
    """
    run_dir = Path(run_dir)
    meta = read_config(run_dir)
    if select not in (None, "best", "last"):
        raise UserError(f"select must be 'best' or 'last', got '{select}'.")
    if select == "best" and not (run_dir / BEST_WEIGHTS_FILE).exists():
        raise UserError(f"{run_dir} has no {BEST_WEIGHTS_FILE}: it was trained without in-training evaluation "
                        "(train.eval_every). Use --select last.")
    use_best = select == "best" or (select is None and (run_dir / BEST_WEIGHTS_FILE).exists())
    weights = run_dir / (BEST_WEIGHTS_FILE if use_best else WEIGHTS_FILE)
    if not weights.exists():
        raise UserError(f"{run_dir} has no {WEIGHTS_FILE} yet: the run has not finished. "
                        f"Resume it with `genforge train {run_dir / CONFIG_FILE} --out {run_dir} --resume`.")
    method = get_method(meta.get("family", "?"))
    data = meta["data"]
    spec = DataSpec(data["height"], data["width"], data["channels"], len(data.get("classes") or []))
    cfg = method.Config.model_validate(meta["model"])
    net = method.build_exported(cfg, spec)
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise UserError(f"Cannot read {weights}: {e}. The file is damaged; re-export it from the last checkpoint by resuming the run.") from None
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{weights} does not match the model in {CONFIG_FILE} (missing {missing[:3]}, unexpected {unexpected[:3]}).")
    dev = torch.device(device) if device else torch.device("cpu")
    net.to(dev).eval()
    return ImageGenerator(run_dir, meta, net, dev, weights.name)
