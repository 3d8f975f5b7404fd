"""Pictures a person looks at: sample grids (written by media/) and loss curves."""

from __future__ import annotations

from pathlib import Path

from genforge.media.images import make_grid, save_grid, to_pil

__all__ = ["make_grid", "save_grid", "to_pil", "save_loss_plot"]


def save_loss_plot(records: list[dict], path: str | Path, keys: list[str] | None = None) -> Path | None:
    """Plot every loss-like series of metrics.jsonl records against the step; None if there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = keys or sorted({k for r in records for k in r if k.startswith("loss")})
    if not records or not keys:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for key in keys:
        pts = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
        if pts:
            steps, vals = zip(*pts)
            ax.plot(steps, vals, label=key, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
