"""Reading a cached evaluator (config.json + model.safetensors, never pickle) the one way all evaluators do: the
weights must match the hash their config recorded, and anything unreadable is a damaged cache with a fix."""

from __future__ import annotations

import json
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
