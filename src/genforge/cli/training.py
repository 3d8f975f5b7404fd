"""`genforge train` and `genforge tune`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from genforge.cli.common import app, err, leave_distributed, out, user_errors
from genforge.errors import UserError


@app.command()
@user_errors
def train(
    preset: str = typer.Argument(..., help="Preset name (see `genforge presets`) or path to a YAML config."),
    out_dir: Path = typer.Option(..., "--out", help="Run directory: config, weights, samples, checkpoints go here."),
    dataset: Optional[str] = typer.Option(None, help="Train the preset's recipe on another dataset: mnist, fashion-mnist, cifar10, cifar10-jpeg, mnist-mini, folder:PATH; for text: shakespeare, python-stdlib, text:PATH, code:PATH."),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset folder (default: $GENFORGE_DATA, else ~/.cache/genforge/data)."),
    epochs: Optional[float] = typer.Option(None, help="Train for this many passes over the data."),
    max_steps: Optional[int] = typer.Option(None, help="Train until this optimizer step (a resumed run continues up to it)."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop after this many minutes of training, with weights and a checkpoint written (--resume continues)."),
    budget_minutes: Optional[float] = typer.Option(None, help="Fit the whole run to this many minutes: its step count is set from the speed measured in its first steps, so the learning-rate schedule ends with the budget (replaces --epochs/--max-steps)."),
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
    if max_minutes is not None:
        overrides.append(f"train.max_minutes={max_minutes}")
    if budget_minutes is not None:
        overrides.append(f"train.budget_minutes={budget_minutes}")
    family = raw.get("family", "gan")
    cfg = validate(apply_overrides(raw, overrides, get_method(family).Config))
    if resume and (cfg.model != saved.get("model") or cfg.data != validate(saved).data):
        raise UserError("--resume keeps the run's model and data; drop the --set/--dataset options that change them.")
    evaluate = None
    if cfg.train.eval_every and not get_method(cfg.family).self_evaluates:  # language models score themselves
        from genforge.evaluation import training_evaluator

        evaluate = training_evaluator(cfg, data_dir, progress=not no_progress)  # FID, or FD of clips for audio
    result = run_training(cfg, out_dir, data_dir=data_dir, resume=resume, progress=not no_progress, evaluate=evaluate)
    if int(os.environ.get("RANK", "0")) == 0:
        if result.step and result.items_per_second:
            err.print(f"trained to step {result.step} at {result.items_per_second:,.0f} {result.unit}/s; run in {out_dir}")
        out.print(f"{out_dir}")
    leave_distributed()


@app.command()
@user_errors
def tune(
    preset: str = typer.Argument(..., help="Preset name or YAML config to tune (as `genforge train` takes)."),
    space: Path = typer.Option(..., "--space", help="Search space YAML: config key -> {log_uniform: [a, b]}, {uniform: [a, b]}, {int: [a, b]}, {log_int: [a, b]} or {choice: [x, y, ...]}."),
    trials: int = typer.Option(20, "--trials", help="Finished trials the study should hold (a restarted or shared study counts those it has)."),
    out_dir: Path = typer.Option(Path("tune"), "--out", help="Study folder: trials/ (one run directory each), study.journal, trials.csv, best.yaml, history.png, importances.png."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop starting trials after this many seconds."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Database URL to share the study across machines (postgresql://user:pw@host/db, sqlite:///x.db); default: a journal file in --out, safe for several processes on one machine."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name (default: the preset's name)."),
    pruner: str = typer.Option("median", "--pruner", help="median (stop a trial worse than the median of earlier trials at the same step), hyperband or none."),
    set_: List[str] = typer.Option([], "--set", help="Fix a config value for every trial, e.g. --set train.budget_minutes=1 (trials then compete at equal time, each schedule sized to it)."),
    seed: int = typer.Option(0, help="Seed of the sampler: the same seed proposes the same trials."),
    start_from_base: bool = typer.Option(False, "--start-from-base", help="Make the first trial the preset's own values (with --set applied), so the best found is at least where you started, up to one run's noise."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Dataset folder (default: $GENFORGE_DATA, else ~/.cache/genforge/data)."),
) -> None:
    """Search hyper-parameters with Optuna: each trial is a normal run directory trained with the preset plus the
    trial's values, scored by its in-training evaluation (FID for images, validation loss for text; lower is
    better), pruned early when it falls behind. Killing and restarting continues the study; several processes
    (or machines, with --storage) share one. Writes the best configuration as a preset `genforge train` takes.
    Needs the tune extra: pip install 'genforge[tune]'."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise UserError("`genforge tune` needs Optuna: pip install 'genforge[tune]'.") from None
    from genforge.tuning import tune as run_tune

    result = run_tune(preset, space, trials, out_dir, sets=set_, timeout=timeout, storage=storage, study_name=study,
                      pruner=pruner, seed=seed, data_dir=data_dir, start_from_base=start_from_base,
                      say=lambda m: err.print(m, highlight=False, soft_wrap=True))
    if int(os.environ.get("RANK", "0")) != 0:  # a follower rank of `accelerate launch`: rank 0 reports
        leave_distributed()
        return
    counts = {}
    for r in result.trials:
        counts[r["state"].lower()] = counts.get(r["state"].lower(), 0) + 1
    out_lines = [f"study '{result.study}' in {result.storage}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))]
    ranked = sorted((r for r in result.trials if r["state"] == "COMPLETE"), key=lambda r: r["value"])[:5]
    for r in ranked:
        out_lines.append(f"  trial {r['number']:>3}  {r['value']:.4g}  " + "  ".join(f"{k}={_short(v)}" for k, v in r["params"].items()))
    if result.best_config:
        out_lines.append(f"best: trial {result.best['number']} ({result.best['value']:.4g}); config {result.best_config} "
                         f"(genforge train {result.best_config} --out RUN)")
    out_lines.append(f"table: {out_dir / 'trials.csv'}" + (f"; plots: {', '.join(str(p) for p in result.plots)}" if result.plots else ""))
    for line in out_lines:
        out.print(line, highlight=False, soft_wrap=True)
    leave_distributed()


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
