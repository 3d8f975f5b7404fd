"""What every command module shares: the Typer apps, the consoles, and how user mistakes are reported."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from genforge.errors import UserError

app = typer.Typer(
    help="genforge: train, sample and inspect generative models (GANs, VAEs, diffusion, language models, speech, video).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
evaluator_app = typer.Typer(help="Evaluator networks (classifiers trained on real data) used by `genforge eval`.",
                            no_args_is_help=True)
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
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
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

