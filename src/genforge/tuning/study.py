"""A study: Optuna asks for parameters, genforge trains a normal run with them and reports each in-training
evaluation (FID for images, validation loss for text; lower is better) to the pruner.

Storage: by default a journal file in the study folder (`study.journal`), which survives kill -9 (the trial in
flight is marked failed when the study restarts) and is shared safely by several `genforge tune` processes on
one machine (Optuna's file lock: no trial runs twice); a database URL (`postgresql://...`, `sqlite:///...`)
shares a study across machines. Either is readable by optuna-dashboard.
"""

from __future__ import annotations

import csv
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from genforge.errors import UserError

JOURNAL = "study.journal"
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


@dataclass
class TuneResult:
    study: str
    storage: str
    out: Path
    trials: list[dict]  # every trial of the study: number, state, value, params, run, reason
    best: dict | None
    best_config: Path | None
    plots: list[Path]


def _storage(storage: str | None, out: Path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    if storage is None:
        out.mkdir(parents=True, exist_ok=True)
        path = out / JOURNAL
        return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))), str(path)
    if "://" not in storage:
        raise UserError(f"--storage {storage}: give a database URL (postgresql://user@host/db, sqlite:///file.db) "
                        "or leave it out for a journal file in --out.")
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable in practice
            return optuna.storages.RDBStorage(storage, heartbeat_interval=30, grace_period=120), storage
    except Exception as e:  # SQLAlchemy and driver errors
        raise UserError(f"--storage {storage.split('@')[-1]}: cannot open ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}).") from None


def _pruner(name: str):
    import optuna

    pruners = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
               "hyperband": lambda: optuna.pruners.HyperbandPruner(),
               "none": lambda: optuna.pruners.NopPruner()}
    if name not in pruners:
        raise UserError(f"--pruner {name}: use median, hyperband or none.")
    return pruners[name]()


def _fail_orphans(study) -> None:
    """Trials this machine started whose process is gone (killed): mark them failed, so a restarted study
    counts them and moves on (other processes' trials, here or elsewhere, are left alone)."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("host") != host:
            continue
        pid = t.user_attrs.get("pid")
        try:
            os.kill(int(pid), 0)
            continue  # still running
        except (ProcessLookupError, TypeError, ValueError):
            pass
        except PermissionError:
            continue
        study._storage.set_trial_user_attr(t._trial_id, "reason", "its process ended without finishing it (killed?)")
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


def _suggest(trial, space: dict) -> dict:
    import optuna.distributions as d

    params = {}
    for key, dist in space.items():
        if isinstance(dist, d.CategoricalDistribution):
            params[key] = trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, d.IntDistribution):
            params[key] = trial.suggest_int(key, dist.low, dist.high, log=dist.log)
        else:
            params[key] = trial.suggest_float(key, dist.low, dist.high, log=dist.log)
    return params


def _overrides(params: dict) -> list[str]:
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in params.items()]


def tune(preset: str, space: str | Path | dict, trials: int, out: str | Path, *, sets: list[str] = (),
         timeout: float | None = None, storage: str | None = None, study_name: str | None = None,
         pruner: str = "median", seed: int = 0, data_dir=None, progress: bool = True, say=print,
         enqueue: list[dict] = (), start_from_base: bool = False) -> TuneResult:
    """Run (or continue) a study until it holds `trials` finished trials (or `timeout` seconds pass).
    `enqueue`: parameter sets to try first, in order; `start_from_base` puts the base configuration's own values
    (the preset with `sets` applied) before them."""
    import optuna

    from genforge.methods import get_method
    from genforge.training import apply_overrides, read_raw, validate
    from genforge.training import train as run_training
    from genforge.training.loop import TrainingDiverged
    from genforge.tuning.space import base_point, parse_space

    if trials < 1:
        raise UserError(f"--trials must be at least 1; got {trials}.")
    out = Path(out)
    raw = read_raw(preset)
    family = raw.get("family", "gan")
    schema = get_method(family).Config
    raw = apply_overrides(raw, list(sets), schema)
    base = validate(raw)
    if not base.train.eval_every:
        raise UserError("Tuning scores each trial by its in-training evaluation: set train.eval_every (e.g. --set "
                        "train.eval_every=200) so that trials report scores the pruner can compare.")
    dist = parse_space(space, raw)
    enqueue = ([base_point(dist, base)] if start_from_base else []) + list(enqueue)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under `accelerate launch`: rank 0 owns the study
        import torch
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())  # the process group, as train() opens it
        if int(os.environ.get("RANK", "0")) != 0:
            return _follow(raw, schema, out, data_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store, where = _storage(storage, out)
    name = study_name or raw.get("name", "study")
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, trials // 3)))
    study = optuna.create_study(study_name=name, storage=store, direction="minimize", sampler=sampler,
                                pruner=_pruner(pruner), load_if_exists=True)
    _fail_orphans(study)
    for params in enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    evaluate_cache: dict = {}

    def evaluator(cfg):
        if get_method(cfg.family).self_evaluates:
            return None
        key = (cfg.data.dataset, repr(cfg.data.audio), cfg.train.eval_samples, cfg.train.seed)
        if key not in evaluate_cache:  # FID of images, or FD of clips for audio data
            from genforge.evaluation import training_evaluator

            evaluate_cache[key] = training_evaluator(cfg, data_dir, progress=False)
        return evaluate_cache[key]

    def objective(trial):
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        params = _suggest(trial, dist)
        run_dir = out / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run", str(run_dir))
        cfg = validate(apply_overrides(raw, _overrides(params), schema))
        pruned = {}

        def on_eval(step: int, score: float) -> bool:
            if not math.isfinite(score):
                return False
            trial.report(score, step)
            if trial.should_prune():
                pruned["at"] = step
                return True
            return False

        t = time.perf_counter()
        _broadcast({"params": params, "run": str(run_dir)})
        try:
            result = run_training(cfg, run_dir, data_dir=data_dir, progress=False, evaluate=evaluator(cfg),
                                  on_eval=on_eval, end_process_group=False)
        except (TrainingDiverged, UserError, RuntimeError, FloatingPointError, MemoryError) as e:
            trial.set_user_attr("reason", f"{type(e).__name__}: {str(e)[:300]}")
            raise
        trial.set_user_attr("seconds", round(time.perf_counter() - t, 1))
        trial.set_user_attr("steps", result.step)
        if pruned:
            trial.set_user_attr("reason", f"pruned at step {pruned['at']}")
            raise optuna.TrialPruned()
        if result.best_score is None or not math.isfinite(result.best_score):
            trial.set_user_attr("reason", "no finite in-training score")
            raise FloatingPointError("no finite in-training score")
        return result.best_score

    def stop_when_full(study, _trial) -> None:
        if _finished(study) >= trials:
            study.stop()

    def announce(study, trial) -> None:
        if progress:
            value = f"{trial.value:.4g}" if trial.value is not None else trial.user_attrs.get("reason", "-")
            say(f"trial {trial.number}: {trial.state.name.lower()} {value} "
                f"({', '.join(f'{k}={_fmt(v)}' for k, v in trial.params.items())})")

    try:
        if _finished(study) < trials:
            study.optimize(objective, timeout=timeout, callbacks=[announce, stop_when_full],
                           catch=(TrainingDiverged, UserError, RuntimeError, FloatingPointError, MemoryError))
    finally:
        _broadcast(None)  # the other ranks of `accelerate launch` stop waiting for trials
    return _report(study, raw, schema, out, where, progress)


def _broadcast(message):
    """Rank 0's trial (or None: no more trials) to the other ranks; nothing when not launched."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return message
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([message], from_process=0)[0]


