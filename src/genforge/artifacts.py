"""A trained model as a directory: `config.json` + `model.safetensors` (+ `tokenizer.json` for text), and
`genforge.load(dir)`, which returns the generator object of its modality (genforge/generators/): an
ImageGenerator, a TextGenerator or an AudioGenerator.

Loading reads JSON and safetensors only, never pickle, so opening someone else's model runs no code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

import genforge.precision as prec
from genforge.errors import UserError
from genforge.files import atomic_write_text, save_tensors
from genforge.generators import AudioGenerator, ImageGenerator, TextGenerator, VideoGenerator
from genforge.generators.base import WEIGHTS_FILE
from genforge.methods import get_method

CONFIG_FILE = "config.json"
BEST_WEIGHTS_FILE = "model-best.safetensors"  # best in-training evaluation score, when evaluation was on


def write_config(run_dir: Path, meta: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")


def save_weights(run_dir: Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                 name: str = WEIGHTS_FILE) -> Path:
    return save_tensors(run_dir / name, state_dict, metadata)


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


def modality_of(meta: dict) -> str:
    """What a run generates: its family's modality, or what its data made of it: "music" when a language model read
    music, "audio" when the data went through
    an audio codec (an image family trained on spectrograms generates sound), "video" when they were clips."""
    data = meta.get("data") or {}
    if data.get("music"):
        return "music"
    if data.get("codec"):
        return "audio"
    if data.get("frames"):
        return "video"
    return get_method(meta.get("family", "?")).modality


def load(run_dir: str | Path, device: str | torch.device | None = None,
         select: str | None = None, precision: str = "auto") -> ImageGenerator | TextGenerator | AudioGenerator | VideoGenerator:
    """Load a trained run directory for generation (safetensors only).

    `select`: "best" (the weights with the best in-training evaluation), "last", or None = best when the
    run kept one, else last. `precision`: "auto" (time generation in each precision this device runs
    fast and keep the faster; the verdict is cached per machine and model shape), "no" (fp32) or "bf16" /
    "fp16"; the choice and its figures are in the generator's `.precision`.
    """
    if precision not in prec.SETTINGS:
        raise UserError(f"precision must be one of {', '.join(prec.SETTINGS)}; got '{precision}'.")
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
    spec = method.spec_from_meta(meta["data"])
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
    modality = modality_of(meta)
    if modality == "audio":
        return AudioGenerator(run_dir, meta, net, dev, weights.name, precision)
    if modality == "video":
        return VideoGenerator(run_dir, meta, net, dev, weights.name, precision)
    if method.modality == "text":
        from genforge.tokenizers import load_tokenizer

        if not (run_dir / "tokenizer.json").exists():
            raise UserError(f"{run_dir} has no tokenizer.json, which a text model needs; the run directory is incomplete.")
        cls = TextGenerator
        if modality == "music":
            from genforge.generators.music import MusicGenerator as cls
        return cls(run_dir, meta, net, load_tokenizer(run_dir), dev, weights.name, precision)
    return ImageGenerator(run_dir, meta, net, dev, weights.name, precision)
