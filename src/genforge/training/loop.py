"""The one training loop, on Hugging Face Accelerate, for every model family.

The method decides how its data is loaded and cut into micro-batches (`prepare_data`: images as an
in-memory uint8 tensor, text as in-memory token ids) and how samples are written; the loop owns the
devices, precision, EMA, in-training evaluation, logs and checkpoints. All randomness of a step (batch
order or text windows, noise, augmentation, dropout) comes from generators seeded by (seed, step,
rank), so a run resumed from a checkpoint continues exactly as if it had never stopped, and a CPU run
is reproducible bit for bit.

`train()` reads as the run's phases, in order: prepare the data, choose the precision, build (accelerator,
networks, optimizers, EMA), resume or start, step (with logging, the time budget, evaluation and checkpoints
along the way) and finish. What the phases share is a `Run` (run_state.py).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import broadcast_object_list, set_seed

import genforge.artifacts as artifacts
from genforge.errors import UserError
from genforge.methods import get_method
from genforge.precision import Verdict
from genforge.training import checkpoint as ckpt
from genforge.training.autoprecision import to_channels_last, training_precision
from genforge.training.budget import BudgetPlanner
from genforge.training.config import Config, format_validation_error
from genforge.training.ema import EMA
from genforge.training.progress import ProgressReporter, StopOnSignal, say
from genforge.training.run_state import Clock, Losses, Run, _read_metrics, _step_seed, start_clock
from genforge.visual import save_loss_plot


class TrainingDiverged(UserError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    items_per_second: float  # training throughput in `unit`s per second
    last_losses: dict[str, float]
    unit: str = "images"  # "images" or "tokens"
    precision: str = "no"  # the precision the run trained in ("no" = fp32, "bf16", "fp16")
    best_score: float | None = None  # the best in-training evaluation (lower is better), if any ran
    stopped: str | None = None  # why it ended before its last step: "time" (train.max_minutes) or "on_eval"

    @property
    def images_per_second(self) -> float:
        return self.items_per_second


def train(cfg: Config, run_dir: str | Path, data_dir: str | Path | None = None, resume: bool = False,
          progress: bool = True, evaluate=None, on_eval=None, end_process_group: bool = True) -> TrainResult:
    """Train `cfg` into `run_dir`.

    `evaluate(generate) -> float` (lower is better; e.g. genforge.evaluation.TrainingFID) is called every
    `train.eval_every` steps with `generate(n, rng) -> float NCHW images` from the exported network; the
    best-scoring weights are kept as `model-best.safetensors` beside the last ones. Methods that score
    themselves (language models: validation loss) need no `evaluate`. `on_eval(step, score) -> bool` is called
    on the main process after each evaluation; True stops training there, cleanly (weights and a checkpoint
    written, `stopped="on_eval"`): what a tuner's pruner needs. `end_process_group=False` keeps the process
    group of `accelerate launch` alive for a caller that trains again in the same processes (a tuning study).
    """
    t_call = time.perf_counter()  # train.budget_minutes counts from here
    run_dir = Path(run_dir)
    method_cls, method_cfg = _method(cfg)
    existing = _existing_checkpoint(run_dir, resume)
    state, no_accel = _process_state(cfg.train.seed)
    data, total, budget_plan = _prepare_data(cfg, method_cls, data_dir, run_dir, resume, existing, state)
    verdict = _choose_precision(cfg.train.mixed_precision, run_dir, resume, method_cls, method_cfg, data, cfg.train,
                                total, state)
    run = _build(cfg, run_dir, method_cls, method_cfg, data, verdict, no_accel, total, budget_plan, progress,
                 evaluate, on_eval)
    _resume_or_start(run, existing if resume else None)
    clock = _train_steps(run, t_call)
    return _finish(run, clock, end_process_group)


# --- prepare -------------------------------------------------------------------------------------------------

def _method(cfg: Config):
    """The method's class and its validated model config."""
    method_cls = get_method(cfg.family)
    try:
        method_cfg = method_cls.Config.model_validate(cfg.model)
    except Exception as e:  # pydantic ValidationError
        raise UserError(format_validation_error(e, method_cls.Config, prefix="model.")) from None
    return method_cls, method_cfg