def _follow(raw: dict, schema, out: Path, data_dir) -> TuneResult:
    """A rank other than 0: train each trial rank 0 announces, as its share of the data-parallel run (rank 0
    scores, reports and decides pruning; train() broadcasts the stop), until rank 0 says there are no more."""
    from genforge.methods import get_method
    from genforge.training import apply_overrides, train as run_training, validate

    while True:
        message = _broadcast(None)
        if message is None:
            return TuneResult("", "", out, [], None, None, [])
        cfg = validate(apply_overrides(raw, _overrides(message["params"]), schema))
        evaluate = None if get_method(cfg.family).self_evaluates else (lambda generate: 0.0)  # rank 0 scores
        try:
            run_training(cfg, Path(message["run"]), data_dir=data_dir, progress=False, evaluate=evaluate,
                         end_process_group=False)
        except UserError:
            pass  # rank 0 records why the trial failed



def _finished(study) -> int:
    return sum(t.state.name in FINISHED for t in study.get_trials(deepcopy=False))


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _report(study, raw: dict, schema, out: Path, where: str, progress: bool) -> TuneResult:
    from genforge.training import apply_overrides, validate

    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "value": t.value, "params": dict(t.params),
                     "run": t.user_attrs.get("run"), "seconds": t.user_attrs.get("seconds"),
                     "steps": t.user_attrs.get("steps"), "reason": t.user_attrs.get("reason")})
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r["params"]})
    with (out / "trials.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", "value", "seconds", "steps", *keys, "run", "reason"])
        for r in rows:
            w.writerow([r["number"], r["state"], r["value"], r["seconds"], r["steps"],
                        *[r["params"].get(k) for k in keys], r["run"], r["reason"]])
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best, best_path = None, None
    if complete:
        best = min(complete, key=lambda r: r["value"])
        tuned = apply_overrides(raw, _overrides(best["params"]), schema)
        tuned["name"] = f"{raw.get('name', 'tuned')}-tuned"
        tuned["description"] = (f"{raw.get('name', 'the preset')} with the best of {len(rows)} trials of study "
                                f"'{study.study_name}' (trial {best['number']}, score {best['value']:.4g})")
        validate(tuned)
        best_path = out / "best.yaml"
        best_path.write_text(yaml.safe_dump(tuned, sort_keys=False))
    return TuneResult(study.study_name, where, out, rows, best, best_path, _plots(study, out))


def _plots(study, out: Path) -> list[Path]:
    """The optimisation history and (with two or more finished trials and parameters) parameter importances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState

    written = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return written
    import warnings

    def save(ax, name: str) -> None:
        ax.figure.set_size_inches(7, 4)
        ax.figure.tight_layout()
        ax.figure.savefig(out / name, dpi=110)
        plt.close(ax.figure)
        written.append(out / name)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backend is marked experimental
        save(optuna.visualization.matplotlib.plot_optimization_history(study), "history.png")
        if len(complete) >= 2 and len(study.best_trial.params) >= 2:
            try:
                save(optuna.visualization.matplotlib.plot_param_importances(study), "importances.png")
            except (RuntimeError, ValueError):
                pass  # e.g. every trial with the same value: importances are undefined
    return written
