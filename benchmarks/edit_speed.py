"""How long one edit takes: a 28x28 inpainting at default settings (the aim: <= 1 s on 2 cores), and the other
edits and samplers beside it. Run on an idle box:

    python benchmarks/edit_speed.py --run RUNS/mnist-ddpm --sr RUNS/mnist-sr --data-dir ../shared/data [--export EXPORT_DIR]

Prints a table and writes benchmarks/edit_speed.json. Times are the median of --repeats calls after one warm-up
call, in process (the model loaded once); the whole command (`genforge edit`) is timed once as well.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="an MNIST diffusion run (mnist-ddpm)")
    ap.add_argument("--sr", help="a super-resolution run (mnist-sr)")
    ap.add_argument("--export", help="an export of --run, timed on the torch-free runtime")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--data-dir", default=None, help="dataset folder (default: $GENFORGE_DATA)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("edit_speed.json")))
    args = ap.parse_args()

    import torch

    import genforge
    from genforge.data import load_image_dataset

    test = load_image_dataset("mnist", args.data_dir, split="test").images[:1].numpy()
    mask = np.zeros((28, 28), bool)
    mask[14:] = True
    gen = genforge.load(args.run)
    gen.use_mark_key(False)
    rows = {"machine": {"threads": torch.get_num_threads(), "precision": gen.precision.used}}
    defaults = gen.edit_options("inpaint")
    rows["defaults"] = {k: v["default"] for k, v in defaults.items()}
    rows["inpaint_default_s"] = median_time(lambda: gen.inpaint(test, mask, seed=0), args.repeats)
    for sampler in ("unipc", "dpmpp2m", "ddim"):
        rows[f"inpaint_{sampler}_20x2_s"] = median_time(lambda: gen.inpaint(test, mask, seed=0, sampler=sampler, steps=20),
                                                       args.repeats)
    rows["inpaint_resample1_s"] = median_time(lambda: gen.inpaint(test, mask, seed=0, resample=1), args.repeats)
    rows["inpaint_batch16_per_image_s"] = median_time(
        lambda: gen.inpaint(np.repeat(test, 16, 0), mask, seed=0), max(3, args.repeats // 3)) / 16
    rows["vary_0.6_s"] = median_time(lambda: gen.vary(test, strength=0.6, seed=0), args.repeats)
    rows["generate_1_s"] = median_time(lambda: gen.generate(1, seed=0), args.repeats)
    if args.sr:
        sr = genforge.load(args.sr)
        sr.use_mark_key(False)
        low = test[:, ::2, ::2]
        rows["upscale_s"] = median_time(lambda: sr.upscale(low, seed=0), args.repeats)
    if args.export:
        from genforge.runtime import load as load_export

        ex = load_export(args.export)
        ex.use_mark_key(False)
        rows["runtime_inpaint_default_s"] = median_time(lambda: ex.inpaint(test, mask, seed=0), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:  # the whole command, cold, as a user runs it
        from PIL import Image

        Image.fromarray(test[0, ..., 0]).save(f"{tmp}/in.png")
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(f"{tmp}/mask.png")
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "genforge.cli", "edit", args.run, "--in", f"{tmp}/in.png", "--mask",
                        f"{tmp}/mask.png", "--bw-mask", "--out", f"{tmp}/out.png", "--no-mark", "--seed", "0"],
                       check=True, capture_output=True)
        rows["command_edit_s"] = time.perf_counter() - t
    for k, v in rows.items():
        print(f"{k:32s} {v if not isinstance(v, float) else f'{v:.3f}'}")
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
