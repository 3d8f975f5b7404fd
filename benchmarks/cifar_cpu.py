"""The CPU-sized CIFAR-10 presets after their 30 minutes (issue 10's aims), on the JPEG-75 copy of CIFAR-10.

Each preset trains for `--minutes` of wall-clock time (train.max_minutes; the epoch count is raised so the
time budget, not the epochs, ends the run), then `genforge eval` scores it: FID/KID/precision/recall/density/
coverage from `--n` samples against the test split in the CIFAR-10 evaluator's feature space, and for the
VAE the test NLL in bits per dimension (importance sampling, k=100 on the first 1000 test images).

    python benchmarks/cifar_cpu.py --data-dir ../shared/data --out /tmp/cifar-bench
Throughput and steps depend on the machine and on it being idle; say which in RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from genforge.evaluation import evaluate_run  # noqa: E402
from genforge.training import apply_overrides, read_raw, train, validate  # noqa: E402
from machine import cpu_kind  # noqa: E402

KEEP = ("fid", "kid", "precision", "recall", "density", "coverage", "classes_hit", "class_entropy",
        "nll_bpd", "neg_elbo_bpd", "rec_bpd", "kl_bpd", "reconstruction_mse")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--out", default="/tmp/cifar-bench")
    p.add_argument("--grids", default=str(Path(__file__).parent))
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--presets", default="cifar10-dcgan-cpu,cifar10-sngan-cpu,cifar10-vae-cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    path = Path(args.json or Path(__file__).parent / f"cifar_cpu-{cpu_kind()}.json")
    out = json.loads(path.read_text()) if path.exists() else {}
    out.update(machine=cpu_kind(), minutes=args.minutes, n=args.n)
    rows = out.setdefault("rows", {})
    for preset in args.presets.split(","):
        run_dir = Path(args.out) / preset
        if run_dir.exists():
            shutil.rmtree(run_dir)
        cfg = validate(apply_overrides(read_raw(preset), [f"train.max_minutes={args.minutes}", "train.epochs=100",
                                                          "train.max_steps=null"], None))
        t = time.perf_counter()
        res = train(cfg, run_dir, data_dir=args.data_dir, progress=False)
        seconds = time.perf_counter() - t
        t = time.perf_counter()
        report = evaluate_run(run_dir, n=args.n, data_dir=args.data_dir, seed=0)
        metrics = report["metrics"]
        row = {"preset": preset, "steps": res.step, "images_seen": res.step * cfg.train.batch_size,
               "epochs_seen": round(res.step * cfg.train.batch_size / 50_000, 2), "train_seconds": round(seconds, 1),
               "eval_seconds": round(time.perf_counter() - t, 1),
               **{k: round(metrics[k], 4) for k in KEEP if k in metrics}}
        for k in ("likelihood_k", "likelihood_n", "nll_std_error"):
            if k in report.get("details", {}):
                row[k] = report["details"][k]
        shutil.copy(run_dir / "samples" / "final.png", Path(args.grids) / f"cifar-{preset}.png")
        rows[preset] = row
        print(json.dumps(row), flush=True)
        path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
