"""Noise schedules and samplers for diffusion models: numpy coefficients, no nn.Module, no training, no torch
import, so a torch-free runtime samples with the same code. The network is models/unet.py, the objective
methods/diffusion.py."""

from genforge.diffusion.samplers import PREDICTIONS, SAMPLERS, sample, split_prediction, training_target
from genforge.diffusion.schedules import FlowSchedule, Schedule, VPSchedule, make_schedule

__all__ = ["FlowSchedule", "PREDICTIONS", "SAMPLERS", "Schedule", "VPSchedule", "make_schedule", "sample",
           "split_prediction", "training_target"]
