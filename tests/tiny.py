"""Tiny recipes for fast tests: a GAN on the bundled mnist-mini data and a char GPT on the bundled
Shakespeare; seconds per run on 2 CPU cores."""

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


def tiny_lm_config(**train):
    return validate({
        "name": "tiny-lm",
        "family": "lm",
        "data": {"dataset": "shakespeare", "tokenizer": "char"},
        "model": {"architecture": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32,
                  "dropout": 0.1, "warmup_steps": 2},
        "train": {"batch_size": 8, "max_steps": 4, "lr": 3e-3, "mixed_precision": "no", "ema_decay": 0,
                  "log_every": 2, "eval_every": 2, "eval_samples": 100, "sample_every": 2, "checkpoint_every": 2,
                  "seed": 3, **train},
    })
