"""The `genforge` command: parses arguments and calls the library. User mistakes print one line, no traceback."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from pathlib import Path
from typing import List, Optional, Tuple

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


def _leave_distributed() -> None:
    """End a process of a distributed run (`accelerate launch`) without C++ teardown.

    With torch 2.13 + gloo on CPU, a rank sometimes aborts at interpreter exit ("terminate called
    without an active exception") after all its work is done and the process group is gone, which
    turns a good run into a failed launch. Everything is written by now, so the process leaves directly.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


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
        from genforge.evaluation import TrainingFID

        evaluate = TrainingFID(cfg.data.dataset, data_dir, n=cfg.train.eval_samples, seed=cfg.train.seed,
                               progress=not no_progress)
    result = run_training(cfg, out_dir, data_dir=data_dir, resume=resume, progress=not no_progress, evaluate=evaluate)
    if int(os.environ.get("RANK", "0")) == 0:
        if result.step and result.items_per_second:
            err.print(f"trained to step {result.step} at {result.items_per_second:,.0f} {result.unit}/s; run in {out_dir}")
        out.print(f"{out_dir}")
    _leave_distributed()


@app.command()
@user_errors
def sample(
    run_dir: Path = typer.Argument(..., help="A run directory written by `genforge train`, or an export directory "
                                             "written by `genforge export` (sampled without torch, on onnxruntime)."),
    n: Optional[int] = typer.Option(None, "--n", help="How many images (default 64) or texts (default 1)."),
    out_arg: Optional[str] = typer.Option(None, "--out", help="Images (required): x.png: one grid; x.npy: uint8 array (N, H, W, C); a folder (existing or ending in /): one PNG each. Text: a file to write instead of printing."),
    label: Optional[str] = typer.Option(None, help="Class to generate (index or name, e.g. 7 or Sneaker); conditional image models only."),
    seed: Optional[int] = typer.Option(None, help="Random seed for reproducible samples."),
    nrow: Optional[int] = typer.Option(None, help="Images per grid row (default: square grid)."),
    select: Optional[str] = typer.Option(None, help="best: weights with the best in-training score (FID, validation loss); last: the final weights. Default: best when the run kept one."),
    prompt: Optional[str] = typer.Option(None, help="Text models: the text to continue (default: a newline)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Text models: tokens to generate (default 500)."),
    temperature: Optional[float] = typer.Option(None, help="Text models: sampling temperature, 0 = greedy (default 0.8)."),
    top_k: Optional[int] = typer.Option(None, help="Text models: sample from the k most likely tokens only."),
    top_p: Optional[float] = typer.Option(None, help="Text models: nucleus sampling, keep the most likely tokens up to this probability."),
    stop: List[str] = typer.Option([], "--stop", help="Text models: end a text at this string, left out (repeatable)."),
    precision: str = typer.Option("auto", help="auto: time generation in fp32 and bf16 on this machine and use the faster (cached); no: fp32; bf16; fp16."),
    interpolate: Optional[Tuple[str, str]] = typer.Option(None, "--interpolate", metavar="A B", help="Image models with a latent space: a walk from A to B, each a seed (e.g. --interpolate 3 8) or an image file (VAEs: encoded), saved as one row."),
    walk_steps: int = typer.Option(10, "--walk-steps", help="Images in an --interpolate walk, ends included."),
    sampler: Optional[str] = typer.Option(None, help="Diffusion models: ddpm (ancestral, T steps), ddim, dpmpp2m (DPM-Solver++(2M)) or unipc (UniPC), the last two good at 10-20 steps. Default: the model's."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Diffusion models: network calls per image (default: the sampler's, see --sampler)."),
    eta: Optional[float] = typer.Option(None, help="Diffusion models, ddim: 0 deterministic (default) .. 1 as noisy as DDPM."),
    guidance: Optional[float] = typer.Option(None, help="Conditional diffusion models: classifier-free guidance, 0 ignores --label, 1 follows it, more follows it harder (default: the model's)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    fmt: str = typer.Option("png", "--format", help="Images written to a folder: png, jpeg or webp (a grid's format is its --out suffix: .png, .jpg, .webp)."),
    quality: Optional[int] = typer.Option(None, help="JPEG and WebP quality, 1-100 (WebP 100 is lossless). Default: JPEG 100 and lossless WebP, which keep the invisible mark through a later JPEG-75 re-encode (JPEG 95 written: 91-94% kept; lossy WebP removes it)."),
    mark_key: Optional[Path] = typer.Option(None, "--mark-key", help="Key file of the invisible mark (default: $GENFORGE_MARK_KEY_FILE or $GENFORGE_MARK_KEY). Create one with `genforge keygen`."),
    no_mark: bool = typer.Option(False, "--no-mark", help="Do not apply the invisible mark, even when a key is set."),
    no_metadata: bool = typer.Option(False, "--no-metadata", help="Write files without provenance metadata (XMP, sidecar) or C2PA manifest."),
    sign_cert: Optional[Path] = typer.Option(None, "--sign-cert", help="PEM certificate chain (signer first) for a C2PA manifest in every image; needs --sign-key and the provenance extra."),
    sign_key: Optional[Path] = typer.Option(None, "--sign-key", help="PEM private key (ES256, P-256) of --sign-cert."),
    drop_copies: bool = typer.Option(False, "--drop-copies", help="Images: drop (and redraw) samples that are near-copies of training images (the memorization test of `genforge eval`, per sample)."),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", help="Images: drop (and redraw) samples the dataset's evaluator classifies with less than this probability (of the asked class, for conditional models), e.g. 0.9."),
    resize: Optional[int] = typer.Option(None, "--resize", help="Images: resize for display (Lanczos) so the longer side has this many pixels; the mark is applied after resizing."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Dataset folder, for --drop-copies and --min-confidence (the evaluator and training features)."),
):
    """Generate images or text from a trained run.

    Image models: a grid, an array or PNG files; --label for conditional models; --temperature scales a
    VAE's prior; --sampler, --steps, --eta and --guidance choose how a diffusion model samples;
    --interpolate A B walks between two seeds or two images. Text models: --prompt and the sampling options.
    An export directory (`genforge export`) is sampled by the torch-free runtime: torch is not imported.

    Every file carries its provenance (IPTC DigitalSourceType trainedAlgorithmicMedia in XMP for images, a
    .json sidecar for text: model, weights hash, seed, options), and, with a mark key, an invisible keyed mark
    that `genforge verify --key` finds after the metadata is stripped; --sign-cert/--sign-key add a signed C2PA
    manifest."""
    from genforge.runtime import is_export

    exported = is_export(run_dir)
    if exported:
        from genforge.runtime import load as load_export

        misused = [name for name, v in {"--select": select, "--interpolate": interpolate}.items() if v]
        if misused or precision != "auto":
            raise UserError(f"{', '.join(misused) or '--precision'} applies to run directories; {run_dir} is an "
                            "export (fp32 on onnxruntime, its weights chosen at export time).")
        model = load_export(run_dir)
    else:
        from genforge import load

        model = load(run_dir, select=select, precision=precision)
    model.use_mark_key(False if no_mark else mark_key)
    signer = _signer(sign_cert, sign_key, no_metadata)
    if model.mark_key is None and not no_mark and out_arg is not None:  # not over text printed to the terminal
        err.print("note: no mark key, so the outputs carry metadata but no invisible mark; set --mark-key or "
                  "GENFORGE_MARK_KEY_FILE (create a key with `genforge keygen KEYFILE`), or pass --no-mark.",
                  highlight=False, soft_wrap=True)
    text_opts = {"--prompt": prompt, "--max-new-tokens": max_new_tokens, "--temperature": temperature,
                 "--top-k": top_k, "--top-p": top_p, "--stop": stop or None}
    if model.modality == "text":
        misused = [name for name, v in {"--label": label, "--nrow": nrow, "--sampler": sampler, "--steps": steps,
                                        "--eta": eta, "--guidance": guidance}.items() if v is not None]
        if misused:
            raise UserError(f"{', '.join(misused)} applies to image models; {run_dir} is a text model. "
                            "Use --prompt, --max-new-tokens, --temperature, --top-k, --top-p, --stop.")
        _sample_text(model, n or 1, out_arg, prompt if prompt is not None else "\n", max_new_tokens or 500,
                     0.8 if temperature is None else temperature, top_k, top_p, seed, stop, not no_metadata)
        return
    family_opts = {"temperature": temperature, "sampler": sampler, "steps": steps, "eta": eta, "guidance": guidance}
    image_opts = {k: v for k, v in family_opts.items() if k in model.options() and v is not None}
    misused = [name for name, v in text_opts.items() if v is not None and name.lstrip("-").replace("-", "_") not in image_opts]
    if misused:
        raise UserError(f"{', '.join(misused)} applies to text models; {run_dir} is an image model"
                        + (f" (its options: {', '.join('--' + o for o in model.options())})." if model.options() else "."))
    foreign = [f"--{k}" for k, v in family_opts.items() if v is not None and k not in image_opts]
    if foreign:
        raise UserError(f"{', '.join(foreign)}: not an option of this {model.meta.get('family')} model"
                        + (f" (its options: {', '.join('--' + o for o in model.options())})." if model.options()
                           else "; it takes --n, --seed and --label only."))
    if out_arg is None:
        raise UserError("--out is required for an image model: x.png (grid), x.npy (array) or a folder/ (one PNG each).")
    n = 64 if n is None else n
    out_path = Path(out_arg)  # kept as text first: Path() drops the trailing slash that means "a folder"
    as_dir = out_arg.endswith(("/", "\\")) or out_path.is_dir()
    if not as_dir and out_path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".npy"):
        raise UserError(f"--out must end in .png, .jpg or .webp (a grid), .npy (array) or / (one file per sample); "
                        f"got '{out_path}'.")
    if fmt.lower() not in ("png", "jpeg", "jpg", "webp"):
        raise UserError(f"--format must be png, jpeg or webp; got '{fmt}'.")
    if quality is not None and not 1 <= quality <= 100:
        raise UserError(f"--quality must be 1-100; got {quality}.")
    from genforge.filters import Filters

    filters = Filters(drop_copies, min_confidence, resize)
    filter_reports: list[dict] = []
    if filters.active and (interpolate or exported):
        raise UserError("--drop-copies, --min-confidence and --resize apply to sampling from a run directory "
                        f"(not to {'--interpolate' if interpolate else 'an export, which runs without torch'}).")
    if interpolate:
        images = model.interpolate(*(_walk_end(model, e) for e in interpolate), steps=walk_steps, labels=label, **image_opts)
        nrow = nrow or len(images)
    elif filters.active:
        from genforge.filters import generate_filtered

        with _sampling_progress(not no_progress, n) as progress:
            images, filter_reports = generate_filtered(model, n, filters, seed, label, data_dir, progress, **image_opts)
        summary = next((r for r in filter_reports if r["filter"] == "summary"), None)
        if summary and summary["returned"] < n:
            err.print(f"[yellow]warning:[/] the filters kept {summary['returned']} of {n} images after "
                      f"{summary['generated']} draws ({summary['rounds']} rounds); loosen --min-confidence or ask for "
                      "fewer.", highlight=False, soft_wrap=True)
    else:
        with _sampling_progress(not no_progress and int(os.environ.get("RANK", "0")) == 0, n) as progress:
            generate = model.generate if exported else model.generate_across_processes
            images = generate(n, seed=seed, labels=label, progress=progress, **image_opts)
        if images is None:  # another process of `accelerate launch` writes them
            _leave_distributed()
            return
    from genforge.media import write_images

    params = {"n": n, "labels": label, **image_opts}
    if interpolate:
        params.update(interpolate=list(interpolate), walk_steps=walk_steps)
    record = None if no_metadata else model.record(seed, **params)
    if record is not None and filter_reports:
        record.filters = filter_reports
    try:
        out.print(write_images(images, out_arg, record, nrow, signer, fmt, quality), highlight=False, soft_wrap=True)
    except ValueError as e:  # a bad --out or a certificate c2pa refuses
        raise UserError(str(e)) from None
    _leave_distributed()


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
        _leave_distributed()
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
    _leave_distributed()


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@app.command("export")
@user_errors
def export_run(
    run_dir: Path = typer.Argument(..., help="A run directory written by `genforge train` (an image model: gan, vae, diffusion)."),
    out_dir: Path = typer.Option(..., "--out", help="The export directory to write (one graph file per network and "
                                                    "export.json), or a path ending in .zip to write all of it as one file."),
    fmt: str = typer.Option("onnx", "--format", help="onnx, or ort: onnxruntime's format for its mobile and minimal builds."),
    opset: int = typer.Option(18, help="ONNX opset of the graphs."),
    int8: bool = typer.Option(False, "--int8", help="Static int8 quantization (QDQ) of the graphs sampling runs, "
                                                    "calibrated on the inputs they get while the export samples. "
                                                    "Measure before you ship it: benchmarks/RESULTS.md has what it "
                                                    "cost and saved here."),
    select: Optional[str] = typer.Option(None, help="best or last weights (default: best when the run kept one)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out when it exists and is not empty."),
) -> None:
    """Export a trained model to ONNX for the torch-free runtime (`genforge sample EXPORT_DIR`, genforge.runtime).

    The graphs hold the network only (GAN generator; VAE decoder and encoder; diffusion UNet), with a dynamic
    batch dimension; sampling (noise, labels, the diffusion sampler loop) runs in the runtime, in numpy.
    export.json holds the family, image shape, classes, sampling options with the run's defaults, provenance
    and each file's SHA-256. Needs the export extra: pip install 'genforge[export]'."""
    from genforge.export import export
    from genforge.runtime import load as load_export

    path = export(run_dir, out_dir, opset=opset, select=select, overwrite=overwrite, fmt=fmt, int8=int8)
    config = load_export(path).config  # and proves that onnxruntime loads what was written
    size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.iterdir())
    graphs = ", ".join(g["file"] for g in config["graphs"].values())
    out.print(f"exported {config['family']} model ({config['name']}, step {config['provenance']['step']}) to {path}: "
              f"{graphs}{' (int8: ' + (', '.join(config['int8']) or 'none: not offered for this model') + ')' if 'int8' in config else ''}; "
              f"{size / 1e6:.1f} MB in all", soft_wrap=True)


@contextlib.contextmanager
def _sampling_progress(enabled: bool, n: int):
    """A bar over the network calls of a multi-step sampler (diffusion); families that sample in one pass never call it."""
    if not enabled or not err.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn(f"[bold]sample[/] {n} images"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                   TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(), console=err, transient=True)
    task = None

    def progress(done: int, total: int):
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("sample", total=total)
        bar.update(task, completed=done, total=total)

    try:
        yield progress
    finally:
        bar.stop()


def _walk_end(model, end: str):
    """A seed (an integer) or an image file, read at the model's size."""
    if end.lstrip("-").isdigit():
        return int(end)
    from genforge.data.folder import read_images

    h, w, c = model.image_shape
    images, _, notes = read_images(Path(end), h, w, c)
    for note in notes:
        err.print(f"note: {note}", highlight=False, soft_wrap=True)
    if len(images) != 1:
        raise UserError(f"--interpolate takes one image per end; {end} holds {len(images)}.")
    return images[0].numpy()


@app.command()
@user_errors
def reconstruct(
    run_dir: Path = typer.Argument(..., help="A run directory of a model with an encoder (a VAE)."),
    in_path: Path = typer.Option(..., "--in", help="An image file or a folder of images (converted to the model's size and channels, with a note)."),
    out_path: Path = typer.Option(..., "--out", help="x.png: a grid with each input beside its reconstruction; a folder/: one PNG pair per input."),
    label: Optional[str] = typer.Option(None, help="Conditional models: the class of the inputs (default: the first class)."),
    select: Optional[str] = typer.Option(None, help="best or last weights (default: best when the run kept one)."),
):
    """Encode images and decode them again: shows what the model keeps of each image, input beside output."""
    import numpy as np

    from genforge import load
    from genforge.data.folder import read_images
    from genforge.media import encode, save_grid
    from genforge.media.images import FORMATS, _write

    model = load(run_dir, select=select, precision="no")
    if not hasattr(model, "reconstruct"):
        raise UserError(f"{run_dir} is a text model; reconstruct takes an image model with an encoder (a VAE).")
    h, w, c = model.image_shape
    images, paths, notes = read_images(in_path, h, w, c)
    for note in notes:
        err.print(f"note: {note}", highlight=False, soft_wrap=True)
    labels = label if label is not None else (0 if model.conditional else None)
    rec = model.reconstruct(images.numpy(), labels=labels)
    pairs = np.stack([images.numpy(), rec], 1).reshape(-1, h, w, c)
    record = model.record(None, task="reconstruction", inputs=len(paths))
    if str(out_path).endswith(("/", "\\")) or out_path.is_dir():
        out_path.mkdir(parents=True, exist_ok=True)
        for p, pair in zip(paths, pairs.reshape(len(paths), 2, h, w, c)):
            _write(out_path / f"{p.stem}-reconstruction.png",
                   encode(np.concatenate(list(pair), axis=1), "PNG", record.with_(parameters={"input": p.name})))
        out.print(f"wrote {len(paths)} input/reconstruction pairs to {out_path}")
        return
    if out_path.suffix.lower() not in FORMATS:
        raise UserError(f"--out must end in .png, .jpg or .webp (a grid) or / (one PNG per input); got '{out_path}'.")
    save_grid(pairs, out_path, nrow=min(16, 2 * len(paths)), record=record)
    out.print(f"wrote {out_path} ({len(paths)} input{'s' if len(paths) > 1 else ''}, each beside its reconstruction)")


def _sample_text(model, n, out_arg, prompt, max_new_tokens, temperature, top_k, top_p, seed, stop, metadata) -> None:
    """Print (one text: streamed as it is generated) or write `n` continuations of `prompt`, prompt included;
    a written file gets its provenance sidecar."""
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}.")
    kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                  stop=stop)
    if n == 1 and out_arg is None:
        sys.stdout.write(prompt)
        for piece in model.stream(prompt, **kwargs):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    texts = [prompt + t for t in model.generate([prompt] * n, **kwargs)]
    joined = "".join(f"--- sample {i + 1} of {n} ---\n{t}\n" for i, t in enumerate(texts)) if n > 1 else texts[0]
    if out_arg is None:
        sys.stdout.write(joined)
        return
    from genforge.media import write_text

    record = model.record(seed, prompt=prompt, n=n, **{k: v for k, v in kwargs.items() if k != "seed"}) if metadata else None
    out.print(write_text([joined], out_arg, record) + f" ({n} text{'s' if n > 1 else ''})", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def keygen(
    path: Path = typer.Argument(..., help="Where to write the new key file (never overwritten; readable by you only)."),
    test_certificate: Optional[Path] = typer.Option(None, "--test-certificate", help="Also write a throwaway C2PA test certificate chain and key into this folder (cert.pem, key.pem, root.pem): for trying --sign-cert/--sign-key; no trust list knows it."),
):
    """Create a secret key for the invisible marks. Keep it out of run directories and repositories; point
    GENFORGE_MARK_KEY_FILE (or --mark-key) at it when sampling or serving, and `genforge verify --key` when checking.
    Outputs name the key by its id (a hash), never the key itself."""
    from genforge.media.watermark import KeyError_, new_key_file

    if test_certificate is not None:
        try:
            from genforge.media.provenance import throwaway_certificate as make_certificate

            signer, root = make_certificate(days=365)
        except ImportError:
            raise UserError("--test-certificate needs cryptography: pip install 'genforge[provenance]'.") from None
        test_certificate.mkdir(parents=True, exist_ok=True)
        for name, data in (("cert.pem", signer.cert_chain), ("key.pem", signer.private_key), ("root.pem", root)):
            if (test_certificate / name).exists():
                raise UserError(f"{test_certificate / name} exists; choose an empty folder.")
        for name, data in (("cert.pem", signer.cert_chain), ("key.pem", signer.private_key), ("root.pem", root)):
            (test_certificate / name).write_bytes(data)
        (test_certificate / "key.pem").chmod(0o600)
        out.print(f"wrote a test certificate chain to {test_certificate} (cert.pem, key.pem, root.pem; untrusted)",
                  highlight=False, soft_wrap=True)
    try:
        key = new_key_file(path)
    except KeyError_ as e:
        raise UserError(str(e)) from None
    out.print(f"wrote {path} (key id {key.id})", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def verify(
    target: str = typer.Argument(..., help="An image (PNG, JPEG, WebP), a text file, or text itself."),
    key: List[Path] = typer.Option([], "--key", help="Mark key file to test (repeatable; default: $GENFORGE_MARK_KEY_FILE or $GENFORGE_MARK_KEY)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Text: the run or export whose tokenizer made it (needed for the text mark)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
):
    """Is this generated, by what, and has it been altered? Reports the provenance metadata (XMP or a text
    sidecar), the C2PA manifest and whether its signature holds, and the invisible mark under each key (z-score,
    p-value, key id).

    Exit codes: 0 generated (a layer says so), 1 no provenance found, 3 a C2PA manifest that fails validation
    (altered after signing), 2 a usage error."""
    from genforge.media.watermark import KeyError_, read_key
    from genforge.verification import verify as run_verify

    try:
        keys = [read_key(k) for k in key] if key else [k for k in [read_key()] if k is not None]
    except KeyError_ as e:
        raise UserError(str(e)) from None
    report = run_verify(target, keys, model)
    data = report.as_dict()
    if as_json:
        out.print_json(json.dumps(data, default=str))
        raise typer.Exit(report.verdict)
    meta = data["metadata"]
    out.print(f"{data['source']}: {data['verdict']}", highlight=False, soft_wrap=True)
    if meta:
        source = meta.get("digital_source_type", "?")
        out.print(f"  metadata: {source.rsplit('/', 1)[-1]}; model {meta.get('model', '?')} {meta.get('model_hash', '')[:19]}; "
                  f"genforge {meta.get('version', '?')}; created {meta.get('created', '?')}; seed {meta.get('seed')}; "
                  f"mark key {meta.get('mark') or 'none'}", highlight=False, soft_wrap=True)
    else:
        out.print("  metadata: none", highlight=False, soft_wrap=True)
    c2 = data["c2pa"]
    if c2:
        extra = [f for f in c2["failures"] if f != "signingCredential.untrusted"]
        trust = " (certificate not in a trust list)" if "signingCredential.untrusted" in c2["failures"] else ""
        out.print(f"  C2PA: {c2['state']}{trust}; created as {str(c2['source_type']).rsplit('/', 1)[-1]}"
                  + (f"; failures: {', '.join(extra)}" if extra else ""), highlight=False, soft_wrap=True)
    else:
        out.print(f"  C2PA: {data['c2pa_note'] or 'none'}", highlight=False, soft_wrap=True)
    for m in data["marks"]:
        if "tiles" in m:
            out.print(f"  mark (key {m['key_id']}): {'found' if m['detected'] else 'not found'} in "
                      f"{m['tiles_detected']} of {m['tiles']} grid tiles (median z {m['z_median']})", highlight=False, soft_wrap=True)
        else:
            where = f", {m['tokens_scored']} tokens scored" if "tokens_scored" in m else f", view {m.get('view')}"
            out.print(f"  mark (key {m['key_id']}): {'found' if m['detected'] else 'not found'}: z {m['z']}, "
                      f"p {m['p_value']:.2g}{where}", highlight=False, soft_wrap=True)
    for note in data["notes"]:
        out.print(f"  note: {note}", highlight=False, soft_wrap=True)
    raise typer.Exit(report.verdict)


def _signer(cert: Path | None, key: Path | None, no_metadata: bool):
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise UserError("C2PA signing needs both --sign-cert (PEM chain) and --sign-key (PEM private key).")
    if no_metadata:
        raise UserError("--sign-cert/--sign-key sign the provenance that --no-metadata leaves out; drop one of them.")
    from genforge.media import Signer

    try:
        import c2pa  # noqa: F401
    except ImportError:
        raise UserError("C2PA signing needs c2pa-python: pip install 'genforge[provenance]'.") from None
    try:
        return Signer.from_files(cert, key)
    except ValueError as e:
        raise UserError(str(e)) from None


@app.command()
@user_errors
def info(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    no_measure: bool = typer.Option(False, "--no-measure", help="Skip the matrix-product timings (about 1 s)."),
):
    """What this machine offers: CPU and its bf16/AMX flags or GPU, torch and threads, measured fp32 and bf16
    matrix-product rates, memory, data and cache folders, optional components, cached precision verdicts.
    Paste it into a bug report."""
    from genforge.doctor import machine_report

    report = machine_report(measure=not no_measure)
    if as_json:
        out.print_json(json.dumps(report, default=str))
        return
    cpu, t = report["cpu"], report["torch"]
    lines = [
        ("genforge", f"{report['genforge']} (Python {report['python']}, {report['platform']})"),
        ("CPU", f"{cpu['model']}, {cpu['cores']} cores"),
        ("CPU flags", f"{' '.join(cpu['flags']) or 'none of interest'}; torch kernels: {cpu['torch_capability']}; "
                      f"oneDNN bf16 kernels: {'yes' if cpu['onednn_bf16_kernels'] else 'no'}"),
        ("GPU", "none" if not report["gpu"] else
         f"{report['gpu']['name']} x{report['gpu']['count']}, {report['gpu']['memory_gib']} GiB, bf16 {report['gpu']['bf16']}"),
        ("torch", f"{t['version']}, {t['threads']} threads ({t['interop_threads']} inter-op)"),
    ]
    if "matmul_gflops" in report:
        m = report["matmul_gflops"]
        lines.append(("matmul", f"fp32 {m['fp32']:,.1f} GFLOP/s, bf16 {m['bf16']:,.1f} GFLOP/s "
                                f"(bf16 at {m['bf16'] / max(m['fp32'], 1e-9):.2f}x fp32)"))
    mem = report["memory"]
    lines += [
        ("memory", f"{mem.get('MemAvailable', '?')} free of {mem.get('MemTotal', '?')}"),
        ("auto precision", "; ".join(f"{k}: times " + " and ".join({"no": "fp32"}.get(x, x) for x in v)
                                     + ("" if len(v) > 1 else " only (no fast bf16 kernels here)")
                                     for k, v in report["auto_precision_candidates"].items())),
        ("data folder", report["directories"]["data"]),
        ("cache folder", report["directories"]["cache"]),
    ]
    table = Table(box=None, show_header=False)
    for k, v in lines:
        table.add_row(f"[bold]{k}[/]", v)
    out.print(table)
    comps = Table("component", "version", "used for", box=None)
    for dist, c in report["components"].items():
        comps.add_row(dist, c["version"] or "[dim]not installed[/]", c["for"])
    out.print(comps)
    verdicts = report["cached_precision_verdicts"]
    if verdicts:
        vt = Table("cached precision verdict", "used", "speed vs fp32", "date", box=None)
        for key, v in verdicts.items():
            speeds = ", ".join(f"{k} {x:.2f}x" for k, x in (v.get("speed_vs_fp32") or {}).items() if k != "no")
            vt.add_row(key, str(v.get("used")), speeds, str(v.get("date")))
        out.print(vt)


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
    name: str = typer.Argument(..., help="mnist, fashion-mnist, cifar10, cifar10-jpeg, mnist-mini or folder:PATH"),
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


evaluator_app = typer.Typer(help="Evaluator networks (classifiers trained on real data) used by `genforge eval`.",
                            no_args_is_help=True)
app.add_typer(evaluator_app, name="evaluator")


@app.command("eval")
@user_errors
def eval_run(
    run_dir: Path = typer.Argument(..., help="A run directory written by `genforge train`."),
    n: Optional[int] = typer.Option(None, "--n", help="How many samples to generate and score: images (default 10,000), or snippets of a Python-code text model for python_parse_rate (default 50)."),
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
):
    """Score a run against real data; writes eval.json.

    Image runs: FID, KID, IS, precision/recall, memorization ... of generated samples; VAEs also the test
    negative log-likelihood (importance-sampled, nats or bits/dim), the ELBO's terms and reconstruction error. Text runs:
    validation loss, perplexity and bits per character/byte on the run's held-out text; runs on Python
    source also the share of generated snippets that parse (python_parse_rate).
    """
    from genforge.evaluation import EVAL_FILE, METRIC_INFO, evaluate_run

    if batch_size < 1:
        raise UserError("--batch-size must be at least 1.")
    report = evaluate_run(run_dir, n=n, reference=reference, data_dir=data_dir, seed=seed, batch_size=batch_size,
                          inception_weights=inception_weights, select=select, progress=not no_progress,
                          likelihood_k=likelihood_k, likelihood_n=None if likelihood_n == 0 else likelihood_n,
                          sample_options={k: v for k, v in {"temperature": temperature, "sampler": sampler, "steps": steps,
                                                            "eta": eta, "guidance": guidance}.items() if v is not None})
    if report is None:  # a helper process under `accelerate launch`: rank 0 scores and prints
        _leave_distributed()
        return
    out.print(f"[bold]{run_dir}[/] ({report['model']['weights']}): {report['summary']}", highlight=False, soft_wrap=True)
    table = Table("metric", "value", "better", box=None)
    for name, value in report["metrics"].items():
        table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value), METRIC_INFO.get(name, ("", ""))[1])
    if "inception" in report:
        for name in ("fid", "kid", "is"):
            table.add_row(f"inception {name}", f"{report['inception'][name]:.4g}", METRIC_INFO[name][1])
    out.print(table)
    counts = report["details"].get("class_counts")
    if counts:
        out.print("predicted classes: " + ", ".join(f"{k}: {v}" for k, v in counts.items()), highlight=False, soft_wrap=True)
    out.print(f"wrote {Path(run_dir) / EVAL_FILE} ({report['seconds']['total']:.1f} s)", highlight=False, soft_wrap=True)
    _leave_distributed()


@evaluator_app.command("train")
@user_errors
def evaluator_train(
    dataset: str = typer.Argument(..., help="mnist, fashion-mnist, cifar10 or cifar10-jpeg."),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset folder (default: $GENFORGE_DATA, else ~/.cache/genforge/data)."),
    epochs: Optional[float] = typer.Option(None, help="Override the recipe's epochs (the id changes with the weights)."),
    force: bool = typer.Option(False, "--force", help="Retrain even if a cached evaluator exists."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
):
    """Train (with a fixed seed) and cache the evaluator for a dataset; prints its test accuracy."""
    from genforge.evaluation import evaluator_domain, evaluators_root, train_evaluator

    domain, _ = evaluator_domain(dataset)
    cached = not force and (evaluators_root(data_dir) / f"{domain}-v1" / "model.safetensors").exists()
    ev = train_evaluator(dataset, data_dir, epochs=epochs, force=force, progress=not no_progress)
    t = ev.config["training"]
    out.print(f"{ev.id}: test accuracy {ev.test_accuracy:.2%} ({t['epochs_done']} epochs, {t['seconds']} s on "
              f"{t['device']}, {t['precision']}) in {ev.directory}", highlight=False, soft_wrap=True)
    if cached:
        out.print("already trained (cached); --force trains it again")


@app.command()
@user_errors
def serve(
    runs: List[str] = typer.Argument(..., help="Run directories to serve, each RUN_DIR or NAME=RUN_DIR (the name "
                                               "clients pass as `model`; default: the directory's name); an export "
                                               "(`genforge export`) is served on onnxruntime."),
    host: str = typer.Option("127.0.0.1", help="Address to bind. The default answers this machine only; use "
                                                "0.0.0.0 to serve others, and then set API keys."),
    port: int = typer.Option(8000, help="Port to listen on."),
    api_key_file: Optional[Path] = typer.Option(None, help="File with one API key per line: clients must send "
                                                           "`Authorization: Bearer KEY` on every /v1 route. Keys can "
                                                           "also come from GENFORGE_API_KEYS (comma-separated)."),
    max_batch: int = typer.Option(32, min=1, help="Most rows (images, or text choices) merged into one forward "
                                                  "pass; also the most one request may ask for."),
    max_wait_ms: float = typer.Option(10.0, min=0, help="How long a batch waits for more requests to join."),
    max_queue: int = typer.Option(64, min=1, help="Requests waiting per model; beyond it, 429 with Retry-After."),
    timeout: float = typer.Option(120.0, min=1, help="Seconds a request may take, queue included (then 504)."),
    max_tokens: int = typer.Option(1024, min=1, help="Largest max_tokens a completion may ask for."),
    max_images: int = typer.Option(64, min=1, help="Most images per request (also capped by --max-batch)."),
    max_image_calls: int = typer.Option(4096, min=1, help="Most network calls an image request may cost: n x the "
                                                          "sampler's steps (x2 when guided) for diffusion, n for "
                                                          "one-pass models."),
    workers: int = typer.Option(1, min=1, help="Processes on this port, each with its own copy of the models "
                                               "(replicas are stateless: any balancer can front several machines)."),
    precision: str = typer.Option("auto", help="Generation precision: auto (measured per model), no (fp32), bf16, fp16."),
    log_level: str = typer.Option("info", help="uvicorn log level: critical, error, warning, info, debug."),
    mark_key: Optional[Path] = typer.Option(None, "--mark-key", help="Key file of the invisible marks on every image and text (default: $GENFORGE_MARK_KEY_FILE or $GENFORGE_MARK_KEY)."),
    no_mark: bool = typer.Option(False, "--no-mark", help="Serve without the invisible marks even when a key is set."),
    sign_cert: Optional[Path] = typer.Option(None, "--sign-cert", help="PEM certificate chain for a C2PA manifest in every image (with --sign-key)."),
    sign_key: Optional[Path] = typer.Option(None, "--sign-key", help="PEM private key (ES256) of --sign-cert."),
) -> None:
    """Serve trained runs over HTTP with an OpenAI-compatible API and a web playground.

    Routes: GET / (playground), GET /v1/models, POST /v1/completions (text; stream=true for server-sent
    events), POST /v1/images/generations (images as base64 PNG), GET /healthz, /readyz, /metrics
    (Prometheus), /docs (OpenAPI). Concurrent requests for a model are batched; SIGTERM drains requests in
    flight before exiting. Needs the `serve` extra: pip install 'genforge[serve]'.
    """
    try:
        from genforge.serving.app import ServeSettings
        from genforge.serving.server import parse_models, serve as run_server
    except ImportError as e:
        raise UserError(f"`genforge serve` needs the serve extra ({e.name} is missing). Fix: pip install "
                        "'genforge[serve]'.") from None
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key_file and not os.environ.get("GENFORGE_API_KEYS"):
        err.print(f"[yellow]warning:[/] serving on {host} without API keys: anyone who can reach this port can "
                  "use the models. Set --api-key-file.", highlight=False, soft_wrap=True)
    _signer(sign_cert, sign_key, False)  # checked here: a bad certificate is a startup error, not a 500 later
    if mark_key is not None:
        from genforge.media.watermark import KEY_FILE_ENV, KeyError_, read_key

        try:
            read_key(mark_key)
        except KeyError_ as e:
            raise UserError(str(e)) from None
        os.environ[KEY_FILE_ENV] = str(mark_key.resolve())  # the worker processes read it too
    settings = ServeSettings(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, timeout_s=timeout,
                             max_tokens=max_tokens, max_images=max_images, max_image_calls=max_image_calls,
                             mark=not no_mark, sign_cert=str(sign_cert) if sign_cert else None,
                             sign_key=str(sign_key) if sign_key else None)
    run_server(parse_models(runs), host=host, port=port, workers=workers, precision=precision, settings=settings,
               api_key_file=str(api_key_file) if api_key_file else None, log_level=log_level)


def _note(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings (an input converted to the model's size, ...) as one line, no source location."""
    err.print(f"note: {message}", highlight=False, soft_wrap=True)


def main() -> None:
    import warnings

    warnings.showwarning = _note
    app()


if __name__ == "__main__":
    sys.exit(main())
