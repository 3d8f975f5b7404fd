"""`genforge eval` and `genforge evaluator train`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from genforge.cli.common import app, evaluator_app, leave_distributed, out, user_errors
from genforge.errors import UserError


@app.command("eval")
@user_errors
def eval_run(
    run_dir: Path = typer.Argument(..., help="A run directory written by `genforge train`."),
    n: Optional[int] = typer.Option(None, "--n", help="How many samples to generate and score: images (default 10,000), audio clips (300), video clips (256), or snippets of a Python-code text model for python_parse_rate (default 50); with --task, test images to edit (default 1,000)."),
    reference: str = typer.Option("test", help="Real split to compare with: test (held out) or train."),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset folder (default: $GENFORGE_DATA, else ~/.cache/genforge/data); evaluators are cached in its evaluators/ folder."),
    seed: int = typer.Option(0, help="Seed for the samples and the metrics' random subsets; the same seed repeats the result."),
    batch_size: int = typer.Option(500, help="Images per generation / feature batch."),
    inception_weights: Optional[Path] = typer.Option(None, help="Also compute the standard Inception-v3 FID/KID/IS from this weights file (weights-inception-2015-12-05-6726825d.pth; needs torch-fidelity, the 'inception' extra)."),
    select: Optional[str] = typer.Option(None, help="best: weights with the best in-training score; last: the final weights. Default: best when the run kept one."),
    likelihood_k: int = typer.Option(100, "--k", help="Models with a likelihood (VAEs): importance samples per test image for the NLL estimate (the literature uses 5,000; more is tighter and slower)."),
    likelihood_n: int = typer.Option(1000, "--likelihood-n", help="Models with a likelihood: how many test images the NLL is estimated on (0: the whole test split)."),
    temperature: Optional[float] = typer.Option(None, help="Image models with a temperature option (VAEs): sample at this prior scale (default: the model's 1.0)."),
    sampler: Optional[str] = typer.Option(None, help="Diffusion models: ddpm, ddim, dpmpp2m or unipc (default: the model's)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Diffusion models: network calls per image (default: the sampler's)."),
    eta: Optional[float] = typer.Option(None, help="Diffusion models, ddim: 0 deterministic .. 1 ancestral."),
    guidance: Optional[float] = typer.Option(None, help="Conditional diffusion models: classifier-free guidance scale (0 unconditional, 1 conditional; default: the model's)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
    task: Optional[str] = typer.Option(None, "--task", help="Evaluate editing instead of sampling: inpaint (centre square, lower half and stroke masks; beside OpenCV's Telea and a mean fill), vary (at each of --strengths) or upscale (a super-resolution run; beside bicubic and nearest), on --n test images (default 1000). Writes eval-TASK.json."),
    strengths: str = typer.Option("0.25,0.5,0.75,1", "--strengths", help="--task vary: the strengths to evaluate, comma-separated."),
    option: List[str] = typer.Option([], "--option", metavar="NAME=VALUE", help="--task: any option of the edit (e.g. jump=10, resample=1, iterations=50, consistent=false); repeatable. --sampler, --steps, --eta, --guidance and --temperature apply too."),
    true_labels: bool = typer.Option(False, "--true-labels", help="--task, class-conditional runs: give the model each test image's true class (without it a conditional diffusion model edits unconditionally; a conditional VAE needs it)."),
    grid: Optional[Path] = typer.Option(None, "--grid", help="--task: also write a PNG of examples (inpaint: mask, mean fill, Telea, model, truth rows per mask; vary: input and each strength; upscale: input, bicubic, model, truth)."),
):
    """Score a run against real data; writes eval.json (with --task, eval-TASK.json).

    Image runs: FID, KID, IS, precision/recall, memorization ... of generated samples; VAEs also the test
    negative log-likelihood (importance-sampled, nats or bits/dim), the ELBO's terms and reconstruction error. Text runs:
    validation loss, perplexity and bits per character/byte on the run's held-out text; runs on Python
    source also the share of generated snippets that parse (python_parse_rate). Audio and video runs: their
    metrics beside the same figures for real test clips (the floor); video (Moving MNIST) through a frame CNN
    genforge trains itself: Fréchet distances per frame and per clip, identity, labels, motion (not FVD).
    """
    from genforge.evaluation import EVAL_FILE, METRIC_INFO, evaluate_run

    if batch_size < 1:
        raise UserError("--batch-size must be at least 1.")
    sample_options = {k: v for k, v in {"temperature": temperature, "sampler": sampler, "steps": steps, "eta": eta,
                                        "guidance": guidance}.items() if v is not None}
    edit = None
    if task is not None:
        sample_options.update(_named_values(option))
        try:
            edit = {"strengths": [float(x) for x in strengths.split(",") if x.strip()], "true_labels": true_labels,
                    "grid": grid}
        except ValueError:
            raise UserError(f"--strengths must be numbers separated by commas, got {strengths!r}.") from None
    elif option or true_labels or grid is not None:
        raise UserError("--option, --true-labels and --grid belong to the editing evaluation: add --task.")
    report = evaluate_run(run_dir, n=n, reference=reference, data_dir=data_dir, seed=seed, batch_size=batch_size,
                          inception_weights=inception_weights, select=select, progress=not no_progress,
                          likelihood_k=likelihood_k, likelihood_n=None if likelihood_n == 0 else likelihood_n,
                          sample_options=sample_options, task=task, edit=edit)
    if task is not None:
        _print_edit_report(run_dir, report)
        return
    if report is None:  # a helper process under `accelerate launch`: rank 0 scores and prints
        leave_distributed()
        return
    out.print(f"[bold]{run_dir}[/] ({report['model']['weights']}): {report['summary']}", highlight=False, soft_wrap=True)
    floor = (report.get("floor") or {}).get("metrics") or {}  # audio, video: the same numbers for real test clips
    table = Table("metric", "value", *(["real test clips"] if floor else []), "better", box=None)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    for name, value in report["metrics"].items():
        table.add_row(name, fmt(value), *([fmt(floor.get(name))] if floor else []), METRIC_INFO.get(name, ("", ""))[1])
    if "inception" in report:
        for name in ("fid", "kid", "is"):
            table.add_row(f"inception {name}", f"{report['inception'][name]:.4g}", *([""] if floor else []),
                          METRIC_INFO[name][1])
    out.print(table)
    for key, what in (("class_counts", "predicted classes"), ("speaker_counts", "predicted speakers")):
        counts = report["details"].get(key)
        if counts:
            out.print(f"{what}: " + ", ".join(f"{k}: {v}" for k, v in counts.items()), highlight=False, soft_wrap=True)
    motion = report["details"].get("motion")
    if isinstance(motion, str):  # video with 2 digits: no positions, no motion metrics
        out.print(f"motion: {motion}", highlight=False, soft_wrap=True)
    out.print(f"wrote {Path(run_dir) / EVAL_FILE} ({report['seconds']['total']:.1f} s)", highlight=False, soft_wrap=True)
    leave_distributed()


def _named_values(pairs: list[str]) -> dict[str, str]:
    """NAME=VALUE words -> {name: value} (the edit checks and converts each value)."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--option takes NAME=VALUE (e.g. jump=10), got {pair!r}.")
        out[name.strip()] = value.strip()
    return out


