"""Issue 15's tuning benchmark: does a pruned Optuna study find a configuration at least as good as the
hand-tuned preset, for at most half the compute of the same study without pruning?

    python benchmarks/tune.py gpt --data-dir ../shared/data --trials 20 --minutes 1
        shakespeare-char-gpt-small, a 60-s wall-clock budget per trial (train.budget_minutes: each trial's schedule
        sized to it), a space over learning rate, warm-up, width and dropout; the preset itself (same budget) is
        the reference. Trials score their best validation loss on 200 windows strided across the whole held-out
        split (the in-training estimate); the best trial's and the preset's final weights are also scored on all
        of it (`genforge eval`'s loss).
    python benchmarks/tune.py dcgan --data-dir ../shared/data --trials 20 --epochs 1
        mnist-dcgan at 1 epoch per trial, scored by in-training FID; space over the learning rates, beta1, widths.

Each runs the study twice (median pruning, then none; same seed, same space), records every trial's score,
state and seconds, and compares: best value (pruned against unpruned against the preset) and total trial
seconds (pruned / unpruned). Time budgets make it load-dependent: run it on an idle box.
Writes benchmarks/tune-<cpu kind>.json (or --json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_kind  # noqa: E402

HERE = Path(__file__).resolve().parent
SPACES = {
    "gpt": ("shakespeare-char-gpt-small", {
        "train.lr": {"log_uniform": [3.0e-4, 1.0e-2]},
        "model.warmup_steps": {"int": [0, 200]},
        "model.n_embd": {"choice": [96, 128, 192]},
        "model.dropout": {"uniform": [0.0, 0.3]},
    }),
    "dcgan": ("mnist-dcgan", {
        "train.lr": {"log_uniform": [5.0e-5, 1.0e-3]},
        "train.lr_d": {"log_uniform": [5.0e-5, 1.0e-3]},
        "train.beta1": {"uniform": [0.0, 0.9]},
        "model.g_width": {"choice": [32, 64]},
    }),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=sorted(SPACES))
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--minutes", type=float, default=1.0, help="gpt: wall-clock budget per trial")
    p.add_argument("--epochs", type=float, default=1.0, help="dcgan: epochs per trial")
    p.add_argument("--eval-every", type=int, default=None, help="steps between in-training evaluations")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--work", default="/tmp/genforge-tune-bench")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pruners", default="median,none", help="the studies to run, in order (the first against the second)")
    p.add_argument("--start-from-base", action="store_true", help="each study's first trial is the preset's values")
    p.add_argument("--no-preset", action="store_true", help="skip the preset's reference run")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    from genforge.training import apply_overrides, read_raw, train, validate
    from genforge.tuning import tune

    preset, space = SPACES[args.what]
    if args.what == "gpt":
        sets = [f"train.budget_minutes={args.minutes}", "train.max_steps=100000", "train.epochs=null",
                f"train.eval_every={args.eval_every or 100}", "train.checkpoint_every=100000"]
    else:
        sets = [f"train.epochs={args.epochs}", "train.max_steps=null", f"train.eval_every={args.eval_every or 100}",
                "train.eval_samples=2000", "train.checkpoint_every=100000"]
    work = Path(args.work) / (args.what + ("-from-base" if args.start_from_base else ""))
    shutil.rmtree(work, ignore_errors=True)
    rows = {}
    raw = apply_overrides(read_raw(preset), sets)
    t = time.perf_counter()
    evaluate = None
    if args.what == "dcgan":
        from genforge.evaluation import TrainingFID

        evaluate = TrainingFID("mnist", args.data_dir, n=2000, seed=0, progress=False)
    def whole_split(run) -> float | None:
        """gpt: the best weights' loss on the whole held-out split (what `genforge eval` reports)."""
        if args.what != "gpt" or run is None:
            return None
        import genforge
        from genforge.evaluation.text import text_metrics

        return round(text_metrics(genforge.load(run, select="best"), args.data_dir)["val_loss"], 4)

    if not args.no_preset:
        ref = train(validate(raw), work / "preset", data_dir=args.data_dir, progress=False, evaluate=evaluate)
        rows["preset"] = {"best": ref.best_score, "seconds": round(time.perf_counter() - t, 1), "steps": ref.step,
                          "whole_split": whole_split(work / "preset")}
        print(json.dumps(rows["preset"]), flush=True)
    pruners = args.pruners.split(",")
    for pruner in pruners:
        t = time.perf_counter()
        result = tune(preset, space, args.trials, work / pruner, sets=sets, pruner=pruner, seed=args.seed,
                      data_dir=args.data_dir, progress=True, start_from_base=args.start_from_base)
        seconds = sum(r["seconds"] or 0 for r in result.trials)
        rows[pruner] = {"best": result.best["value"] if result.best else None,
                        "best_params": result.best["params"] if result.best else None,
                        "best_whole_split": whole_split(result.best.get("run")) if result.best else None,
                        "trial_seconds": round(seconds, 1), "wall_seconds": round(time.perf_counter() - t, 1),
                        "states": {s: sum(r["state"] == s for r in result.trials) for s in ("COMPLETE", "PRUNED", "FAIL")},
                        "trials": result.trials}
        print(json.dumps({k: v for k, v in rows[pruner].items() if k != "trials"}), flush=True)
    if len(pruners) > 1:
        a, b = rows[pruners[0]], rows[pruners[1]]
        rows["pruned_compute_share"] = round(a["trial_seconds"] / max(b["trial_seconds"], 1e-9), 3)
        if a["best"] is not None and b["best"] is not None:
            rows["pruned_best_vs_unpruned"] = round(a["best"] / b["best"] - 1, 4)
    path = Path(args.json or HERE / f"tune-{cpu_kind()}.json")
    results = json.loads(path.read_text()) if path.exists() else {}
    results[args.what + ("-from-base" if args.start_from_base else "")] = {"command": "python benchmarks/tune.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
                          "cpu": cpu_kind(), **rows}
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
