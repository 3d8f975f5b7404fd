"""Every command's `--help` as the user sees it, for the reference pages (docs/hooks.py) and the tests."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from genforge.cli import app


def command_paths() -> list[tuple[str, ...]]:
    """("train",), ("evaluator", "train"), ...: every command and group, in the order `--help` lists them."""
    paths: list[tuple[str, ...]] = [()]

    def walk(group, prefix: tuple[str, ...]) -> None:  # Typer's groups (its own copy of click's) keep `commands`
        for name, cmd in group.commands.items():
            if not cmd.hidden:
                paths.append(prefix + (name,))
                if hasattr(cmd, "commands"):
                    walk(cmd, prefix + (name,))

    walk(typer.main.get_command(app), ())
    return paths


def render_help(path: tuple[str, ...], width: int = 100) -> str:
    """The text `genforge PATH --help` prints at this terminal width, without colour."""
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(width), "NO_COLOR": "1", "TERM": "dumb"},
                                prog_name="genforge")
    if result.exit_code != 0:
        raise RuntimeError(f"genforge {' '.join(path)} --help failed: {result.output}")
    return "\n".join(line.rstrip() for line in result.output.splitlines()).strip("\n") + "\n"
