"""Video sampling speed (issue 25's aim: one 16-frame 64x64 clip in <= 2 s on 2 cores with the fastest family at
default settings). Times `genforge.load(run).generate(1)` after a warm-up, per run and per thread count, at the
run's own size and at 16 frames; a run of each full-size (-gpu) preset, trained for one step, stands in for the
64x64x16 networks (speed does not depend on the weights). Also times the whole `genforge sample ... --out x.mp4`
command.

    python benchmarks/video_speed.py --runs runs/mm-gan runs/mm-diffusion

Run it on an idle box: two CPU jobs at once slow each other several-fold.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_kind  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def full_size_run(preset: str, root: Path) -> str:
    """A `preset` run trained one step (batch 2): the full-size network with untrained weights."""
    from genforge.training import train
    from genforge.training.config import read_raw, validate

    raw = read_raw(preset)
    raw["train"].update(max_steps=1, epochs=None, budget_minutes=None, batch_size=2, sample_every=10**6,
                        checkpoint_every=10**6, eval_every=None, mixed_precision="no")
    raw["data"]["video"]["clips"] = 64
    return str(train(validate(raw), root / preset, SHARED_DATA, progress=False).run_dir)


def time_generate(run: str, threads: int, frames: int | None) -> dict:
    import genforge

    torch.set_num_threads(threads)
    gen = genforge.load(run, precision="auto")
    gen.use_mark_key(False)
    opts = {"frames": frames} if frames else {}
    gen.generate(1, seed=0, labels=0, **opts)  # warm-up
    times = []
    for seed in range(1, 4):
        t = time.perf_counter()
        clip = gen.generate(1, seed=seed, labels=seed % 10, **opts)
        times.append(time.perf_counter() - t)
    return {"run": run, "family": gen.meta["family"], "threads": threads, "precision": gen.precision.used,
            "clip": list(clip.shape[1:4]), "seconds_median": round(sorted(times)[1], 3),
            "options": gen.options() and {k: v["default"] for k, v in gen.options().items()}}


def time_command(run: str, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "genforge.cli", "sample", run, "--n", "1", "--label", "3",
                            "--out", f"{d}/x.mp4", "--seed", "0", "--no-mark"], capture_output=True, text=True, env=env)
        took = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(p.stderr)
    return round(took, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="*", default=[])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    result = {"machine": cpu_kind(), "torch": torch.__version__, "generate": [], "command": []}
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(r, None) for r in args.runs] + [(r, 16) for r in args.runs]
        runs += [(full_size_run("moving-mnist-gan-gpu", Path(tmp)), None)]  # the fastest family at 64x64x16
        for run, frames in runs:
            for threads in (1, 2):
                r = time_generate(run, threads, frames)
                result["generate"].append(r)
                print(f"{r['family']} {run} {threads} thread(s) {r['precision']}: one {'x'.join(map(str, r['clip']))} "
                      f"clip in {r['seconds_median']} s", flush=True)
        for run in args.runs:
            s = time_command(run, 2)
            result["command"].append({"run": run, "threads": 2, "seconds": s})
            print(f"genforge sample {run} --n 1 --out x.mp4: {s} s as a command (2 threads)", flush=True)
    path = Path(args.json or Path(__file__).parent / f"video_speed-{cpu_kind()}.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
