"""`genforge sample` (images, text; audio in cli/speech.py, video in cli/video.py) and `genforge reconstruct`."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import typer

from genforge.cli.common import app, err, leave_distributed, out, signer_from, user_errors
from genforge.errors import UserError
from genforge.labels import cycle_labels


@app.command()
@user_errors
def sample(
    run_dir: Path = typer.Argument(..., help="A run directory written by `genforge train`, or an export directory "
                                             "written by `genforge export` (sampled without torch, on onnxruntime)."),
    n: Optional[int] = typer.Option(None, "--n", help="How many images (default 64), texts (default 1), audio clips (default 8) or video clips (default 4)."),
    out_arg: Optional[str] = typer.Option(None, "--out", help="Images (required): x.png: one grid; x.npy: uint8 array (N, H, W, C); a folder (existing or ending in /): one PNG each. Audio: x.wav/.flac/.mp3, a folder/, x.png (spectrograms). Video: x.mp4/.webp/.gif/.apng (numbered when several), a folder/ (one MP4 each), x.png (a filmstrip), x.npy. Text: a file to write instead of printing."),
    label_list: List[str] = typer.Option([], "--label", help="Class to generate (index or name, e.g. 7 or Sneaker); conditional image, audio and video models. Repeat it for several classes in turn (--label 3 --label 7 --n 4: 3, 7, 3, 7)."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Video models: frames per clip (default: the length the model was trained on)."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Video models: playback rate of the written clips (default: the model's)."),
    scale: Optional[int] = typer.Option(None, "--scale", help="Video models: enlarge the written clips and filmstrips this many times (nearest neighbour), for viewing small frames. Default: MP4 frames at least 64 px a side (the keyed mark then survives a re-encode at crf 28), 1 for other formats."),
    speaker: Optional[str] = typer.Option(None, help="Audio models trained with speakers: the voice (a speaker's name or index; default: drawn per clip)."),
    seed: Optional[int] = typer.Option(None, help="Random seed for reproducible samples."),
    nrow: Optional[int] = typer.Option(None, help="Images per grid row (default: square grid)."),
    select: Optional[str] = typer.Option(None, help="best: weights with the best in-training score (FID, validation loss); last: the final weights. Default: best when the run kept one."),
    prompt: Optional[str] = typer.Option(None, help="Text models: the text to continue (default: a newline). Music models: ABC header fields in any order, e.g. 'M:6/8\\nK:Dmix\\nR:jig' (default: none; the model chooses), or the start of a piece."),
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
    fmt: Optional[str] = typer.Option(None, "--format", help="Files written to a folder: images png (default), jpeg or webp (a grid's format is its --out suffix: .png, .jpg, .webp); audio wav (default), flac or mp3; video mp4 (default), webp, gif or apng; music a comma list of abc, musicxml, mid, wav, flac, mp3, png (default abc,mid,wav,png; events musicxml,mid,wav,png)."),
    keep_invalid: bool = typer.Option(False, "--keep-invalid", help="Music models: keep pieces that do not parse or whose bars do not fit the metre (by default they are dropped, counted and redrawn)."),
    soundfont: Optional[Path] = typer.Option(None, "--soundfont", help="Music models: the SF2 soundfont that renders .wav files (default: the General MIDI TimGM6mb that ships with pretty_midi)."),
    quality: Optional[int] = typer.Option(None, help="JPEG and WebP quality, 1-100 (WebP 100 is lossless). Default: JPEG 100 and lossless WebP, which keep the invisible mark through a later JPEG-75 re-encode (JPEG 95 written: 91-94% kept; lossy WebP removes it)."),
    mark_key: Optional[Path] = typer.Option(None, "--mark-key", help="Key file of the invisible mark (default: $GENFORGE_MARK_KEY_FILE or $GENFORGE_MARK_KEY). Create one with `genforge keygen`."),
    no_mark: bool = typer.Option(False, "--no-mark", help="Do not apply the invisible mark, even when a key is set."),
    noise_mark: Optional[bool] = typer.Option(None, "--noise-mark/--no-noise-mark", help="Diffusion image models: plant the keyed noise mark in the starting noise (read back by `genforge verify --model RUN`), or not. Default: the run's model.noise_mark. Needs a mark key."),
    no_metadata: bool = typer.Option(False, "--no-metadata", help="Write files without provenance metadata (XMP, sidecar) or C2PA manifest."),
    sign_cert: Optional[Path] = typer.Option(None, "--sign-cert", help="PEM certificate chain (signer first) for a C2PA manifest in every image; needs --sign-key and the provenance extra."),
    sign_key: Optional[Path] = typer.Option(None, "--sign-key", help="PEM private key (ES256, P-256) of --sign-cert."),
    drop_copies: bool = typer.Option(False, "--drop-copies", help="Images: drop (and redraw) samples that are near-copies of training images (the memorization test of `genforge eval`, per sample)."),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", help="Images: drop (and redraw) samples the dataset's evaluator classifies with less than this probability (of the asked class, for conditional models), e.g. 0.9."),
    resize: Optional[int] = typer.Option(None, "--resize", help="Images: resize for display (Lanczos) so the longer side has this many pixels; the mark is applied after resizing."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Dataset folder, for --drop-copies and --min-confidence (the evaluator and training features)."),
):
    """Generate images, text, audio or video clips from a trained run.

    Image models: a grid, an array or PNG files; --label for conditional models; --temperature scales a
    VAE's prior; --sampler, --steps, --eta and --guidance choose how a diffusion model samples;
    --interpolate A B walks between two seeds or two images. Text models: --prompt and the sampling options.
    Audio models (speech): WAV/FLAC/MP3 files (x.wav, or a folder/ for one per clip) or x.png, a grid of their
    spectrograms; --label picks the digit, --speaker the voice.
    Music models: whole tunes (stopped at the blank line that ends one), checked (they parse, their bars fit the
    metre) and redrawn when they fail; printed, or written by --out (a folder/: .abc or .musicxml, .mid, .wav and a
    piano-roll .png each; x.mid: one format); --prompt 'M:6/8\\nK:D' asks for a jig in D.
    Video models: clips as MP4 (H.264), animated WebP, GIF or APNG by the --out extension (a folder/: one MP4
    each), or x.png, a filmstrip (frames across, clips down); --frames and --fps set length and playback rate.
    An export directory (`genforge export`) is sampled by the torch-free runtime: torch is not imported.

    Every file carries its provenance (IPTC DigitalSourceType trainedAlgorithmicMedia in XMP for images, a
    .json sidecar for text: model, weights hash, seed, options), and, with a mark key, an invisible keyed mark
    that `genforge verify --key` finds after the metadata is stripped; --sign-cert/--sign-key add a signed C2PA
    manifest."""
    from genforge.runtime import is_export

    label = label_list[0] if len(label_list) == 1 else (label_list or None)  # one class, or several in turn
    exported = is_export(run_dir)
    if exported:
        from genforge.runtime import load as load_export

        misused = [name for name, v in {"--select": select, "--interpolate": interpolate}.items() if v]
        if misused or precision != "auto":
            raise UserError(f"{', '.join(misused) or '--precision'} applies to run directories; {run_dir} is an "
                            "export (fp32 on onnxruntime, its weights chosen at export time).")
        model = load_export(run_dir)
    else:
        from genforge.artifacts import load

        model = load(run_dir, select=select, precision=precision)
    model.use_mark_key(False if no_mark else mark_key)
    if noise_mark is not None:
        if noise_mark and (model.meta.get("family") != "diffusion" or model.modality != "image"):
            raise UserError(f"--noise-mark applies to diffusion image models; {run_dir} is a "
                            f"{model.meta.get('family', '?')} {model.modality} model.")
        model.use_noise_mark(noise_mark)
    signer = signer_from(sign_cert, sign_key, no_metadata)
    if model.mark_key is None and not no_mark and out_arg is not None:  # not over text printed to the terminal
        err.print("note: no mark key, so the outputs carry metadata but no invisible mark; set --mark-key or "
                  "GENFORGE_MARK_KEY_FILE (create a key with `genforge keygen KEYFILE`), or pass --no-mark.",
                  highlight=False, soft_wrap=True)
    text_opts = {"--prompt": prompt, "--max-new-tokens": max_new_tokens, "--temperature": temperature,
                 "--top-k": top_k, "--top-p": top_p, "--stop": stop or None}
    if model.modality == "music":
        from genforge.cli.compose import sample_music

        misused = [name for name, v in {"--label": label, "--nrow": nrow, "--sampler": sampler, "--steps": steps,
                                        "--eta": eta, "--guidance": guidance, "--stop": stop or None}.items()
                   if v is not None]
        if misused:
            raise UserError(f"{', '.join(misused)} does not apply to music models; {run_dir} composes music. "
                            "Use --prompt (header fields such as 'M:6/8\\nK:D'), --n, --max-new-tokens, "
                            "--temperature, --top-k, --top-p, --keep-invalid, --soundfont, --format.")
        formats = tuple(f.strip() for f in fmt.split(",") if f.strip()) if fmt else None
        sample_music(model, n, out_arg, prompt, max_new_tokens, temperature, top_k, top_p, seed, keep_invalid,
                     str(soundfont) if soundfont else None, formats, signer, not no_metadata)
        return
    if keep_invalid or soundfont is not None:
        raise UserError(f"--keep-invalid and --soundfont apply to music models; {run_dir} is {'an' if model.modality[0] in 'aeiou' else 'a'} {model.modality} model.")
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
    if model.modality != "video" and (frames is not None or fps is not None or scale is not None):
        raise UserError("--frames, --fps and --scale apply to video models; "
                        f"{run_dir} is {'an' if model.modality[0] in 'aeiou' else 'a'} {model.modality} model.")
    if model.modality == "video":
        from genforge.cli.video import sample_video

        foreign = [f"--{k}" for k, v in {**family_opts, "speaker": speaker, "top_k": top_k, "top_p": top_p,
                                         "prompt": prompt, "max_new_tokens": max_new_tokens,
                                         "interpolate": interpolate}.items()
                   if v is not None and k not in image_opts]
        if foreign:
            raise UserError(f"{', '.join(foreign)}: not an option of this video model (its options: "
                            f"{', '.join('--' + o for o in model.options())}).")
        if frames is not None:
            image_opts["frames"] = frames
        sample_video(model, n, out_arg, label, seed, fps, scale, fmt or "png", image_opts, signer, not no_metadata,
                     not no_progress)
        return
    if model.modality == "audio":
        from genforge.cli.speech import sample_audio

        foreign = [f"--{k}" for k, v in {**family_opts, "top_k": top_k, "top_p": top_p, "prompt": prompt,
                                         "max_new_tokens": max_new_tokens, "interpolate": interpolate}.items()
                   if v is not None and k not in image_opts]
        if foreign:
            raise UserError(f"{', '.join(foreign)}: not an option of this audio model"
                            + (f" (its options: {', '.join('--' + o for o in model.options())})." if model.options()
                               else "; it takes --n, --seed, --label and --speaker."))
        sample_audio(model, n, out_arg, cycle_labels(label, n or 8), speaker, seed, nrow, fmt or "wav", image_opts,
                     signer, not no_metadata)
        return
    if speaker is not None:
        raise UserError("--speaker applies to audio models trained with speakers.")
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
    label = cycle_labels(label, n)
    out_path = Path(out_arg)  # kept as text first: Path() drops the trailing slash that means "a folder"
    as_dir = out_arg.endswith(("/", "\\")) or out_path.is_dir()
    if not as_dir and out_path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".npy"):
        raise UserError(f"--out must end in .png, .jpg or .webp (a grid), .npy (array) or / (one file per sample); "
                        f"got '{out_path}'.")
    fmt = fmt or "png"
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
        unused = sorted(k for k in image_opts if k in ("sampler", "steps", "eta"))
        if unused:  # a walk decodes each latent with the model's deterministic default sampler
            raise UserError(f"--interpolate decodes with the model's own sampler; drop "
                            f"{', '.join('--' + k for k in unused)} (--walk-steps sets the number of images).")
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
            leave_distributed()
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
    leave_distributed()


@contextlib.contextmanager
def _sampling_progress(enabled: bool, n: int, what: str = "images"):
    """A bar over the network calls of a multi-step sampler (diffusion); families that sample in one pass never call it."""
    if not enabled or not err.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn(f"[bold]sample[/] {n} {what}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
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

    from genforge.artifacts import load
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