def _print_edit_report(run_dir: Path, report: dict) -> None:
    """One table per setting (a mask, the upscaling), methods as rows; vary: one table, strengths as rows."""
    from genforge.evaluation.editing import EDIT_METRIC_INFO, report_file

    task = report["task"]
    out.print(f"[bold]{run_dir}[/] ({report['model']['weights']}): {report['summary']}", highlight=False, soft_wrap=True)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    arrow = {"higher": "↑", "lower": "↓"}
    short = {"psnr_masked": "m.psnr", "ssim_masked": "m.ssim", "consistency_psnr": "consistency", "accuracy": "acc"}

    def table(title: str, first: str, rows: list[tuple[str, dict]]) -> None:
        names = [m for m in EDIT_METRIC_INFO if any(m in r for _, r in rows)]
        heads = [short.get(m, m) + ("" if task == "vary" and m.startswith(("psnr", "ssim"))
                                     else arrow[EDIT_METRIC_INFO[m][1]]) for m in names]
        t = Table(first, *heads, box=None)
        for label, r in rows:
            t.add_row(label, *(fmt(r.get(m)) for m in names))
        out.print(title, highlight=False, soft_wrap=True)
        out.print(t)

    real = ("real (input)" if task == "vary" else "real", report["real"])
    if task == "vary":
        table("variations: psnr and ssim to the input; acc: the class kept", "strength",
              [(s.split("=", 1)[1], r["model"]) for s, r in report["results"].items()] + [real])
    else:
        for setting, methods in report["results"].items():
            extra = report["details"].get("masks", {}).get(setting)
            title = (f"[bold]{setting}[/] mask, {extra['mean_fraction']:.0%} of the pixels (m.: over the masked pixels)"
                     if extra else f"[bold]{setting}[/] (consistency: output downsampled vs input, dB)")
            table(title, "method", [*methods.items(), real])
    if "grid" in report:
        out.print(f"wrote {report['grid']['path']} (rows: {', '.join(report['grid']['rows'])})", highlight=False,
                  soft_wrap=True)
    out.print(f"wrote {Path(run_dir) / report_file(task)} ({report['seconds']['total']:.1f} s)", highlight=False,
              soft_wrap=True)


