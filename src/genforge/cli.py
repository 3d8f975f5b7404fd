"""The `genforge` command: parses arguments and calls the library. User mistakes print one line, no traceback."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from genforge.errors import UserError

app = typer.Typer(
    help="genforge: train, sample and inspect generative models (GANs, VAEs, diffusion, language models).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
out = Console()
err = Console(stderr=True)


def user_errors(fn):
    """Turn UserError into one red line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def train(
    preset: str = typer.Argument(..., help="Preset name (see `genforge presets`) or path to a YAML config."),
    out_dir: Path = typer.Option(..., "--out", help="Run directory: config, weights, samples, checkpoints go here."),
    dataset: Optional[str] = typer.Option(None, help="Train the preset's recipe on another dataset: mnist, fashion-mnist, cifar10, mnist-mini, folder:PATH."),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset folder (default: $GENFORGE_DATA, else ~/.cache/genforge/data)."),
    epochs: Optional[float] = typer.Option(None, help="Train for this many passes over the data."),
    max_steps: Optional[int] = typer.Option(None, help="Train until this optimizer step (a resumed run continues up to it)."),
    seed: Optional[int] = typer.Option(None, help="Random seed; the same seed gives the same run on CPU."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value, e.g. --set train.lr=2e-4 (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar (logs still go to metrics.jsonl)."),
):
    """Train a model from a preset or YAML config; writes a run directory usable by `sample`."""
    from genforge.artifacts import read_config
    from genforge.methods import get_method
    from genforge.training import apply_overrides, read_raw, train as run_training, validate

    if epochs is not None and max_steps is not None:
        raise UserError("Give either --epochs or --max-steps, not both.")
    raw = read_raw(preset)
    if resume:
        saved = read_config(out_dir).get("config")
        if not saved:
            raise UserError(f"{out_dir / 'config.json'} holds no training config; cannot resume.")
        raw = saved
    overrides = list(set_)
    if dataset:
        overrides.append(f"data.dataset={json.dumps(dataset)}")
    if epochs is not None:
        overrides += [f"train.epochs={epochs}", "train.max_steps=null"]
    if max_steps is not None:
        overrides.append(f"train.max_steps={max_steps}")
    if seed is not None:
        overrides.append(f"train.seed={seed}")
    family = raw.get("family", "gan")
    cfg = validate(apply_overrides(raw, overrides, get_method(family).Config))
    if resume and (cfg.model != saved.get("model") or cfg.data.model_dump() != saved.get("data")):
        raise UserError("--resume keeps the run's model and data; drop the --set/--dataset options that change them.")
    result = run_training(cfg, out_dir, data_dir=data_dir, resume=resume, progress=not no_progress)
    if result.step and result.images_per_second:
        err.print(f"trained to step {result.step} at {result.images_per_second:,.0f} images/s; run in {out_dir}")
    out.print(f"{out_dir}")


@app.command()
@user_errors
def sample(
    run_dir: Path = typer.Argument(..., help="A run directory written by `genforge train`."),
    n: int = typer.Option(64, "--n", help="How many images."),
    out_arg: str = typer.Option(..., "--out", help="x.png: one grid; x.npy: uint8 array (N, H, W, C); a folder (existing or ending in /): one PNG each."),
    label: Optional[str] = typer.Option(None, help="Class to generate (index or name, e.g. 7 or Sneaker); conditional models only."),
    seed: Optional[int] = typer.Option(None, help="Random seed for reproducible samples."),
    nrow: Optional[int] = typer.Option(None, help="Images per grid row (default: square grid)."),
):
    """Generate images from a trained run."""
    import numpy as np

    from genforge import load
    from genforge.visual import save_grid, to_pil

    out_path = Path(out_arg)  # kept as text first: Path() drops the trailing slash that means "a folder"
    as_dir = out_arg.endswith(("/", "\\")) or out_path.is_dir()
    if not as_dir and out_path.suffix.lower() not in (".png", ".npy"):
        raise UserError(f"--out must end in .png (grid), .npy (array) or / (one PNG per sample); got '{out_path}'.")
    model = load(run_dir)
    images = model.generate(n, seed=seed, labels=label)
    if as_dir:
        out_path.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            to_pil(img).save(out_path / f"{i:05d}.png")
        out.print(f"wrote {len(images)} PNGs to {out_path}")
    elif out_path.suffix.lower() == ".npy":
        out_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(out_path, images)
        out.print(f"wrote {out_path} {images.shape} uint8")
    else:
        save_grid(images, out_path, nrow)
        out.print(f"wrote {out_path} ({len(images)} images)")


@app.command()
@user_errors
def presets():
    """List the bundled presets."""
    from genforge.training import list_presets

    table = Table("preset", "description", box=None)
    for name, desc in list_presets().items():
        table.add_row(name, desc)
    out.print(table)


@data_app.command("info")
@user_errors
def data_info(
    name: str = typer.Argument(..., help="mnist, fashion-mnist, cifar10, mnist-mini or folder:PATH"),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset folder (default: $GENFORGE_DATA, else ~/.cache/genforge/data)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Counts, shape, classes and checksum status of a dataset (downloads nothing)."""
    from genforge.data import dataset_info

    info = dataset_info(name, data_dir)
    if as_json:
        out.print_json(json.dumps(info, default=str))
        return
    out.print(f"[bold]{info.get('name', name)}[/]  {info.get('path', '')}")
    for split, s in (info.get("splits") or {}).items():
        out.print(f"  {split}: {s.get('count')} images, shape {s.get('shape')}")
    classes = info.get("classes") or []
    if classes:
        out.print(f"  classes ({len(classes)}): {', '.join(map(str, classes))}")
    files = info.get("files") or []
    if files:
        table = Table("file", "present", "checksum", box=None)
        for f in files:
            table.add_row(str(f.get("file")), "yes" if f.get("present") else "no", str(f.get("checksum")))
        out.print(table)
    if info.get("report"):
        out.print(f"  cleaning: {info['report']}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
