"""The training loop, its config, checkpoints, EMA and progress reporting."""

from genforge.training.config import Config, apply_overrides, list_presets, read_raw, validate
from genforge.training.loop import TrainingDiverged, TrainResult, train

__all__ = ["Config", "TrainResult", "TrainingDiverged", "apply_overrides", "list_presets", "read_raw", "train", "validate"]
