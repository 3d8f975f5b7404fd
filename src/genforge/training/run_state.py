"""What the phases of one training run share (genforge.training.loop), and the actions several of them take.

A `Run` carries what `train()` was given and built (config, data, accelerator, method, EMA) and where the run
stands (step, planned length, best evaluation, last losses). Its methods are what more than one phase does:
export the network to sample from, write samples, append to metrics.jsonl, checkpoint and score the run.
The stepping phase also keeps a `Clock` (throughput, time budgets) and the `Losses` summed since the last log.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

import genforge.artifacts as artifacts
from genforge.methods.base import Method, TrainingData
from genforge.precision import Verdict
from genforge.training import checkpoint as ckpt
from genforge.training.budget import BudgetPlanner
from genforge.training.config import Config
from genforge.training.ema import EMA, recalibrated_copy


def _step_seed(seed: int, step: int, rank: int, stream: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729 + stream * 15_485_863) % (2**63 - 1)


def _read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut by a kill
    return out


@dataclass
class Run:
    """One training run in progress: what it was given, what was built for it, and where it stands."""

    cfg: Config
    run_dir: Path
    method_cls: type[Method]
    method_cfg: Any  # the method's validated Config
    data: TrainingData
    verdict: Verdict  # the precision it trains in
    accelerator: Accelerator
    rank: int
    world: int
    device: torch.device
    method: Method
    exported: torch.nn.Module  # the unwrapped network that generation uses
    ema: EMA | None
    progress: bool
    evaluate: Callable | None  # evaluate(generate) -> score, lower is better
    on_eval: Callable | None  # on_eval(step, score) -> True to stop
    total: int  # the run's length in steps (train.budget_minutes may set it once measured)
    budget_plan: dict | None = None  # train.budget_minutes: the run's length, once measured (kept in the checkpoint)
    meta: dict = field(default_factory=dict)  # the run's config.json, less its step
    step: int = 0
    best: dict = field(default_factory=dict)  # {"step": s, "score": x} of the best in-training evaluation so far
    last_losses: dict[str, float] = field(default_factory=dict)
    stopped: str | None = None  # why it ended before its last step: "time" or "on_eval"

    @property
    def tcfg(self):
        return self.cfg.train

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def self_scoring(self) -> bool:
        """No `evaluate` given, and the method scores itself (e.g. language models: validation loss)."""
        return self.evaluate is None and self.method_cls.self_evaluates

    @property
    def fixed_rng_seed(self) -> int:
        """The same noise / prompt seed for every sample."""
        return _step_seed(self.tcfg.seed, 0, 0, 99)

    def append_metrics(self, record: dict) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def export_net(self, at: int) -> torch.nn.Module:
        """The network to sample from and save: the EMA with BatchNorm statistics re-estimated for its weights."""
        if self.ema is None:
            return self.exported
        rng = torch.Generator().manual_seed(_step_seed(self.tcfg.seed, at, 0, 7))
        return recalibrated_copy(self.ema.shadow,
                                 lambda net: self.method_cls.sample(net, self.data.spec, 64, None, rng, self.device))

    def write_samples(self, tag: str, net: torch.nn.Module | None = None) -> None:
        if not self.accelerator.is_main_process:
            return
        net = net if net is not None else self.export_net(self.step)
        self.method_cls.write_samples(net, self.data, self.run_dir / "samples" / tag, self.fixed_rng_seed,
                                      self.accelerator)

    def sync_buffers(self) -> None:
        # DDP keeps parameters equal across processes; BatchNorm statistics are made equal here, from rank 0.
        if self.world > 1:
            import torch.distributed as dist

            for net in [*self.method.networks.values(), *([self.ema] if self.ema is not None else [])]:
                for buf in net.buffers():
                    dist.broadcast(buf.data, 0)

    def save(self, at: int) -> Path:
        self.sync_buffers()
        return ckpt.save_checkpoint(self.accelerator, self.run_dir, at,
                                    {"total_steps": self.total, "best": self.best, "budget": self.budget_plan},
                                    self.tcfg.keep_checkpoints)

    def score(self, at: int) -> float | None:
        """Evaluate the exported network (main process only; None elsewhere), log it, and keep the best weights."""
        if not self.accelerator.is_main_process:
            return None
        net = self.export_net(at)

        def generate(n: int, rng: torch.Generator) -> torch.Tensor:
            with torch.no_grad(), self.accelerator.autocast():
                return self.method_cls.sample(net, self.data.spec, n, None, rng, self.device).float()

        t = time.perf_counter()
        if self.self_scoring:  # scores: e.g. {"eval_score": x, "val_loss": x}
            scores = self.method_cls.validation_score(net, self.data, self.accelerator)
        else:
            scores = {"eval_score": float(self.evaluate(generate))}
        score = scores["eval_score"]
        record = {"step": at, **scores, "eval_seconds": round(time.perf_counter() - t, 2),
                  "time": round(time.time(), 3)}
        if math.isfinite(score) and (not self.best or score < self.best["score"]):
            self.best = {"step": at, "score": score}
            artifacts.save_weights(self.run_dir, net.state_dict(), metadata={"step": str(at), "score": str(score)},
                                   name=artifacts.BEST_WEIGHTS_FILE)
        record["best_score"], record["best_step"] = self.best.get("score"), self.best.get("step")
        self.append_metrics(record)
        self.accelerator.log(scores, step=at)
        return score


@dataclass
class Clock:
    """This process's stretch of the run (for throughput and time budgets) and the log window's start."""

    t_start: float
    step_start: int
    t_last: float  # when the last log line was written (or the stretch started)
    step_last: int
    budget_s: float | None  # seconds this stretch may run (train.max_minutes, train.budget_minutes)
    planner: BudgetPlanner | None = None  # train.budget_minutes, while the run's length is still to be measured


@dataclass
class Losses:
    """The losses summed since the last log line, as tensors (reduced across processes only when logged)."""

    sums: dict[str, torch.Tensor]
    count: int = 0

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += 1


def start_clock(run: Run, t_call: float) -> Clock:
    """The clock of this process's stretch of `run`, which train() entered at `t_call`."""
    tcfg = run.tcfg
    now = time.perf_counter()
    clock = Clock(now, run.step, now, run.step, tcfg.max_minutes * 60 if tcfg.max_minutes else None)
    if tcfg.budget_minutes and run.budget_plan is None:
        clock.planner = BudgetPlanner(tcfg.budget_minutes * 60, t_call, run.step)
        # a hard stop too, at the budget itself: the plan (and every cut of it) already leaves the final writes
        # their reserve and 4% of slack, so this only catches a box that slows down faster than a cut can follow
        clock.budget_s = min(clock.budget_s or math.inf, tcfg.budget_minutes * 60 - (clock.t_start - t_call))
    return clock
