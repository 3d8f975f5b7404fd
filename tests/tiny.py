"""A tiny GAN recipe on the bundled mnist-mini data: seconds per run on 2 CPU cores."""

from genforge.training.config import validate


def tiny_raw(**train):
    return {
        "name": "tiny",
        "family": "gan",
        "data": {"dataset": "mnist-mini"},
        "model": {"z_dim": 8, "g_width": 8, "d_width": 8},
        "train": {"batch_size": 16, "max_steps": 6, "mixed_precision": "no", "log_every": 2,
                  "sample_every": 4, "checkpoint_every": 3, "keep_checkpoints": 2, "seed": 3, **train},
    }


def tiny_config(model=None, **train):
    raw = tiny_raw(**train)
    raw["model"].update(model or {})
    return validate(raw)
