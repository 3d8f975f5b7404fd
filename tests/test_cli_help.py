"""`--help` is rendered as the user sees it: every command renders, and the extras its install hints name
(`pip install 'genforge[serve]'`) survive the rendering intact (Rich markup once swallowed them)."""

import re
import tomllib
from pathlib import Path

import pytest
import typer

from genforge.cli import app
from genforge.cli.common import user_errors
from genforge.cli.helptext import command_paths, render_help
from genforge.errors import UserError

EXTRA = re.compile(r"genforge\[([a-z0-9-]+)\]")
EXTRAS = set(tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def written_help(path: tuple[str, ...]) -> str:
    """The help texts as written in the code: the command's and its parameters'."""
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return " ".join([cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params])


def test_every_command_renders_its_help():
    paths = command_paths()
    assert {("train",), ("serve",), ("export",), ("tune",), ("evaluator", "train")} <= set(paths)
    for path in paths:
        text = render_help(path)
        assert "Usage: genforge" in text, path


@pytest.mark.parametrize("path", [("tune",), ("serve",), ("export",)])
def test_install_hints_name_their_extra(path):
    text = " ".join(render_help(path, width=200).split())
    extras = EXTRA.findall(written_help(path))
    assert extras, f"genforge {' '.join(path)} --help should say which extra it needs"
    for extra in extras:
        assert extra in EXTRAS, f"{extra} is not an extra in pyproject.toml"
        assert f"pip install 'genforge[{extra}]'" in text


def test_no_help_loses_an_extra():
    named = 0
    for path in command_paths():
        text = " ".join(render_help(path, width=200).split())
        assert "'genforge'" not in text, f"genforge {' '.join(path)} --help lost the [extra] of an install hint"
        for extra in EXTRA.findall(written_help(path)):
            named += 1
            assert f"genforge[{extra}]" in text, (path, extra)
    assert named >= 3


def test_error_messages_keep_brackets(capsys):
    @user_errors
    def fails():
        raise UserError("`genforge serve` needs FastAPI: pip install 'genforge[serve]'. See [docs]/serving.")

    with pytest.raises(typer.Exit):
        fails()
    err = " ".join(capsys.readouterr().err.split())
    assert "pip install 'genforge[serve]'" in err and "[docs]/serving" in err

