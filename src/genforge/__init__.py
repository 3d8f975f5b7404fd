"""genforge: train, sample, evaluate and serve generative models."""

from genforge.version import __version__


def load(run_dir, device=None, select=None, precision="auto"):
    """Load a trained run directory; returns an object with `generate(n, seed=None, labels=None)`.

    select: "best" | "last" | None (best-by-evaluation weights when the run kept them, else last).
    precision: "auto" (measured on this machine, cached) | "no" (fp32) | "bf16" | "fp16".
    """
    from genforge.artifacts import load as _load

    return _load(run_dir, device, select, precision)


__all__ = ["__version__", "load"]
