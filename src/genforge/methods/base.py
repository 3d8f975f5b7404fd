"""The small interface through which a model family plugs into the one training loop.

A method owns its networks, optimizers and LR schedulers, computes the losses of one optimizer step
(and calls backward itself, because a GAN steps two optimizers per batch), and knows its data: how it
is loaded and cut into per-step micro-batches (`prepare_data`), and how samples are written during
training (`write_samples`). The loop owns everything else: devices, precision, EMA, checkpoints, logs.

Image methods share their data and sample-grid code through `methods/images.py` (ImageMethod);
language models have theirs in `methods/lm.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from genforge.errors import UserError
from genforge.options import SampleOption  # noqa: F401  (re-exported: families declare their options with it)


class MethodConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


@dataclass(frozen=True)
class DataSpec:
    """What an image method needs to know about the data to size its networks."""

    height: int
    width: int
    channels: int
    num_classes: int  # 0 when unlabelled
    label_counts: tuple[int, ...] = ()  # images per label, when the method trains on pseudo-labels (clusters)
    frames: int = 0  # frames per clip when the data are clips (the video modality); 0: images


@dataclass
class OnnxGraph:
    """One graph of an export: a module, example inputs by name, the names of its outputs, and which input
    dimensions are dynamic (by name: two inputs naming "batch" share it)."""

    module: nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]] | None = None  # named dynamic dimensions per input; None: {0: "batch"} each
    may_be_empty: tuple[str, ...] = ()  # dynamic dimensions that can be 0 (a KV cache's past length)
    # how `export --int8` quantizes it: "static" (calibrated QDQ), "dynamic" (int8 weights) or None (not at all:
    # measured to gain nothing)
    int8: str | None = "static"


class TrainingData(Protocol):
    """What `prepare_data` returns: the training data of one process, in memory."""

    spec: object  # sizes the networks (DataSpec for images, TextSpec for text)
    meta: dict  # the "data" part of config.json
    unit: str  # what throughput counts: "images" or "tokens"
    items_per_step: int  # units per optimizer step over all processes
    steps_per_epoch: int

    def micro_batches(self, step: int, rng: torch.Generator) -> list:
        """The batches of optimizer step `step` for this process, ready for `training_step`; all
        randomness (order, windows, augmentation) drawn from `rng`, seeded by (seed, step, rank)."""


class Method(ABC):
    family: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]
    # "image", "text" or "audio" (a waveform family): which generator `load` returns. An image family trained on
    # spectrograms generates audio, on clips video: `artifacts.modality_of` reads that from the run's data.
    modality: ClassVar[str] = "image"

    #: name of the network in `networks` that generation uses (EMA'd, exported to model.safetensors)
    exported: ClassVar[str]
    #: whether the loop keeps an EMA of the exported network (when train.ema_decay > 0)
    uses_ema: ClassVar[bool] = True
    #: whether the method scores itself at train.eval_every (`validation_score`) without an evaluate= callback
    self_evaluates: ClassVar[bool] = False
    #: the options its generation takes beyond the common ones (seed, labels / prompt), with their ranges
    sample_options: ClassVar[dict[str, SampleOption]] = {}
    #: what `draw` takes when the load-time precision probe times one unit of generation (a waveform family
    #: probes a short clip, not a whole one: thousands of sequential steps per precision would slow every load)
    probe_draw: ClassVar[dict] = {}

    @classmethod
    def options_for(cls, model_cfg: dict) -> dict[str, SampleOption]:
        """The generation options of a run with this model config: `sample_options`, unless the config sets
        their defaults (a diffusion model's sampler and steps) or leaves some out (guidance without classes)."""
        return cls.sample_options

    #: the optimizer step `training_step` is about to take (0-based); set by the loop before each call, so a
    #: schedule inside the objective (a KL warm-up, n critic steps) resumes exactly without state of its own
    step: int = 0

    def __init__(self, cfg: MethodConfig, spec, total_steps: int | None = None):
        self.cfg, self.spec, self.total_steps = cfg, spec, total_steps
        self.networks: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}  # checkpointed by the loop

    @classmethod
    @abstractmethod
    def prepare_data(cls, cfg, data_dir, run_dir: Path, resume: bool, accelerator) -> TrainingData:
        """Load the training data named by `cfg.data` onto `accelerator.device` (see TrainingData).

        `accelerator` is the process state (Accelerate's PartialState: `device`, `process_index`,
        `num_processes`, `is_main_process`, `main_process_first()`), not the Accelerator: the loop makes
        that afterwards, once `mixed_precision: auto` has timed steps on this data."""
        ...

    @classmethod
    @abstractmethod
    def build_exported(cls, cfg: MethodConfig, spec) -> nn.Module:
        """The exported network alone, for loading an artifact."""
        ...

    @abstractmethod
    def setup(self, train_cfg) -> None:
        """Create `self.networks`, `self.optimizers` (and `self.schedulers`), weights initialised under the caller's seed."""
        ...

    @abstractmethod
    def training_step(self, accelerator, micro_batches, rng: torch.Generator) -> dict[str, torch.Tensor]:
        """One optimizer step over `micro_batches` (from `TrainingData.micro_batches`). Returns detached losses.

        Of the accelerator, use only `autocast()`, `backward()`, `no_sync()`, `clip_grad_norm_()` and
        `device`: the precision probe (training/autoprecision.py) runs this same method with a stand-in
        that offers exactly those."""
        ...

    @classmethod
    @abstractmethod
    def write_samples(cls, net: nn.Module, data: TrainingData, path: Path, seed: int, accelerator) -> Path:
        """Write samples from `net` to `path` plus the method's suffix (.png grid, .txt text); same seed, same samples."""
        ...

    # -- export (genforge export; the torch-free runtime in genforge/runtime reads what these describe) ----------
    @classmethod
    def onnx_graphs(cls, net: nn.Module) -> dict[str, OnnxGraph]:
        """The exported network as ONNX graphs by name; the sampling loop stays outside them (in the runtime)."""
        raise UserError(f"{cls.family} models cannot be exported yet: `genforge export` covers the image families "
                        "(gan, vae, diffusion); use `genforge serve` or `genforge.load` for this one.")

    @classmethod
    def runtime_config(cls, net: nn.Module) -> dict:
        """What the runtime needs besides the graphs to sample as `render` does (sizes, schedule, ...)."""
        return {}

    @classmethod
    def validation_score(cls, net: nn.Module, data: TrainingData, accelerator) -> dict[str, float]:
        """In-training evaluation of self-evaluating methods: {"eval_score": x, ...}, lower is better."""
        raise TypeError(f"{cls.__name__} does not score itself (self_evaluates is False); pass `evaluate=` to train().")
