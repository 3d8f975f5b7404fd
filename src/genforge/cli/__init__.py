"""The `genforge` command: parses arguments and calls the library, one module per command group. User mistakes
print one line, no traceback."""

from __future__ import annotations

# importing the command modules registers their commands on `app`
from genforge.cli import training  # noqa: F401,I001  (train, tune)
from genforge.cli import sampling  # noqa: F401  (sample, reconstruct)
from genforge.cli import editing  # noqa: F401  (edit, vary, upscale)
from genforge.cli import speech  # noqa: F401  (speak)
from genforge.cli import music  # noqa: F401  (render)
from genforge.cli import evaluate  # noqa: F401  (eval, evaluator train)
from genforge.cli import export  # noqa: F401
from genforge.cli import serving  # noqa: F401
from genforge.cli import marks  # noqa: F401  (keygen, verify)
from genforge.cli import info  # noqa: F401  (info, presets, data info)
from genforge.cli.common import app, leave_distributed, note

_leave_distributed = leave_distributed  # the name tests/dist_train.py and older scripts import


def main() -> None:
    import warnings

    warnings.showwarning = note
    app()


__all__ = ["app", "main"]
