"""One-change recipe trials of `shakespeare-char-gpt-small`, each scored on the whole held-out split.

    python benchmarks/text_recipes.py --data-dir ../shared/data --steps 600                    # ~10 min
    python benchmarks/text_recipes.py --budget 60 --recipe lr=train.lr=1.5e-2 --recipe b16=train.batch_size=16

`--steps N` (the default, 600: about what 60 s buys on 2 cores) trains every recipe for N steps, its schedule
sized to them, so the loss says what a recipe learns per step whatever the box's speed at that minute (which
drifts by 20% here), and the median logged step time says what a step costs. A recipe pays at a wall-clock
budget when it learns enough more per step to cover its cost; `--budget S` checks that directly
(text_speed.train_for: `train.budget_minutes`), noisier. Each recipe is NAME=KEY=VALUE[,KEY=VALUE...]; the
preset runs first as the reference. One run each, in turn: compare within one run of this script, never
across days. Writes benchmarks/text_recipes-<cpu kind>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from machine import cpu_kind  # benchmarks/machine.py
from text_speed import train_for, train_steps

DEFAULT = ["adamw=model.optimizer=adamw", "batch48=train.batch_size=48", "lr7e3=train.lr=7e-3",
           "warmup100=model.warmup_steps=100", "floor0=model.min_lr_ratio=0.0", "layers3=model.n_layer=3"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("GENFORGE_DATA"))
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--budget", type=float, default=None, help="seconds: compare at a wall-clock budget instead")
    ap.add_argument("--recipe", action="append", help="NAME=KEY=VALUE[,KEY=VALUE]; default: a set of one-change trials")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out = args.out or Path(__file__).resolve().parent / f"text_recipes-{cpu_kind()}.json"
    report = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", *sys.argv]), "budget_s": args.budget,
              "steps": None if args.budget else args.steps,
              "trials": []}
    for spec in ["preset=", *(args.recipe or DEFAULT)]:
        name, _, sets = spec.partition("=")
        overrides = [s for s in sets.split(",") if s]
        r = (train_for(args.budget, args.data_dir, overrides) if args.budget
             else train_steps(args.steps, args.data_dir, overrides))
        r.pop("sample_head")
        report["trials"].append({"name": name, "overrides": overrides, **r})
        print(json.dumps(report["trials"][-1]), flush=True)
        out.write_text(json.dumps(report, indent=2) + "\n")  # after every trial: a stopped run keeps what it measured


if __name__ == "__main__":
    main()
