"""`genforge edit` (inpainting), `genforge vary` (variations, image-to-image) and `genforge upscale`
(super-resolution): a picture in, edited pictures out, through a run directory or its export, with the same
outputs, marks and provenance as `genforge sample` (an edit's record says "edited" and names its source image)."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Optional

import typer

from genforge.cli.common import (
    FORMAT,
    IMAGE_SUFFIXES,
    MARK_KEY,
    NO_MARK,
    NO_METADATA,
    QUALITY,
    SIGN_CERT,
    SIGN_KEY,
    app,
    err,
    image_output,
    load_model,
    out,
    user_errors,
)
from genforge.errors import UserError

RUN = typer.Argument(..., help="A run directory (`genforge train`) or its export (`genforge export`: edited without "
                               "torch). Diffusion and VAE runs inpaint and vary; a super-resolution run (the mnist-sr, "
                               "cifar10-sr-cpu presets) upscales; GANs cannot edit (no encoder; inversion not built).")
IN = typer.Option(..., "--in", help="The image: PNG, JPEG or WebP. An RGBA image's alpha is not part of the picture. "
                                    "Another size or colour mode than the model's is converted (Lanczos, luma) with a "
                                    "one-line note; a different aspect ratio is refused (crop it first).")
OUT = typer.Option(..., "--out", help="x.png, x.jpg or x.webp: the result (a grid when there are several); x.npy: "
                                      "the uint8 array (N, H, W, C); a folder/: one file per result (--format).")
N = typer.Option(1, "--n", help="Results per input image (each drawn with its own noise).")
SEED = typer.Option(None, "--seed", help="Random seed: the same seed, input and options give the same results.")
LABEL = typer.Option(None, "--label", help="Class-conditional runs: the class of the result (index or name, e.g. 7 "
                                           "or Sneaker). Diffusion without it: unconditional; a conditional VAE needs it.")
SAMPLER = typer.Option(None, "--sampler", help="Diffusion: ddpm, ddim, dpmpp2m or unipc (default: the model's).")
STEPS = typer.Option(None, "--steps", help="Diffusion: sampler steps over the whole schedule (default: the sampler's).")
ETA = typer.Option(None, "--eta", help="Diffusion, ddim: 0 deterministic .. 1 as noisy as DDPM.")
GUIDANCE = typer.Option(None, "--guidance", help="Conditional diffusion: classifier-free guidance towards --label.")
TEMPERATURE = typer.Option(None, "--temperature", help="VAE: scale of the latent noise.")
GRID = typer.Option(None, "--grid", help="Also write a before/after picture (.png, .jpg or .webp): the input, then "
                                         "the results, enlarged for viewing.")
SELECT = typer.Option(None, "--select", help="Run directories: best or last weights (default: best when kept).")
PRECISION = typer.Option("auto", "--precision", help="Run directories: auto (time fp32 and bf16 here, keep the "
                                                     "faster; cached), no (fp32), bf16 or fp16. The kept pixels of an "
                                                     "inpainting come back exactly in every precision.")
NO_PROGRESS = typer.Option(False, "--no-progress", help="No progress bar.")


@app.command()
@user_errors
def edit(
    run_dir: Path = RUN, in_path: Path = IN,
    mask: Optional[Path] = typer.Option(None, "--mask", help="Where to edit. By default an alpha mask, OpenAI's "
                                        "convention: a PNG that is transparent (alpha < 128) where the image is to be "
                                        "filled and opaque where it is kept. Without --mask, the --in image's own "
                                        "transparent pixels are the mask."),
    bw_mask: bool = typer.Option(False, "--bw-mask", help="--mask is black and white instead: white (luma >= 128) "
                                 "where to edit, black where to keep (diffusers', LaMa's and most paint tools' masks)."),
    out_arg: str = OUT, n: int = N, seed: Optional[int] = SEED, label: Optional[str] = LABEL,
    sampler: Optional[str] = SAMPLER, steps: Optional[int] = STEPS, eta: Optional[float] = ETA,
    guidance: Optional[float] = GUIDANCE, temperature: Optional[float] = TEMPERATURE,
    jump: Optional[int] = typer.Option(None, "--jump", help="Diffusion (RePaint): sampler steps per block that is "
                                                            "walked again (default 5)."),
    resample: Optional[int] = typer.Option(None, "--resample", help="Diffusion (RePaint): walks per block; 1 only puts "
                                           "the known pixels back after each step; network calls are steps x resample "
                                           "(default 2)."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="VAE: encode-decode rounds that refill the "
                                                                        "masked region (default 30)."),
    grid: Optional[Path] = GRID, select: Optional[str] = SELECT, precision: str = PRECISION,
    no_progress: bool = NO_PROGRESS, fmt: Optional[str] = FORMAT, quality: Optional[int] = QUALITY,
    mark_key: Optional[Path] = MARK_KEY, no_mark: bool = NO_MARK, no_metadata: bool = NO_METADATA,
    sign_cert: Optional[Path] = SIGN_CERT, sign_key: Optional[Path] = SIGN_KEY,
):
    """Inpaint: fill the masked region of an image, keep the rest.

    Mask convention: transparent = edit (an alpha mask, OpenAI's; the default), or with --bw-mask white = edit and
    black = keep. Diffusion runs use RePaint (each sampler step puts the known pixels back at the step's noise
    level; --jump/--resample walk blocks of steps again so the fill agrees with them) with any --sampler and
    --steps; VAE runs refill the masked region by encoding and decoding (--iterations), which completes the shape
    the model knows but not detail it never learned. The kept pixels come back exactly (before the invisible mark,
    which covers the whole image). --grid writes input | mask (red) | results."""
    options = {"sampler": sampler, "steps": steps, "eta": eta, "guidance": guidance, "temperature": temperature,
               "jump": jump, "resample": resample, "iterations": iterations}
    job = _Edit("inpaint", run_dir, in_path, select, precision)
    if mask is None and bw_mask:
        raise UserError("--bw-mask describes the --mask file; give --mask MASK (white = edit, black = keep).")
    from genforge.media.masks import has_transparency, read_mask

    if mask is not None:
        kind = "white" if bw_mask else "alpha"
        edit_mask = read_mask(mask, kind)
    elif has_transparency(job.data):
        kind, edit_mask = "input alpha", read_mask(job.data, "alpha")
        err.print(f"note: no --mask: editing the transparent pixels of {in_path.name}", highlight=False, soft_wrap=True)
    else:
        raise UserError(f"Inpainting needs a mask: --mask MASK (a PNG transparent where to edit; --bw-mask for white = "
                        f"edit), or an --in image with transparent pixels ({in_path.name} has none).")
    (h, w), (mh, mw) = job.image.shape[:2], edit_mask.shape
    if (mh, mw) != (h, w) and mh * w != mw * h:
        raise UserError(f"The mask is {mw}x{mh} but the image is {w}x{h}: draw the mask on the image's canvas.")
    job.output(out_arg, grid, fmt, quality, mark_key, no_mark, no_metadata, sign_cert, sign_key)
    result = job.run(n, seed, label, options, no_progress, masks=edit_mask)
    job.write(result, n, seed, label, {"mask": kind})
    if grid is not None:
        overlay = _overlay(job.model_size(), _model_mask(edit_mask, job.model.image_shape))
        job.grid(grid, [job.model_size(), overlay, *result], "input | mask (red) | results")


@app.command()
@user_errors
def vary(
    run_dir: Path = RUN, in_path: Path = IN,
    strength: Optional[float] = typer.Option(None, "--strength", help="How far from the input, 0 (the input itself) "
                                             "..1 (ignores it). Diffusion (SDEdit): noised to t = strength x T, then "
                                             "sampled back (default 0.6); VAE: drawn around the input's posterior "
                                             "mean (default 0.3)."),
    out_arg: str = OUT, n: int = N, seed: Optional[int] = SEED, label: Optional[str] = LABEL,
    sampler: Optional[str] = SAMPLER, steps: Optional[int] = STEPS, eta: Optional[float] = ETA,
    guidance: Optional[float] = GUIDANCE, temperature: Optional[float] = TEMPERATURE,
    grid: Optional[Path] = GRID, select: Optional[str] = SELECT, precision: str = PRECISION,
    no_progress: bool = NO_PROGRESS, fmt: Optional[str] = FORMAT, quality: Optional[int] = QUALITY,
    mark_key: Optional[Path] = MARK_KEY, no_mark: bool = NO_MARK, no_metadata: bool = NO_METADATA,
    sign_cert: Optional[Path] = SIGN_CERT, sign_key: Optional[Path] = SIGN_KEY,
):
    """Variations of an image (image-to-image): --n results that keep its layout and change its details, more so at
    a higher --strength. With a conditional run, --label steers them towards a class. --grid writes input | results."""
    options = {"sampler": sampler, "steps": steps, "eta": eta, "guidance": guidance, "temperature": temperature,
               "strength": strength}
    job = _Edit("vary", run_dir, in_path, select, precision)
    job.output(out_arg, grid, fmt, quality, mark_key, no_mark, no_metadata, sign_cert, sign_key)
    result = job.run(n, seed, label, options, no_progress)
    job.write(result, n, seed, label)
    if grid is not None:
        job.grid(grid, [job.model_size(), *result], "input | results")


@app.command()
@user_errors
def upscale(
    run_dir: Path = RUN, in_path: Path = IN, out_arg: str = OUT, n: int = N, seed: Optional[int] = SEED,
    label: Optional[str] = LABEL, sampler: Optional[str] = SAMPLER, steps: Optional[int] = STEPS,
    eta: Optional[float] = ETA,
    consistent: Optional[bool] = typer.Option(None, "--consistent/--no-consistent", help="--consistent (default): "
                                              "each step takes its block averages from the input (DDNM), so the "
                                              "result downsampled is the input; --no-consistent: SR3's plain "
                                              "conditional sampling."),
    grid: Optional[Path] = typer.Option(None, "--grid", help="Also write a comparison picture (.png, .jpg, .webp): "
                                        "the input enlarged (nearest) | Pillow bicubic | the model's results."),
    select: Optional[str] = SELECT, precision: str = PRECISION, no_progress: bool = NO_PROGRESS,
    fmt: Optional[str] = FORMAT, quality: Optional[int] = QUALITY, mark_key: Optional[Path] = MARK_KEY,
    no_mark: bool = NO_MARK, no_metadata: bool = NO_METADATA, sign_cert: Optional[Path] = SIGN_CERT,
    sign_key: Optional[Path] = SIGN_KEY,
):
    """Super-resolution with a run trained for it (model.upscale_from: mnist-sr 14->28, cifar10-sr-cpu 16->32): a
    low-resolution image in, the model's size out. A full-size input is area-downsampled first, as the training
    inputs were. Always reported beside Pillow's bicubic: the consistency PSNR of each (its output area-downsampled
    against the input; higher is closer, bicubic is blurred but rarely inconsistent)."""
    import numpy as np
    from PIL import Image

    from genforge.edits import area_downsample
    from genforge.media.watermark import psnr

    job = _Edit("upscale", run_dir, in_path, select, precision)
    job.output(out_arg, grid, fmt, quality, mark_key, no_mark, no_metadata, sign_cert, sign_key)
    result = job.run(n, seed, label, {"sampler": sampler, "steps": steps, "eta": eta, "consistent": consistent},
                     no_progress)
    job.write(result, n, seed, label)
    low = job.low_res_input()
    h, w, c = job.model.image_shape
    pil = Image.fromarray(low[..., 0] if c == 1 else low).resize((w, h), Image.Resampling.BICUBIC)
    bicubic = np.asarray(pil).reshape(h, w, c)
    side = low.shape[0]
    model_db = [psnr(area_downsample(r[None], side)[0], low) for r in result]
    bicubic_db = psnr(area_downsample(bicubic[None], side)[0], low)
    out.print(f"consistency PSNR (result area-downsampled to {side}x{side} vs the input): model "
              f"{_db(sum(model_db) / len(model_db))}{f' (mean of {n})' if n > 1 else ''}, bicubic {_db(bicubic_db)}",
              highlight=False, soft_wrap=True)
    if grid is not None:
        nearest = low.repeat(h // side, 0).repeat(w // side, 1)
        job.grid(grid, [nearest, bicubic, *result], "input (nearest) | bicubic | model")


class _Edit:
    """One edit command's run: the model, its input image (and the file's bytes for the provenance), the result."""

    def __init__(self, task: str, run_dir: Path, in_path: Path, select: str | None, precision: str):
        self.task, self.in_path = task, in_path
        self.model = load_model(run_dir, select, precision)
        if getattr(self.model, "modality", "image") != "image" or not hasattr(self.model, "edit_options"):
            raise UserError(f"{run_dir} is a {self.model.modality} model; `genforge {task}` takes an image model (a "
                            "diffusion or VAE run; for upscale a super-resolution run).")
        self.known = self.model.edit_options(task)  # a GAN, or the wrong kind of run: the library's refusal
        self.image, self.data, self.mime = _read_input(in_path)
        self.options: dict = {}

    def run(self, n: int, seed, label, options: dict, no_progress: bool, masks=None):
        given = {k: v for k, v in options.items() if v is not None}
        foreign = [k for k in given if k not in self.known]
        if foreign:
            family = self.model.meta.get("family", "?")
            raise UserError(f"{', '.join(_flag(k) for k in foreign)}: not an option of {self.task} with this {family} "
                            f"model (its options: {', '.join(_flag(k) for k in self.known) or 'none'}).")
        self.options = given
        with _progress(not no_progress, n, self.task) as progress:
            kwargs = dict(n=n, seed=seed, labels=label, progress=progress, **given)
            if self.task == "inpaint":
                return self.model.inpaint(self.image, masks, **kwargs)
            return getattr(self.model, self.task)(self.image, **kwargs)

    def output(self, out_arg: str, grid, fmt, quality, mark_key, no_mark, no_metadata, sign_cert, sign_key) -> None:
        """Check the output flags and set the mark key, before the edit runs (the model marks what it renders)."""
        if grid is not None and grid.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserError(f"--grid must end in .png, .jpg or .webp; got '{grid}'.")
        self.out_arg, self.quality, self.metadata = out_arg, quality, not no_metadata
        self.signer, self.fmt = image_output(self.model, out_arg, fmt, quality, mark_key, no_mark, sign_cert, sign_key,
                                             no_metadata)

    def write(self, result, n: int, seed, label, extra: dict | None = None) -> None:
        """The results through media.write_images, each recorded as an edit of the input file."""
        from genforge.media import write_images

        self.record = None
        if self.metadata:
            self.record = self.model.record(seed, task=self.task, n=n, label=label, input=self.in_path.name,
                                            **(extra or {}), **self.options).edited_from(self.data, self.in_path.name,
                                                                                         self.mime)
        try:
            out.print(write_images(result, self.out_arg, self.record, None, self.signer, self.fmt, self.quality,
                                   sources=[self.data]), highlight=False, soft_wrap=True)
        except ValueError as e:  # a certificate c2pa refuses
            raise UserError(str(e)) from None

    def model_size(self):
        """The input as the model saw it (its size and colour mode), for the before/after picture."""
        import genforge.edits as edits

        h, w, c = self.model.image_shape
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return edits.conform(edits.as_batch(self.image), h, w, c)[0]

    def low_res_input(self):
        """An upscale's input as the model saw it: at its low resolution (a full-size image area-downsampled)."""
        import genforge.edits as edits

        h, w, c = self.model.image_shape
        side = self.model.low_res
        x = edits.as_batch(self.image)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if x.shape[1:3] == (h, w) and side != h:
                x = edits.area_downsample(edits.conform(x, h, w, c), side)
            return edits.conform(x, side, side, c)[0]

    def grid(self, path: Path, tiles: list, what: str) -> None:
        import numpy as np

        from genforge.media import save_grid

        tiles = [np.repeat(t, 3, -1) if t.shape[-1] == 1 else t for t in tiles]
        colour = any(not np.array_equal(t[..., 0], t[..., 1]) for t in tiles)
        tiles = np.stack([t if colour else t[..., :1] for t in tiles])
        scale = max(1, 96 // tiles.shape[1])
        save_grid(tiles, path, nrow=min(len(tiles), 10), scale=scale, record=self.record, signer=self.signer,
                  sources=[self.data])
        out.print(f"wrote {path} ({what})", highlight=False, soft_wrap=True)


def _read_input(path: Path):
    """(uint8 (H, W, C) pixels without alpha, the file's bytes, its MIME type) of a PNG, JPEG or WebP file."""
    from genforge.media.images import MIME, decode

    if not path.is_file():
        raise UserError(f"--in {path}: no such file.")
    data = path.read_bytes()
    try:
        pixels, _, fmt = decode(data)
    except ValueError as e:
        raise UserError(f"--in {path}: {e}.") from None
    if fmt not in MIME:
        raise UserError(f"--in {path} is a {fmt} image; give a PNG, JPEG or WebP.")
    return pixels, data, MIME[fmt]


def _model_mask(mask, image_shape):
    import genforge.edits as edits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return edits.as_masks(mask, 1, image_shape[0], image_shape[1])[0]


def _overlay(image, mask):
    """The image in colour with the region to edit tinted red."""
    import numpy as np

    rgb = np.repeat(image, 3, -1) if image.shape[-1] == 1 else image.copy()
    red = np.array([255, 0, 0], dtype=np.float32)
    rgb[mask] = (0.45 * rgb[mask].astype(np.float32) + 0.55 * red).astype(np.uint8)
    return rgb


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _db(value: float) -> str:
    return "exact (inf dB)" if value == float("inf") else f"{value:.2f} dB"


@contextlib.contextmanager
def _progress(enabled: bool, n: int, verb: str):
    """A bar over the network calls of a multi-step sampler, with their rate; one-pass families never call it."""
    if not enabled or not err.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.1f} steps/s" if task.speed else "")

    bar = Progress(TextColumn(f"[bold]{verb}[/] {n} image{'s' if n > 1 else ''}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("steps"), Rate(), TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(),
                   console=err, transient=True)
    task = None

    def progress(done: int, total: int):
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(verb, total=total)
        bar.update(task, completed=done, total=total)

    try:
        yield progress
    finally:
        bar.stop()
