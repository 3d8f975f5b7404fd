"""What every generator of a run directory shares: the precision generation runs in, chosen at load time,
and (through Marking) the mark key and provenance record of its outputs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import torch

import genforge.precision as prec
from genforge.marking import Marking

WEIGHTS_FILE = "model.safetensors"


def _network_shapes(net: torch.nn.Module) -> list:
    return [[k, list(p.shape)] for k, p in net.named_parameters()]


class _Generator(Marking, ABC):
    """What image and text generators share: the precision generation runs in, chosen at load time.

    `auto` times one unit of generation (a batch of images, a short run of decode steps) in each
    precision this device runs fast and keeps the faster, fp32 on a near tie (genforge.precision);
    the verdict is cached per machine and model shape.
    """

    PROBE_BATCH: int = 1
    precision: prec.Verdict

    @abstractmethod
    def _generation_steps(self, names: list[str]) -> dict[str, Callable[[], object]]:
        """{precision: one unit of this generator's work in that precision}, for the probe."""

    def _use_precision(self, precision: str) -> None:
        family = self.meta.get("family", "?")
        sig = prec.signature(family, _network_shapes(self.net), self.PROBE_BATCH)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            self.precision = prec.decide(precision, self.device, f"generate {family} batch {self.PROBE_BATCH}", sig,
                                         self._generation_steps, budget_s=1.0)
        self.dtype = prec.autocast_dtype(self.precision.used)

    def _autocast(self, dtype: torch.dtype | None):
        return prec.autocast(self.device.type, dtype)

    def _weights_path(self) -> Path:
        return self.run_dir / self.weights_file
