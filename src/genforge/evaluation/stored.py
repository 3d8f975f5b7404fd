"""Reading a cached evaluator (config.json + model.safetensors, never pickle) the one way all evaluators do: the
weights must match the hash their config recorded, and anything unreadable is a damaged cache with a fix."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

from safetensors.torch import load_file
from torch import nn

from genforge.errors import UserError
from genforge.files import sha256_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def read_evaluator(directory: Path, build: Callable[[dict], nn.Module], fix: str) -> tuple[dict, nn.Module]:
    """(config, network with its weights) of the evaluator cached in `directory`; `build(config)` makes the
    network; `fix` ends the error message (how to retrain it)."""
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
        if sha256_file(directory / WEIGHTS_FILE) != config["weights_sha256"]:
            raise ValueError("model.safetensors does not match the hash in config.json")
        net = build(config)
        net.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    except Exception as e:  # unreadable JSON or weights, missing keys, wrong shapes: all mean a damaged cache
        raise UserError(f"The evaluator in {directory} is damaged ({type(e).__name__}: {e}). {fix}") from None
    return config, net


# Evaluators genforge ships (small nets for the data in ../shared/data, trained by scripts/ship_evaluators.py with
# a fixed seed): the first `genforge eval` takes seconds instead of training one, and every install scores in the
# same feature space (the same weights hash in the evaluator id).
SHIPPED = Path(__file__).with_name("shipped")


def shipped_evaluator(name: str) -> Path | None:
    """The folder of the evaluator the package ships under `name` (e.g. mnist-v1), or None."""
    folder = SHIPPED / name
    return folder if (folder / WEIGHTS_FILE).is_file() and (folder / CONFIG_FILE).is_file() else None


def install_shipped(directory: Path) -> dict | None:
    """Copy the shipped evaluator named `directory.name` into the cache folder `directory` and return its config;
    None when the package ships none by that name. Copied, not read in place, because the real data's features
    are cached beside the weights and an installed package may be read-only. Atomic: a temporary folder renamed."""
    source = shipped_evaluator(directory.name)
    if source is None:
        return None
    config = json.loads((source / CONFIG_FILE).read_text())
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = directory.parent / f".tmp-{directory.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copyfile(source / name, tmp / name)
    except OSError as e:
        raise UserError(f"Cannot write the evaluator cache in {directory.parent} ({e.strerror}). "
                        f"Fix: set $GENFORGE_EVALUATORS to a writable folder.") from None
    if sha256_file(tmp / WEIGHTS_FILE) != config["weights_sha256"]:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"The evaluator shipped in {source} does not match its recorded hash. "
                        "Fix: reinstall genforge.")
    try:
        os.replace(tmp, directory)
    except OSError:  # another process installed it first: use that one
        shutil.rmtree(tmp, ignore_errors=True)
    return config


def use_shipped(directory: Path) -> bool:
    """Install the shipped evaluator for `directory` if genforge ships one, saying so on stderr; False if it does
    not (the caller then trains one, and says so)."""
    config = install_shipped(directory)
    if config is None:
        return False
    accuracy = config.get("test_accuracy", config.get("test", {}).get("accuracy", float("nan")))
    print(f"Using the {directory.name} evaluator shipped with genforge (test accuracy {accuracy:.2%}, weights "
          f"{config['weights_sha256'][:8]}), copied to {directory}.", file=sys.stderr, flush=True)
    return True
