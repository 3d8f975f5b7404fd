"""The search space: a YAML mapping from config keys to ranges.

    train.lr: {log_uniform: [1.0e-4, 1.0e-2]}
    train.beta1: {uniform: [0.0, 0.9]}
    model.n_layer: {int: [2, 6]}
    model.g_width: {choice: [64, 128]}
    train.batch_size: {log_int: [16, 256]}

Every key must be a config key of the preset's family (checked with the same schema `--set` uses) and every
range well formed; the error names the key and the valid form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from genforge.errors import UserError

FORMS = {
    "log_uniform": "{log_uniform: [low, high]} with 0 < low < high",
    "uniform": "{uniform: [low, high]} with low < high",
    "int": "{int: [low, high]} with integers low < high",
    "log_int": "{log_int: [low, high]} with integers 0 < low < high",
    "choice": "{choice: [a, b, ...]} with at least two values",
}
VALID = "; ".join(FORMS.values())


def read_space_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--space {path}: no such file. It is YAML: one line per config key, e.g. "
                        "train.lr: {log_uniform: [1.0e-4, 1.0e-2]}.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML ({str(e).splitlines()[0]}).") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{path} must map config keys to ranges, e.g. train.lr: {{log_uniform: [1.0e-4, 1.0e-2]}}.")
    return data


def _distribution(key: str, spec: Any):
    import optuna.distributions as d

    if not isinstance(spec, dict) or len(spec) != 1:
        raise UserError(f"{key}: {spec!r} is not a range. Use one of: {VALID}.")
    (kind, values), = spec.items()
    if kind not in FORMS:
        raise UserError(f"{key}: unknown range kind '{kind}'. Use one of: {VALID}.")
    bad = UserError(f"{key}: {kind} {values!r} is malformed. Use {FORMS[kind]}.")
    if kind == "choice":
        if not isinstance(values, list) or len(values) < 2 or len({repr(v) for v in values}) != len(values):
            raise bad
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            raise bad
        return d.CategoricalDistribution(values)
    if not isinstance(values, list) or len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                    for v in values):
        raise bad
    low, high = values
    if not low < high:
        raise bad
    if kind in ("int", "log_int"):
        if not (float(low).is_integer() and float(high).is_integer()) or (kind == "log_int" and low <= 0):
            raise bad
        return d.IntDistribution(int(low), int(high), log=kind == "log_int")
    if kind == "log_uniform" and low <= 0:
        raise bad
    return d.FloatDistribution(float(low), float(high), log=kind == "log_uniform")


def parse_space(space: str | Path | dict, raw: dict) -> dict[str, Any]:
    """{config key: optuna distribution}; each key and its extreme values checked against `raw`'s schema."""
    from genforge.methods import get_method
    from genforge.training import apply_overrides, validate

    data = read_space_file(space) if not isinstance(space, dict) else space
    model_schema = get_method(raw.get("family", "gan")).Config
    out = {}
    for key, spec in data.items():
        key = str(key)
        dist = _distribution(key, spec)
        probes = dist.choices if hasattr(dist, "choices") else (dist.low, dist.high)
        for value in probes:
            try:
                validate(apply_overrides(raw, [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"],
                                         model_schema))
            except UserError as e:
                raise UserError(f"search space, {key} = {value!r}: {e}") from None
        out[key] = dist
    return out


def base_point(space: dict[str, Any], config) -> dict[str, Any]:
    """The base configuration's own values of the space's keys, for a study to try first (`--start-from-base`):
    its best is then never worse than where the tuning started, up to one run's noise."""
    values = config.model_dump()
    point = {}
    for key, dist in space.items():
        value = values
        for part in key.split("."):
            value = value[part]
        inside = (value in dist.choices) if hasattr(dist, "choices") else (
            isinstance(value, (int, float)) and not isinstance(value, bool) and dist.low <= value <= dist.high)
        if not inside:
            raise UserError(f"--start-from-base: the base configuration has {key} = {value!r}, outside the space's "
                            f"range for it. Widen the range to include it, or leave out --start-from-base.")
        point[key] = value
    return point