@evaluator_app.command("train")
@user_errors
def evaluator_train(
    dataset: str = typer.Argument(..., help="mnist, fashion-mnist, cifar10, cifar10-jpeg, fsdd (spoken digits) or moving-mnist."),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset folder (default: $GENFORGE_DATA, else ~/.cache/genforge/data)."),
    epochs: Optional[float] = typer.Option(None, help="Override the recipe's epochs (the id changes with the weights)."),
    force: bool = typer.Option(False, "--force", help="Retrain even if a cached evaluator exists."),
    size: Optional[int] = typer.Option(None, help="moving-mnist: the frame side the runs use (default: the canvas, 64); one evaluator per size."),
    digits: int = typer.Option(1, help="moving-mnist: digits per clip (1 or 2)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
):
    """Train (with a fixed seed) and cache the evaluator for a dataset; prints its test accuracy."""
    from genforge.evaluation import (evaluator_domain, evaluators_root, is_audio_evaluator_dataset,
                                     train_audio_evaluator, train_evaluator)

    if dataset == "moving-mnist":  # a frame CNN per frame size: digit identity and position
        from genforge.evaluation.video_evaluator import train_video_evaluator, video_evaluator_name

        opts = {"size": size, "digits": digits}
        cached = not force and (evaluators_root(data_dir) / video_evaluator_name(opts) / "model.safetensors").exists()
        ev = train_video_evaluator(opts, data_dir, epochs=epochs, force=force, progress=not no_progress)
        t, test = ev.config["training"], ev.config["test"]
        where = f", position error {test['position_mae_px']:.2f} px" if "position_mae_px" in test else ""
        out.print(f"{ev.id}: frame accuracy {ev.test_accuracy:.2%}{where} on the test split ({t['epochs_done']} "
                  f"epochs, {t['seconds']} s on {t['device']}) in {ev.directory}", highlight=False, soft_wrap=True)
        if cached:
            out.print("already trained (cached); --force trains it again")
        return
    if is_audio_evaluator_dataset(dataset):  # a spoken-digit classifier on log-mel input
        domain, trainer = dataset, train_audio_evaluator
    else:
        (domain, _), trainer = evaluator_domain(dataset), train_evaluator
    cached = not force and (evaluators_root(data_dir) / f"{domain}-v1" / "model.safetensors").exists()
    ev = trainer(dataset, data_dir, epochs=epochs, force=force, progress=not no_progress)
    t = ev.config["training"]
    out.print(f"{ev.id}: test accuracy {ev.test_accuracy:.2%} ({t['epochs_done']} epochs, {t['seconds']} s on "
              f"{t['device']}, {t['precision']}) in {ev.directory}", highlight=False, soft_wrap=True)
    if cached:
        out.print("already trained (cached); --force trains it again")
