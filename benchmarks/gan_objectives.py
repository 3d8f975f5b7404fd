"""GAN objectives against `mnist-dcgan` at the same epochs, and DiffAugment on 10% of MNIST (issue 10's aims).

1. Each preset trains `--epochs` epochs on MNIST and is scored by `genforge eval` (classifier-feature FID,
   precision/recall; `--n` samples against the test split). Aim: every new preset's FID within 1.5x of
   mnist-dcgan's.
2. `--diffaugment-preset` trains on 6,000 images (data.subset, 10% of MNIST) for `--da-epochs` epochs,
   with and without model.diffaugment; aim: augmentation cuts FID by at least 30%.

    python benchmarks/gan_objectives.py --data-dir ../shared/data --out /tmp/gan-bench
Quality figures do not depend on the machine being idle; the seconds do.
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

KEEP = ("fid", "kid", "precision", "recall", "density", "coverage", "classes_hit", "class_entropy")


def run(name: str, preset: str, overrides: list[str], args) -> dict:
    out = Path(args.out) / name
    if out.exists():
        shutil.rmtree(out)
    cfg = validate(apply_overrides(read_raw(preset), overrides, None))
    t = time.perf_counter()
    res = train(cfg, out, data_dir=args.data_dir, progress=False)
    seconds = time.perf_counter() - t
    report = evaluate_run(out, n=args.n, data_dir=args.data_dir, seed=0, select="last")
    row = {"name": name, "preset": preset, "overrides": overrides, "steps": res.step,
           "train_seconds": round(seconds, 1), **{k: round(report["metrics"][k], 4) for k in KEEP}}
    shutil.copy(out / "samples" / "final.png", Path(args.grids) / f"gan-{name}.png")
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--out", default="/tmp/gan-bench")
    p.add_argument("--grids", default=str(Path(__file__).parent))
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--presets", default="mnist-dcgan,mnist-hinge-sn,mnist-wgangp")
    p.add_argument("--diffaugment-preset", default="mnist-dcgan")
    p.add_argument("--da-policy", default="translation,cutout")
    p.add_argument("--da-epochs", type=float, default=5)
    p.add_argument("--skip-objectives", action="store_true")
    p.add_argument("--skip-diffaugment", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    path = Path(args.json or Path(__file__).parent / f"gan_objectives-{cpu_kind()}.json")
    out = json.loads(path.read_text()) if path.exists() else {}
    out["machine"] = cpu_kind()
    common = ["train.sample_every=100000", "train.checkpoint_every=100000", "train.eval_every=null"]
    if not args.skip_objectives:
        rows = [run(name, name, [f"train.epochs={args.epochs}", "train.max_steps=null", *common], args)
                for name in args.presets.split(",")]
        base = rows[0]["fid"]
        for r in rows:
            r["fid_vs_first"] = round(r["fid"] / base, 3)
        out["objectives"] = {"epochs": args.epochs, "n": args.n, "rows": rows}
    if not args.skip_diffaugment:
        small = [f"train.epochs={args.da_epochs}", "train.max_steps=null", "data.subset=6000", *common]
        plain = run("subset6000-plain", args.diffaugment_preset, small, args)
        aug = run("subset6000-diffaugment", args.diffaugment_preset, [*small, f"model.diffaugment={args.da_policy}"], args)
        out["diffaugment"] = {"epochs": args.da_epochs, "n": args.n, "policy": args.da_policy, "plain": plain,
                              "augmented": aug, "fid_cut": round(1 - aug["fid"] / plain["fid"], 3)}
    path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
