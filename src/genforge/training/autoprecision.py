"""`train.mixed_precision: auto` for training: time the method's real optimizer step in each precision.

The probe builds a throwaway copy of the method (same config, same data, same batch), so what is timed
is exactly what the run will do: the family's own `training_step`, its optimizers and its micro-batches.
Everything it touches is discarded and the global RNG is restored afterwards, so the run that follows
draws the same weights and noise whether the probe ran, was cached or was skipped.
"""

from __future__ import annotations

import contextlib
from types import MethodType

import torch

import genforge.precision as prec
from genforge.precision import Verdict


class _ProbeAccelerator:
    """The part of Accelerate's interface that `Method.training_step` uses, for one process with no
    gradient sync. Each network's forward is wrapped in autocast, as `Accelerator.prepare` wraps it; the
    precision is switched between steps so both candidates share one set of networks."""

    num_processes, process_index, is_main_process = 1, 0, True

    def __init__(self, device: torch.device):
        self.device = device
        self.dtype: torch.dtype | None = None

    def autocast(self):
        return prec.autocast(self.device.type, self.dtype)

    def prepare_model(self, net: torch.nn.Module) -> None:
        forward = net.forward.__func__ if hasattr(net.forward, "__func__") else None
        if forward is None:
            return
        probe = self

        def autocast_forward(module, *args, **kwargs):
            with probe.autocast():
                return forward(module, *args, **kwargs)

        net.forward = MethodType(autocast_forward, net)

    @staticmethod
    def backward(loss: torch.Tensor) -> None:
        loss.backward()

    @staticmethod
    def no_sync(model):
        return contextlib.nullcontext()

    @staticmethod
    def clip_grad_norm_(parameters, max_norm):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    @staticmethod
    def unwrap_model(model):
        return model


def _rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def training_precision(setting: str, method_cls, method_cfg, data, tcfg, total: int, device: torch.device,
                       budget_s: float = 2.0) -> Verdict:
    """Resolve `train.mixed_precision` for this run (see `genforge.precision.decide`)."""
    workload = f"train {method_cls.family}"
    if setting != "auto" or len(prec.candidates(device)) == 1:  # nothing to time: no throwaway copy either
        return prec.decide(setting, device, workload, "", lambda names: {})
    with torch.random.fork_rng(devices=_rng_devices(device)):
        method = method_cls(method_cfg, data.spec, total_steps=total)
        method.setup(tcfg)
        for net in method.networks.values():
            net.to(device)
            if tcfg.channels_last:
                to_channels_last(net)
        rng = torch.Generator().manual_seed(0)
        batch = data.micro_batches(0, rng)
        shapes = [[list(t.shape) for t in mb if isinstance(t, torch.Tensor)] for mb in batch]
        params = {name: [[k, list(p.shape)] for k, p in net.named_parameters()] for name, net in method.networks.items()}
        sig = prec.signature(method_cls.family, params, shapes, tcfg.channels_last)

        def make_steps(names: list[str]):
            accel = _ProbeAccelerator(device)
            for net in method.networks.values():
                accel.prepare_model(net)
                net.train()
            counter = iter(range(10**9))

            def step_in(name: str):
                def step():
                    accel.dtype = prec.autocast_dtype(name)
                    i = next(counter)
                    g = torch.Generator().manual_seed(i)
                    method.step = i  # as the loop does: step-dependent objectives (n critic steps) cycle as in training
                    losses = method.training_step(accel, data.micro_batches(i % max(1, data.steps_per_epoch), g), g)
                    for v in losses.values():
                        float(v)  # wait for the step, as the loop's logging eventually does
                return step

            return {name: step_in(name) for name in names}

        return prec.decide(setting, device, workload, sig, make_steps, budget_s=budget_s)


def to_channels_last(net: torch.nn.Module) -> None:
    """channels_last for the 4-D weights (2-D convolutions); a video network's 3-D and 1-D convolutions keep their
    layout (Module.to(memory_format=channels_last) refuses a network that has any 5-D weight)."""
    for p in net.parameters():
        if p.dim() == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
