"""The small interface through which a model family plugs into the one training loop.

A method owns its networks and optimizers, computes the losses of one optimizer step (and calls
backward itself, because a GAN steps two optimizers per batch), and knows how to sample from the
network it exports. The loop owns everything else: data, devices, precision, EMA, checkpoints, logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn


class MethodConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


@dataclass(frozen=True)
class DataSpec:
    """What a method needs to know about the data to size its networks."""

    height: int
    width: int
    channels: int
    num_classes: int  # 0 when unlabelled


class Method:
    family: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]

    #: name of the network in `networks` that generation uses (EMA'd, exported to model.safetensors)
    exported: ClassVar[str]

    def __init__(self, cfg: MethodConfig, spec: DataSpec):
        self.cfg, self.spec = cfg, spec
        self.networks: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    @classmethod
    def build_exported(cls, cfg: MethodConfig, spec: DataSpec) -> nn.Module:
        """The exported network alone, for loading an artifact."""
        raise NotImplementedError

    def setup(self, train_cfg) -> None:
        """Create `self.networks` and `self.optimizers` (weights initialised under the caller's seed)."""
        raise NotImplementedError

    def training_step(self, accelerator, micro_batches, rng: torch.Generator) -> dict[str, torch.Tensor]:
        """One optimizer step over `micro_batches` [(x, labels)], x float NCHW in [-1, 1]. Returns detached losses."""
        raise NotImplementedError

    @classmethod
    def sample(cls, net: nn.Module, spec: DataSpec, n: int, labels: torch.Tensor | None,
               rng: torch.Generator, device: torch.device) -> torch.Tensor:
        """n samples as float NCHW in [-1, 1] from the exported network."""
        raise NotImplementedError
