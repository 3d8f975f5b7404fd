"""The one training loop, on Hugging Face Accelerate, for every model family.

The method decides how its data is loaded and cut into micro-batches (`prepare_data`: images as an
in-memory uint8 tensor, text as in-memory token ids) and how samples are written; the loop owns the
devices, precision, EMA, in-training evaluation, logs and checkpoints. All randomness of a step (batch
order or text windows, noise, augmentation, dropout) comes from generators seeded by (seed, step,
rank), so a run resumed from a checkpoint continues exactly as if it had never stopped, and a CPU run
is reproducible bit for bit.
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

from genforge import artifacts
from genforge.errors import UserError
from genforge.methods import get_method
from genforge.training import checkpoint as ckpt
from genforge.precision import Verdict
from genforge.training.autoprecision import to_channels_last, training_precision
from genforge.training.budget import BudgetPlanner
from genforge.training.config import Config, format_validation_error
from genforge.training.ema import EMA, recalibrated_copy
from genforge.training.progress import ProgressReporter, StopOnSignal, say
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
    tcfg = cfg.train
    method_cls = get_method(cfg.family)
    try:
        method_cfg = method_cls.Config.model_validate(cfg.model)
    except Exception as e:  # pydantic ValidationError
        raise UserError(format_validation_error(e, method_cls.Config, prefix="model.")) from None

    existing = ckpt.latest_checkpoint(run_dir)
    if resume and existing is None:
        raise UserError(f"Nothing to resume in {run_dir}: it has no finished checkpoint. Drop --resume to start a new run there.")
    if not resume and existing is not None:
        raise UserError(f"{run_dir} already holds a run (checkpoint {existing.name}). "
                        "Pass --resume to continue it, or choose another --out.")

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
    set_seed(tcfg.seed)

    data = method_cls.prepare_data(cfg, data_dir, run_dir, resume, state)
    total = tcfg.max_steps if tcfg.max_steps is not None else math.ceil(tcfg.epochs * data.steps_per_epoch)
    budget_plan = None  # train.budget_minutes: the run's length, once measured (kept in the checkpoint)
    if resume and tcfg.budget_minutes:
        budget_plan = ckpt.read_state(existing).get("budget")
        total = budget_plan["total_steps"] if budget_plan else total
    self_scoring = evaluate is None and method_cls.self_evaluates  # e.g. language models: validation loss

    verdict = _choose_precision(tcfg.mixed_precision, run_dir, resume, method_cls, method_cfg, data, tcfg, total,
                                state)
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

    meta = {
        "genforge_format": 1,
        "family": cfg.family,
        "name": cfg.name,
        "model": method_cfg.model_dump(),
        "data": data.meta,
        "config": cfg.model_dump(),
        "precision": verdict.as_dict(),
    }
    metrics_path = run_dir / "metrics.jsonl"
    step = 0
    best: dict = {}  # {"step": s, "score": x} of the best in-training evaluation so far
    if resume:
        accelerator.load_state(str(existing))
        saved_state = ckpt.read_state(existing)
        step, best = saved_state["step"], saved_state.get("best") or {}
        if accelerator.is_main_process:  # drop log lines written after the checkpoint by the interrupted run
            kept = [r for r in _read_metrics(metrics_path) if r.get("step", 0) <= step]
            artifacts.atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
    elif accelerator.is_main_process and metrics_path.exists():
        metrics_path.unlink()  # a fresh start: lines from an earlier attempt that never checkpointed are stale
    if accelerator.is_main_process:
        artifacts.write_config(run_dir, {**meta, "step": step})
        (run_dir / "samples").mkdir(exist_ok=True)
    if accelerator.is_main_process and verdict.source != "explicit":  # the choice and its measured ratio
        with metrics_path.open("a") as f:
            f.write(json.dumps({"step": step, "event": "precision", **verdict.as_dict()}) + "\n")
    accelerator.init_trackers("tensorboard")

    fixed_rng_seed = _step_seed(tcfg.seed, 0, 0, 99)  # the same noise / prompt seed for every sample
    spec = data.spec

    def export_net(at: int) -> torch.nn.Module:
        """The network to sample from and save: the EMA with BatchNorm statistics re-estimated for its weights."""
        if ema is None:
            return exported
        rng = torch.Generator().manual_seed(_step_seed(tcfg.seed, at, 0, 7))
        return recalibrated_copy(ema.shadow, lambda net: method_cls.sample(net, spec, 64, None, rng, device))

    def write_samples(tag: str, net: torch.nn.Module | None = None) -> None:
        if not accelerator.is_main_process:
            return
        net = net if net is not None else export_net(step)
        method_cls.write_samples(net, data, run_dir / "samples" / tag, fixed_rng_seed, accelerator)

    def sync_buffers() -> None:
        # DDP keeps parameters equal across processes; BatchNorm statistics are made equal here, from rank 0.
        if world > 1:
            import torch.distributed as dist

            for net in [*method.networks.values(), *( [ema] if ema is not None else [])]:
                for buf in net.buffers():
                    dist.broadcast(buf.data, 0)

    def save(at: int) -> Path:
        sync_buffers()
        return ckpt.save_checkpoint(accelerator, run_dir, at, {"total_steps": total, "best": best, "budget": budget_plan},
                                    tcfg.keep_checkpoints)

    def run_evaluation(at: int) -> float | None:
        nonlocal best
        if not accelerator.is_main_process:
            return None
        net = export_net(at)

        def generate(n: int, rng: torch.Generator) -> torch.Tensor:
            with torch.no_grad(), accelerator.autocast():
                return method_cls.sample(net, spec, n, None, rng, device).float()

        t = time.perf_counter()
        if self_scoring:
            scores = method_cls.validation_score(net, data, accelerator)  # e.g. {"eval_score": x, "val_loss": x}
        else:
            scores = {"eval_score": float(evaluate(generate))}
        score = scores["eval_score"]
        record = {"step": at, **scores, "eval_seconds": round(time.perf_counter() - t, 2), "time": round(time.time(), 3)}
        if math.isfinite(score) and (not best or score < best["score"]):
            best = {"step": at, "score": score}
            artifacts.save_weights(run_dir, net.state_dict(), metadata={"step": str(at), "score": str(score)},
                                   name=artifacts.BEST_WEIGHTS_FILE)
        record["best_score"], record["best_step"] = best.get("score"), best.get("step")
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        accelerator.log(scores, step=at)
        return score

    reporter = ProgressReporter(enabled=progress and accelerator.is_main_process, total=total, start=step,
                                unit=data.unit)
    sums: dict[str, torch.Tensor] = {}
    count = 0
    t_last, step_last = time.perf_counter(), step
    t_start, step_start = t_last, step
    budget_s = tcfg.max_minutes * 60 if tcfg.max_minutes else None
    planner = None
    if tcfg.budget_minutes and budget_plan is None:
        planner = BudgetPlanner(tcfg.budget_minutes * 60, t_call, step)
        # a hard stop too, at the budget itself: the plan (and every cut of it) already leaves the final writes
        # their reserve and 4% of slack, so this only catches a box that slows down faster than a cut can follow
        budget_s = min(budget_s or math.inf, tcfg.budget_minutes * 60 - (t_start - t_call))
    last_losses: dict[str, float] = {}
    stopped = None
    for net in method.networks.values():
        net.train()
    with reporter, StopOnSignal(enabled=world == 1) as stop:
        while step < total:
            rng = torch.Generator().manual_seed(_step_seed(tcfg.seed, step, rank, 0))
            method.step = step
            losses = method.training_step(accelerator, data.micro_batches(step, rng), rng)
            if ema is not None:
                ema.update(exported)
            step += 1
            for k, v in losses.items():
                sums[k] = sums[k] + v if k in sums else v.clone()
            count += 1

            if planner is not None and (not planner.planned or step % tcfg.log_every == 0):
                now = time.perf_counter()
                plan = planner.plan(step, now) if not planner.planned else planner.revise(step, now)
                if world > 1:
                    plan = broadcast_object_list([plan], from_process=0)[0]
                if plan is not None:
                    planner.adopt(plan, now)
                    budget_plan, total = plan, plan["total_steps"]
                    method.total_steps = total  # step-based schedules (the LM's cosine) read it from here on
                    reporter.set_total(total)
                    if accelerator.is_main_process:
                        with metrics_path.open("a") as f:
                            f.write(json.dumps({"step": step, "event": "budget", **plan}) + "\n")
                        if progress:
                            say(f"train.budget_minutes={tcfg.budget_minutes}: {plan['steps_per_sec']:.2f} steps/s "
                                f"{'since the plan, so it is cut to' if plan.get('revised') else 'measured, so this run takes'} "
                                f"{total} steps")
            out_of_time = budget_s is not None and time.perf_counter() - t_start >= budget_s and step < total
            if world > 1 and budget_s is not None:  # rank 0's clock decides, or the ranks would part ways
                out_of_time = broadcast_object_list([out_of_time], from_process=0)[0]
            log_now = step % tcfg.log_every == 0 or step == total or out_of_time
            ckpt_now = step % tcfg.checkpoint_every == 0 or step == total or out_of_time
            if log_now or ckpt_now:
                means = {k: accelerator.reduce(v / count, "mean") for k, v in sums.items()}
                last_losses = {k: float(v) for k, v in means.items()}
                bad = [k for k, v in last_losses.items() if not math.isfinite(v)]
                if bad:
                    good = ckpt.latest_checkpoint(run_dir)
                    raise TrainingDiverged(
                        f"{', '.join(bad)} became non-finite ({last_losses}) between steps {step - count} and {step}. "
                        f"Stopped without saving; the last good checkpoint is "
                        f"{good if good else 'none (no checkpoint was written yet)'}. "
                        "Lower train.lr, or use train.mixed_precision=no, then --resume or start again.")
                sums, count = {}, 0
                now = time.perf_counter()
                ips = (step - step_last) * data.items_per_step / max(now - t_last, 1e-9)
                t_last, step_last = now, step
                record = {"step": step, "epoch": round(step / data.steps_per_epoch, 4), **last_losses,
                          f"{data.unit}_per_sec": round(ips, 1), "time": round(time.time(), 3)}
                if accelerator.is_main_process:
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                accelerator.log({k: v for k, v in record.items() if k not in ("step", "time")}, step=step)
                reporter.update(step, last_losses, ips)
            if step % tcfg.sample_every == 0:
                write_samples(f"step-{step:08d}")
            if (evaluate is not None or self_scoring) and tcfg.eval_every and (step % tcfg.eval_every == 0 or step == total
                                                                               or out_of_time):
                score = run_evaluation(step)
                halt = bool(on_eval(step, score)) if on_eval is not None and score is not None else False
                if world > 1:
                    halt = broadcast_object_list([halt], from_process=0)[0]
                accelerator.wait_for_everyone()
                if halt and step < total:
                    save(step)
                    stopped = "on_eval"
                    break
            if ckpt_now:
                save(step)
            if out_of_time:
                stopped = "time"
                if progress and accelerator.is_main_process:
                    which = (f"train.max_minutes={tcfg.max_minutes}" if tcfg.max_minutes and time.perf_counter() - t_start
                             >= tcfg.max_minutes * 60 else f"train.budget_minutes={tcfg.budget_minutes}")
                    say(f"{which} reached at step {step} of {total}; continue with --resume")
                break
            if stop.requested and step < total:
                if not ckpt_now:
                    save(step)
                raise UserError(f"Interrupted at step {step} of {total}; checkpoint saved. "
                                f"Continue with: genforge train {run_dir / 'config.json'} --out {run_dir} --resume")

    elapsed = time.perf_counter() - t_start
    ips_total = (step - step_start) * data.items_per_step / elapsed if step > step_start else 0.0
    sync_buffers()
    if accelerator.is_main_process:
        net = export_net(step)
        artifacts.save_weights(run_dir, net.state_dict(),
                               metadata={"step": str(step), "weights": "ema" if ema is not None else "raw"})
        artifacts.write_config(run_dir, {**meta, "step": step, "weights": "ema" if ema is not None else "raw",
                                         **({"best": best} if best else {})})
        write_samples("final", net)
        save_loss_plot(_read_metrics(metrics_path), run_dir / "loss.png")
    accelerator.wait_for_everyone()
    if end_process_group:
        accelerator.end_training()
    else:
        for tracker in accelerator.trackers:
            tracker.finish()
    return TrainResult(run_dir, step, ips_total, last_losses, data.unit, verdict.used, best.get("score"), stopped)


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
