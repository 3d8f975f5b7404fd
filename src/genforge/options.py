"""A family's generation options, described so that the CLI, the server, the playground and the torch-free
runtime list and check them without knowing the family (numpy-free, torch-free)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from genforge.errors import UserError


@dataclass(frozen=True)
class SampleOption:
    """One option of a family's generation (`generate(..., name=value)`), described for the CLI, the server
    and the playground, which list and check options without knowing the family."""

    type: type
    default: object
    min: float | None = None
    max: float | None = None
    help: str = ""
    choices: tuple | None = None  # the allowed values, for options that name a thing (a sampler)

    def with_default(self, default) -> "SampleOption":
        return replace(self, default=default)

    def check(self, name: str, value):
        if self.choices is not None:
            if value not in self.choices:
                raise UserError(f"{name}={value!r} is not one of: {', '.join(map(str, self.choices))}.")
            return value
        if self.type is bool and isinstance(value, str):  # a form field or a CLI word
            words = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
            if value.strip().lower() not in words:
                raise UserError(f"{name} must be true or false, got {value!r}.")
            return words[value.strip().lower()]
        try:
            value = self.type(value)
        except (TypeError, ValueError):
            raise UserError(f"{name} must be a {self.type.__name__}, got {value!r}.") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{name} must be a finite number, got {value}.")
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise UserError(f"{name}={value} is out of range: use {self.min}..{self.max}.")
        return value

    def describe(self) -> dict:
        """As `options()` lists it (and an export's config stores it): {type, default, min, max, help[, choices]}."""
        return {"type": self.type.__name__, "default": self.default, "min": self.min, "max": self.max, "help": self.help,
                **({"choices": list(self.choices)} if self.choices is not None else {})}

    @classmethod
    def from_description(cls, d: dict) -> "SampleOption":
        types = {"int": int, "float": float, "str": str, "bool": bool}
        if d.get("type") not in types:
            raise ValueError(f"unknown option type {d.get('type')!r}")
        choices = tuple(d["choices"]) if d.get("choices") is not None else None
        return cls(types[d["type"]], d.get("default"), d.get("min"), d.get("max"), d.get("help", ""), choices)
