"""MkDocs hooks: the reference pages are generated from the code at build time, so they cannot go stale.

- reference/cli.md: every command's `--help`, rendered as a user sees it (genforge.cli.helptext);
- reference/config.md: every config key with its type, default and meaning, from the pydantic models;
- reference/presets.md: every preset with its measured figures (docs/presets-measured.yaml, copied from
  benchmarks/RESULTS.md); a preset without an entry, or an entry without a preset, fails the strict build;
- benchmarks/: the repository's benchmarks folder (RESULTS.md, its grids, clips and JSONs) joins the site, so the
  guides and the gallery link the figures and pictures where they are kept.
"""

from __future__ import annotations

import logging
import sys
import typing
from pathlib import Path

import yaml
from mkdocs.structure.files import File, Files, InclusionLevel
from pydantic import BaseModel

log = logging.getLogger("mkdocs.plugins.genforge")
ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SKIP = {"__pycache__"}


def on_files(files: Files, config) -> Files:
    for name, text in (("reference/cli.md", cli_page()), ("reference/config.md", config_page()),
                       ("reference/presets.md", presets_page())):
        files.append(File.generated(config, name, content=text))
    for path in sorted(BENCHMARKS.rglob("*")):
        if path.is_file() and not SKIP & set(path.parts):
            f = File.generated(config, f"benchmarks/{path.relative_to(BENCHMARKS).as_posix()}", abs_src_path=str(path))
            if f.is_documentation_page() and path.name != "RESULTS.md":
                f.inclusion = InclusionLevel.NOT_IN_NAV  # linked from RESULTS.md, not a page of their own in the nav
            files.append(f)
    return files


# --- commands ---------------------------------------------------------------------------------------------------

def cli_page() -> str:
    from genforge.cli.helptext import command_paths, render_help

    out = ["# Commands\n",
           "Every `genforge` command with its `--help`, rendered from the code when this site was built. "
           "The [guides](../index.md#guides) show them at work.\n"]
    for path in command_paths():
        title = " ".join(("genforge", *path))
        out += [f"## {title}\n", "```text", render_help(path).rstrip(), "```\n"]
    return "\n".join(out)


# --- config keys ------------------------------------------------------------------------------------------------

def _type(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return " or ".join(_type(a) for a in rest) + " or `null`"
    if origin is not None and args:
        return f"`{getattr(origin, '__name__', str(origin))}[{', '.join(_plain(a) for a in args)}]`"
    return f"`{_plain(annotation)}`"


def _plain(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _default(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return f"`{field.default_factory()!r}`"
    d = field.default
    return "`null`" if d is None else f"`{str(d).lower() if isinstance(d, bool) else d}`"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += _rows(annotation, f"{key}.")
            continue
        meaning = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{key}` | {_type(annotation)} | {_default(field)} | {meaning} |")
    return rows


def config_page() -> str:
    from genforge.methods import METHODS
    from genforge.training.config import Config

    head = "| key | type | default | meaning |\n|---|---|---|---|"
    out = ["# Config keys\n",
           "A config (a preset, or your YAML file) has `data`, `train` and a family's `model` keys. Every key below "
           "can be set in the YAML or on the command line with `--set key=value` "
           "(e.g. `--set train.lr=1e-4`); an unknown key is rejected with the valid ones listed. This page is "
           "generated from the pydantic models the configs are validated with. See "
           "[training](../guides/training.md) for how a run uses them.\n",
           "## Run, data and training\n", head,
           *[r for r in _rows(Config, "") if not r.startswith("| `model`")], ""]
    for family, method in METHODS.items():
        out += [f"## `model` keys of the `{family}` family\n",
                (sys.modules[method.__module__].__doc__ or "").strip().split("\n\n")[0].replace("\n", " ") + "\n",
                head,
                *_rows(method.Config, "model."), ""]
    return "\n".join(out)


# --- presets ----------------------------------------------------------------------------------------------------

def presets_page() -> str:
    from genforge.training.config import presets_dir

    measured = yaml.safe_load((Path(__file__).with_name("presets-measured.yaml")).read_text()) or {}
    presets = {}
    for path in sorted(presets_dir().glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        presets[raw["name"]] = raw
    for name in sorted(set(presets) - set(measured)):
        log.warning(f"preset {name} has no entry in docs/presets-measured.yaml (its figures, or why none)")
    for name in sorted(set(measured) - set(presets)):
        log.warning(f"docs/presets-measured.yaml names {name}, which is not a preset")
    out = ["# Presets\n",
           "Every preset `genforge train` takes (`genforge presets` lists them too), with what it was measured to "
           "reach, where and when. The figures are copied from the [benchmark results](../benchmarks/RESULTS.md) "
           "(search it for the section named); a preset's description says how long it trains. Start one with "
           "`genforge train PRESET --out runs/NAME`.\n",
           "| preset | family | data | measured | machine | date | results section |", "|---|---|---|---|---|---|---|"]
    for name, raw in presets.items():
        m = measured.get(name, {})
        cells = [f"`{name}`", raw.get("family", "gan"), f"`{raw.get('data', {}).get('dataset', 'mnist')}`",
                 m.get("figures", ""), m.get("machine", ""), str(m.get("date", "")), m.get("section", "")]
        out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    out += ["", "## What each preset is\n"]
    for name, raw in presets.items():
        out.append(f"- **`{name}`**: {raw.get('description', '').strip()}")
    return "\n".join(out) + "\n"
