"""What every command module shares: the Typer apps, the consoles, and how user mistakes are reported."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from genforge.errors import UserError

app = typer.Typer(
    help="genforge: train, sample and inspect generative models (GANs, VAEs, diffusion, language models, speech, video).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # Markdown, not Rich markup, which would swallow the [serve] of pip install 'genforge[serve]'
)
data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True, rich_markup_mode="markdown")
app.add_typer(data_app, name="data")
evaluator_app = typer.Typer(help="Evaluator networks (classifiers trained on real data) used by `genforge eval`.",
                            no_args_is_help=True, rich_markup_mode="markdown")
app.add_typer(evaluator_app, name="evaluator")
out = Console()
err = Console(stderr=True)


def leave_distributed() -> None:
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
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper



def signer_from(cert: Path | None, key: Path | None, no_metadata: bool):
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


def note(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings (an input converted to the model's size, ...) as one line, no source location."""
    err.print(f"note: {message}", highlight=False, soft_wrap=True)



# -- what every command that writes images takes (edit, vary, upscale; `sample` spells the same flags out) -------
FORMAT = typer.Option(None, "--format", help="Files written to a folder/: png (default), jpeg or webp (one file's "
                                             "format is its --out suffix: .png, .jpg, .webp).")
QUALITY = typer.Option(None, "--quality", help="JPEG and WebP quality, 1-100 (WebP 100 is lossless). Default: JPEG "
                                               "100 and lossless WebP, which keep the invisible mark through a later "
                                               "JPEG-75 re-encode.")
MARK_KEY = typer.Option(None, "--mark-key", help="Key file of the invisible mark (default: $GENFORGE_MARK_KEY_FILE or "
                                                 "$GENFORGE_MARK_KEY). Create one with `genforge keygen`.")
NO_MARK = typer.Option(False, "--no-mark", help="Do not apply the invisible mark, even when a key is set.")
NO_METADATA = typer.Option(False, "--no-metadata", help="Write files without provenance metadata (XMP) or C2PA "
                                                        "manifest.")
SIGN_CERT = typer.Option(None, "--sign-cert", help="PEM certificate chain (signer first) for a C2PA manifest in every "
                                                   "image; needs --sign-key and the provenance extra.")
SIGN_KEY = typer.Option(None, "--sign-key", help="PEM private key (ES256, P-256) of --sign-cert.")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def load_model(run_dir: Path, select: str | None = None, precision: str = "auto"):
    """A run directory (`genforge.load`, torch) or an export directory (the torch-free runtime)."""
    from genforge.runtime import is_export

    if is_export(run_dir):
        if select is not None or precision not in ("auto", "no"):
            raise UserError(f"--select and --precision apply to run directories; {run_dir} is an export (fp32 on "
                            "onnxruntime, its weights chosen at export time).")
        from genforge.runtime import load as load_export

        return load_export(run_dir)
    from genforge.artifacts import load

    return load(run_dir, select=select, precision=precision)


def image_output(model, out_arg: str, fmt: str | None, quality: int | None, mark_key: Path | None, no_mark: bool,
                 sign_cert: Path | None, sign_key: Path | None, no_metadata: bool):
    """Check an image command's output flags, set the model's mark key and note a missing one; returns
    (the C2PA signer or None, the folder format)."""
    out_path = Path(out_arg)
    as_dir = out_arg.endswith(("/", "\\")) or out_path.is_dir()
    if not as_dir and out_path.suffix.lower() not in IMAGE_SUFFIXES + (".npy",):
        raise UserError(f"--out must end in .png, .jpg or .webp (one image, or a grid of several), .npy (array) or / "
                        f"(one file each); got '{out_path}'.")
    fmt = (fmt or "png").lower()
    if fmt not in ("png", "jpeg", "jpg", "webp"):
        raise UserError(f"--format must be png, jpeg or webp; got '{fmt}'.")
    if quality is not None and not 1 <= quality <= 100:
        raise UserError(f"--quality must be 1-100; got {quality}.")
    model.use_mark_key(False if no_mark else mark_key)
    signer = signer_from(sign_cert, sign_key, no_metadata)
    if model.mark_key is None and not no_mark:
        err.print("note: no mark key, so the outputs carry metadata but no invisible mark; set --mark-key or "
                  "GENFORGE_MARK_KEY_FILE (create a key with `genforge keygen KEYFILE`), or pass --no-mark.",
                  highlight=False, soft_wrap=True)
    return signer, fmt
