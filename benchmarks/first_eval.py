"""How long the first `genforge eval` takes on a machine with an empty evaluator cache: with the evaluator genforge
ships (copied into the cache) against training it on first use, as every first eval did before issue 30.

    python benchmarks/first_eval.py --data-dir ../shared/data --out /work/bench/first-eval

Trains three tiny runs (a 30-step quickstart GAN, a 5-step fsdd-specgan, a 5-step moving-mnist-gan), then times
`genforge eval RUN` for each in a fresh evaluator cache, once as installed and once with the shipped weights hidden.
Run it on an idle box: the figures are wall-clock seconds. Writes first_eval-<cpu kind>.json beside this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import cpu_kind  # noqa: E402

RUNS = {  # name -> (preset, training overrides, eval arguments)
    "images (mnist-v1)": ("quickstart", ["--max-steps", "30"], ["--n", "1000"]),
    "speech (fsdd-v1)": ("fsdd-specgan", ["--max-steps", "5", "--set", "train.budget_minutes=null"], ["--n", "300"]),
    "video (moving-mnist-v1-32)": ("moving-mnist-gan", ["--max-steps", "5", "--set", "train.budget_minutes=null"],
                                   ["--n", "64"]),
}
# `genforge eval` with genforge.evaluation.stored.SHIPPED pointed at an empty folder: what a first eval did before
# the evaluators shipped (train on first use)
WITHOUT_SHIPPED = ("import sys, tempfile, pathlib; import genforge.evaluation.stored as s; "
                   "s.SHIPPED = pathlib.Path(tempfile.mkdtemp()); from genforge.cli import main; "
                   "sys.argv = ['genforge'] + sys.argv[1:]; main()")


def genforge(args: list[str], env: dict, shipped: bool = True) -> float:
    cmd = ([sys.executable, "-m", "genforge.cli"] if shipped else [sys.executable, "-c", WITHOUT_SHIPPED]) + args
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{p.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="work folder for the tiny runs")
    args = ap.parse_args()
    env = {**os.environ, "GENFORGE_DATA": str(args.data_dir.resolve())}
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, (preset, train_args, eval_args) in RUNS.items():
        run = args.out / preset
        if not (run / "model.safetensors").exists():
            genforge(["train", preset, "--out", str(run), "--seed", "0", *train_args], env)
        row = {}
        for mode, shipped in (("shipped", True), ("trained on first use", False)):
            with tempfile.TemporaryDirectory() as root:
                seconds = genforge(["eval", str(run), "--no-progress", *eval_args],
                                   {**env, "GENFORGE_EVALUATORS": root}, shipped=shipped)
            row[mode] = round(seconds, 1)
            print(f"{name}: {mode}: {seconds:.1f} s", flush=True)
        row["ratio"] = round(row["trained on first use"] / row["shipped"], 1)
        rows[name] = row
        shutil.rmtree(run / "eval.json", ignore_errors=True)
    out = HERE / f"first_eval-{cpu_kind()}.json"
    from genforge import precision as prec

    import torch

    machine = {"cpu": prec.cpu_model(), "kind": cpu_kind(), "cores": os.cpu_count(), "torch": torch.__version__,
               "threads": torch.get_num_threads()}
    out.write_text(json.dumps({"machine": machine, "first_eval_seconds": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