def _existing_checkpoint(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from; refuses to resume nothing, and to start over a run."""
    existing = ckpt.latest_checkpoint(run_dir)
    if resume and existing is None:
        raise UserError(f"Nothing to resume in {run_dir}: it has no finished checkpoint. Drop --resume to start a new run there.")
    if not resume and existing is not None:
        raise UserError(f"{run_dir} already holds a run (checkpoint {existing.name}). "
                        "Pass --resume to continue it, or choose another --out.")
    return existing


def _process_state(seed: int) -> tuple[PartialState, bool]:
    """The process group, and whether this machine has no accelerator; seeds every generator."""
    # cpu=True on machines without an accelerator lets `accelerate launch --multi_gpu --num_processes N` run N CPU
    # processes over gloo (Accelerate's MULTI_CPU); with a GPU it is False and the GPU is used.
    # Accelerate keeps its settings in a process-wide singleton; a second train() in the same process (a
    # notebook, a benchmark) may ask for another precision, so the per-run part is reset. The process
    # group (PartialState) stays. The data is loaded with the process state alone, because the precision,
    # and with it the Accelerator, is chosen afterwards by timing steps on that data.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    no_accel = not torch.cuda.is_available() and not (hasattr(torch, "xpu") and torch.xpu.is_available())
    state = PartialState(cpu=no_accel)
    set_seed(seed)
    return state, no_accel


def _prepare_data(cfg: Config, method_cls, data_dir, run_dir: Path, resume: bool, existing: Path | None,
                  state: PartialState):
    """This process's training data, the run's length in steps and, on resume, its time-budget plan."""
    tcfg = cfg.train
    data = method_cls.prepare_data(cfg, data_dir, run_dir, resume, state)
    total = tcfg.max_steps if tcfg.max_steps is not None else math.ceil(tcfg.epochs * data.steps_per_epoch)
    budget_plan = None  # train.budget_minutes: the run's length, once measured (kept in the checkpoint)
    if resume and tcfg.budget_minutes:
        budget_plan = ckpt.read_state(existing).get("budget")
        total = budget_plan["total_steps"] if budget_plan else total
    return data, total, budget_plan


# --- choose the precision ------------------------------------------------------------------------------------

def _choose_precision(setting: str, run_dir: Path, resume: bool, method_cls, method_cfg, data, tcfg, total: int,
                      state: PartialState) -> Verdict:
    """The run's precision: explicit as given; `auto` measured (or cached), or on resume the one the run
    started with, so a resumed run continues bit for bit. Every process uses rank 0's verdict."""
    if setting == "auto" and resume:
        recorded = (artifacts.read_config(run_dir).get("precision") or {}).get("used")
        if recorded:
            return Verdict(recorded, "auto", "resumed", device=f"{state.device}", workload=f"train {method_cls.family}")
    verdict = training_precision(setting, method_cls, method_cfg, data, tcfg, total, state.device)
    if state.num_processes > 1:
        box = [verdict.as_dict() if state.is_main_process else None]
        broadcast_object_list(box, from_process=0)
        verdict = Verdict(**box[0])
    return verdict


# --- build ---------------------------------------------------------------------------------------------------

def _build(cfg: Config, run_dir: Path, method_cls, method_cfg, data, verdict: Verdict, no_accel: bool, total: int,
           budget_plan: dict | None, progress: bool, evaluate, on_eval) -> Run:
    """The Accelerator in the chosen precision, the method's networks and optimizers prepared on it, the EMA."""
    tcfg = cfg.train
    accelerator = Accelerator(mixed_precision=verdict.used, cpu=no_accel, log_with="tensorboard",
                              project_dir=str(run_dir))
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    if progress and accelerator.is_main_process and verdict.source != "explicit":
        say(verdict.describe())

    method = method_cls(method_cfg, data.spec, total_steps=total)
    method.setup(tcfg)
    names = list(method.networks)
    if tcfg.channels_last:
        for net in method.networks.values():
            to_channels_last(net)
    if tcfg.compile:
        for name in names:
            method.networks[name] = torch.compile(method.networks[name])
    prepared = accelerator.prepare(*method.networks.values(), *method.optimizers.values())
    method.networks = dict(zip(names, prepared[: len(names)]))
    method.optimizers = dict(zip(method.optimizers, prepared[len(names):]))
    exported = accelerator.unwrap_model(method.networks[method_cls.exported])
    ema = EMA(exported, tcfg.ema_decay).to(device) if tcfg.ema_decay > 0 and method_cls.uses_ema else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    for scheduler in method.schedulers.values():  # its step count is saved and restored with the rest
        accelerator.register_for_checkpointing(scheduler)
    return Run(cfg, run_dir, method_cls, method_cfg, data, verdict, accelerator, rank, world, device, method, exported,
               ema, progress, evaluate, on_eval, total, budget_plan)


# --- resume or start -----------------------------------------------------------------------------------------

def _resume_or_start(run: Run, existing: Path | None) -> None:
    """Restore the checkpoint `existing` (None: a fresh start), then write config.json and start the trackers."""
    accelerator, metrics_path = run.accelerator, run.metrics_path
    run.meta = {
        "genforge_format": 1,
        "family": run.cfg.family,
        "name": run.cfg.name,
        "model": run.method_cfg.model_dump(),
        "data": run.data.meta,
        "config": run.cfg.model_dump(),
        "precision": run.verdict.as_dict(),
    }
    if existing is not None:
        accelerator.load_state(str(existing))
        saved_state = ckpt.read_state(existing)
        run.step, run.best = saved_state["step"], saved_state.get("best") or {}
        if accelerator.is_main_process:  # drop log lines written after the checkpoint by the interrupted run
            kept = [r for r in _read_metrics(metrics_path) if r.get("step", 0) <= run.step]
            artifacts.atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
    elif accelerator.is_main_process and metrics_path.exists():
        metrics_path.unlink()  # a fresh start: lines from an earlier attempt that never checkpointed are stale
    if accelerator.is_main_process:
        artifacts.write_config(run.run_dir, {**run.meta, "step": run.step})
        (run.run_dir / "samples").mkdir(exist_ok=True)
    if accelerator.is_main_process and run.verdict.source != "explicit":  # the choice and its measured ratio
        run.append_metrics({"step": run.step, "event": "precision", **run.verdict.as_dict()})
    accelerator.init_trackers("tensorboard")


# --- step ----------------------------------------------------------------------------------------------------

def _train_steps(run: Run, t_call: float) -> Clock:
    """Step until the last step, a time budget, an `on_eval` stop or a signal; log, sample, evaluate and
    checkpoint on the way."""
    tcfg = run.tcfg
    reporter = ProgressReporter(enabled=run.progress and run.accelerator.is_main_process, total=run.total,
                                start=run.step, unit=run.data.unit)
    losses = Losses({})
    clock = start_clock(run, t_call)
    for net in run.method.networks.values():
        net.train()
    with reporter, StopOnSignal(enabled=run.world == 1) as stop:
        while run.step < run.total:
            _step(run, losses)
            if clock.planner is not None and (not clock.planner.planned or run.step % tcfg.log_every == 0):
                _plan_budget(run, clock.planner, reporter)
            out_of_time = _out_of_time(run, clock)
            log_now = run.step % tcfg.log_every == 0 or run.step == run.total or out_of_time
            ckpt_now = run.step % tcfg.checkpoint_every == 0 or run.step == run.total or out_of_time
            if log_now or ckpt_now:
                _log(run, losses, clock, reporter)
            if run.step % tcfg.sample_every == 0:
                run.write_samples(f"step-{run.step:08d}")
            if _evaluation_due(run, out_of_time) and _evaluate(run):
                run.save(run.step)
                run.stopped = "on_eval"
                break
            if ckpt_now:
                run.save(run.step)
            if out_of_time:
                _stop_for_time(run, clock)
                break
            if stop.requested and run.step < run.total:
                _stop_for_signal(run, ckpt_now)
    return clock


def _step(run: Run, losses: Losses) -> None:
    """One optimizer step, its randomness seeded by (seed, step, rank), then the EMA."""
    rng = torch.Generator().manual_seed(_step_seed(run.tcfg.seed, run.step, run.rank, 0))
    run.method.step = run.step
    step_losses = run.method.training_step(run.accelerator, run.data.micro_batches(run.step, rng), rng)
    if run.ema is not None:
        run.ema.update(run.exported)
    run.step += 1
    losses.add(step_losses)


def _plan_budget(run: Run, planner: BudgetPlanner, reporter: ProgressReporter) -> None:
    """train.budget_minutes: measure the run's length in steps, or cut it when steps have slowed down."""
    now = time.perf_counter()
    plan = planner.plan(run.step, now) if not planner.planned else planner.revise(run.step, now)
    if run.world > 1:
        plan = broadcast_object_list([plan], from_process=0)[0]
    if plan is None:
        return
    planner.adopt(plan, now)
    run.budget_plan, run.total = plan, plan["total_steps"]
    run.method.total_steps = run.total  # step-based schedules (the LM's cosine) read it from here on
    reporter.set_total(run.total)
    if run.accelerator.is_main_process:
        run.append_metrics({"step": run.step, "event": "budget", **plan})
        if run.progress:
            say(f"train.budget_minutes={run.tcfg.budget_minutes}: {plan['steps_per_sec']:.2f} steps/s "
                f"{'since the plan, so it is cut to' if plan.get('revised') else 'measured, so this run takes'} "
                f"{run.total} steps")


def _out_of_time(run: Run, clock: Clock) -> bool:
    out_of_time = (clock.budget_s is not None and time.perf_counter() - clock.t_start >= clock.budget_s
                   and run.step < run.total)
    if run.world > 1 and clock.budget_s is not None:  # rank 0's clock decides, or the ranks would part ways
        out_of_time = broadcast_object_list([out_of_time], from_process=0)[0]
    return out_of_time


# --- log -----------------------------------------------------------------------------------------------------

def _log(run: Run, losses: Losses, clock: Clock, reporter: ProgressReporter) -> None:
    """The mean losses since the last log line (stopping if one is not finite) and the throughput."""
    accelerator, step, count = run.accelerator, run.step, losses.count
    means = {k: accelerator.reduce(v / count, "mean") for k, v in losses.sums.items()}
    run.last_losses = {k: float(v) for k, v in means.items()}
    bad = [k for k, v in run.last_losses.items() if not math.isfinite(v)]
    if bad:
        good = ckpt.latest_checkpoint(run.run_dir)
        raise TrainingDiverged(
            f"{', '.join(bad)} became non-finite ({run.last_losses}) between steps {step - count} and {step}. "
            f"Stopped without saving; the last good checkpoint is "
            f"{good if good else 'none (no checkpoint was written yet)'}. "
            "Lower train.lr, or use train.mixed_precision=no, then --resume or start again.")
    losses.sums, losses.count = {}, 0
    now = time.perf_counter()
    ips = (step - clock.step_last) * run.data.items_per_step / max(now - clock.t_last, 1e-9)
    clock.t_last, clock.step_last = now, step
    record = {"step": step, "epoch": round(step / run.data.steps_per_epoch, 4), **run.last_losses,
              f"{run.data.unit}_per_sec": round(ips, 1), "time": round(time.time(), 3)}
    if accelerator.is_main_process:
        run.append_metrics(record)
    accelerator.log({k: v for k, v in record.items() if k not in ("step", "time")}, step=step)
    reporter.update(step, run.last_losses, ips)


# --- evaluate ------------------------------------------------------------------------------------------------

def _evaluation_due(run: Run, out_of_time: bool) -> bool:
    tcfg = run.tcfg
    return bool((run.evaluate is not None or run.self_scoring) and tcfg.eval_every
                and (run.step % tcfg.eval_every == 0 or run.step == run.total or out_of_time))


def _evaluate(run: Run) -> bool:
    """Score the run now; True when `on_eval` asks to stop before the last step (every process agrees)."""
    score = run.score(run.step)
    halt = bool(run.on_eval(run.step, score)) if run.on_eval is not None and score is not None else False
    if run.world > 1:
        halt = broadcast_object_list([halt], from_process=0)[0]
    run.accelerator.wait_for_everyone()
    return halt and run.step < run.total


# --- stop and finish -----------------------------------------------------------------------------------------

def _stop_for_time(run: Run, clock: Clock) -> None:
    tcfg = run.tcfg
    run.stopped = "time"
    if run.progress and run.accelerator.is_main_process:
        which = (f"train.max_minutes={tcfg.max_minutes}" if tcfg.max_minutes and time.perf_counter() - clock.t_start
                 >= tcfg.max_minutes * 60 else f"train.budget_minutes={tcfg.budget_minutes}")
        say(f"{which} reached at step {run.step} of {run.total}; continue with --resume")


def _stop_for_signal(run: Run, saved: bool) -> None:
    """Ctrl-C / SIGTERM: checkpoint (unless this step just did) and stop with how to continue."""
    if not saved:
        run.save(run.step)
    raise UserError(f"Interrupted at step {run.step} of {run.total}; checkpoint saved. "
                    f"Continue with: genforge train {run.run_dir / 'config.json'} --out {run.run_dir} --resume")


def _finish(run: Run, clock: Clock, end_process_group: bool) -> TrainResult:
    """The final weights (the EMA's, if any), config.json, samples and loss plot; then the trackers close."""
    elapsed = time.perf_counter() - clock.t_start
    accelerator, step, best = run.accelerator, run.step, run.best
    ips_total = (step - clock.step_start) * run.data.items_per_step / elapsed if step > clock.step_start else 0.0
    run.sync_buffers()
    if accelerator.is_main_process:
        net = run.export_net(step)
        weights = "ema" if run.ema is not None else "raw"
        artifacts.save_weights(run.run_dir, net.state_dict(), metadata={"step": str(step), "weights": weights})
        artifacts.write_config(run.run_dir, {**run.meta, "step": step, "weights": weights,
                                             **({"best": best} if best else {})})
        run.write_samples("final", net)
        save_loss_plot(_read_metrics(run.metrics_path), run.run_dir / "loss.png")
    accelerator.wait_for_everyone()
    if end_process_group:
        accelerator.end_training()
    else:
        for tracker in accelerator.trackers:
            tracker.finish()
    return TrainResult(run.run_dir, step, ips_total, run.last_losses, run.data.unit, run.verdict.used,
                       best.get("score"), run.stopped)
