"""Sample quality of `mnist-dcgan` and `mnist-cgan` after 1, 5 and 20 epochs, measured by `genforge eval`.

    python benchmarks/quality.py --data-dir ../shared/data                        # the full benchmark
    python benchmarks/quality.py --data-dir ../shared/data --epochs-list 0.02,0.05 --n 500 --out /tmp/q
                                                                                   # a quick check that it works

Each preset is trained once, in stages: to epoch 1, then resumed to 5, then to 20. Every stage ends
with the run's artifact (the EMA generator, BatchNorm re-estimated, as `genforge.load` sees it), which
is evaluated before training resumes. A resumed GAN run ends with the same weights as one that never
stopped (tests/test_training.py checks this; the GAN has no LR schedule tied to the run length), so
the epoch-1 and epoch-5 rows are the states of one 20-epoch run, and the whole benchmark costs 20
epochs per preset (not 1 + 5 + 20) plus the evaluations: at the presets' ~5 minutes per 5 epochs on 2
idle CPU cores that is ~40 minutes of training and ~2 minutes of evaluation in all (minutes on a GPU).

Metrics: FID, KID, IS, precision/recall, density/coverage, conditional accuracy (class-conditional
preset), classes hit and memorization, on 10,000 samples against the MNIST test set, in the feature
space of genforge's MNIST evaluator (see genforge/evaluation). A real-data row (10,000 training
images scored the same way) gives the floor. Writes benchmarks/quality.md, quality.json and a
100-sample grid per row (benchmarks/quality-<preset>-ep<epochs>.png).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
COLUMNS = [("fid", "FID", ".2f"), ("kid", "KID", ".4f"), ("is", "IS", ".2f"), ("precision", "precision", ".3f"),
           ("recall", "recall", ".3f"), ("density", "density", ".3f"), ("coverage", "coverage", ".3f"),
           ("conditional_accuracy", "cond. acc.", ".3f"), ("classes_hit", "classes hit", "d"),
           ("memorization", "memorization", ".4f")]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{os.cpu_count()} CPU cores ({cpu}), {torch.get_num_threads()} torch threads"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return f"{text}, torch {torch.__version__}"


def cell(value, fmt: str) -> str:
    if value is None:
        return "–"
    return format(value, fmt)


def save_samples(run: Path, path: Path) -> None:
    import genforge
    from genforge.visual import save_grid

    model = genforge.load(run, select="last")
    labels = [d for d in range(len(model.classes)) for _ in range(10)][:100] if model.conditional else None
    save_grid(model.generate(100, seed=7, labels=labels), path, nrow=10, scale=2)


def write_markdown(report: dict, path: Path) -> None:
    ev = report["evaluator"]
    lines = [
        "# Sample quality: mnist-dcgan and mnist-cgan",
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}",
        f"- machine: {report['machine']}",
        f"- evaluator: `{ev['id']}` (MNIST test accuracy {ev['test_accuracy']:.2%}); "
        f"{report['n']} samples per row, seed {report['seed']}, reference: MNIST test set",
        "- KID is unscaled (multiply by 1000 for the usual x10^3 figures); memorization is the share of samples "
        "nearer a training image than 99% of real test images are (~0.01 for new real images, 1 for copies).",
        "",
        "| row | epochs | steps | train time (s, cumulative) | " + " | ".join(c[1] for c in COLUMNS) + " | samples |",
        "|" + "---|" * (len(COLUMNS) + 5),
    ]
    for row in report["rows"]:
        m = row["metrics"]
        grid = f"![{row['name']}]({row['grid']})" if row.get("grid") else ""
        lines.append(f"| {row['name']} | {cell(row.get('epochs'), 'g')} | {cell(row.get('steps'), 'd')} | "
                     f"{cell(row.get('train_seconds'), '.0f')} | "
                     + " | ".join(cell(m.get(key), fmt) for key, _, fmt in COLUMNS) + f" | {grid} |")
    earlier = {(row["name"], row["command"], row["date"]) for row in report["rows"] if "command" in row}
    for name, command, date in sorted(earlier):
        lines += ["", f"The {name} rows are kept from an earlier run: `{command}` ({date})."]
    lines += ["", "Full figures (KID/IS spread, class counts, timings): `quality.json`.", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("GENFORGE_DATA", str(HERE.parent.parent / "shared" / "data")))
    p.add_argument("--presets", default="mnist-dcgan,mnist-cgan")
    p.add_argument("--epochs-list", default="1,5,20", help="epochs at which to evaluate, ascending")
    p.add_argument("--n", type=int, default=10_000, help="samples per evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="/tmp/genforge-quality", help="where the runs are trained (replaced)")
    p.add_argument("--out", default=str(HERE), help="folder for quality.md, quality.json and the grids")
    p.add_argument("--keep-other-rows", action="store_true",
                   help="keep the rows of presets not re-run now from the existing quality.json (each keeps its own "
                        "command and date), e.g. to re-measure one changed preset")
    a = p.parse_args()

    from genforge.data import load_image_dataset
    from genforge.evaluation import evaluate_images, evaluate_run, load_evaluator
    from genforge.methods import get_method
    from genforge.training import apply_overrides, read_raw, train, validate

    epochs_list = sorted(float(e) for e in a.epochs_list.split(","))
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    evaluator = load_evaluator("mnist", a.data_dir, progress=True)
    report = {
        "command": "python benchmarks/quality.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "machine": machine(), "n": a.n, "seed": a.seed,
        "evaluator": {"id": evaluator.id, "test_accuracy": evaluator.test_accuracy,
                      "train_seconds": evaluator.config["training"]["seconds"],
                      "device": evaluator.config["training"]["device"]},
        "rows": [],
    }

    kept = []
    if a.keep_other_rows and (out / "quality.json").exists():
        old = json.loads((out / "quality.json").read_text())
        kept = [{"command": old["command"], "date": old["date"], **row} for row in old["rows"]
                if "epochs" in row and row["name"] not in a.presets.split(",")]

    train_set = load_image_dataset("mnist", a.data_dir, "train")
    pick = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(a.seed))[:a.n]
    real = evaluate_images(train_set.images[pick], evaluator, labels=train_set.labels[pick], reference="test",
                           seed=a.seed)
    # real training images are, by definition, copies of training images: their memorization is 1
    report["rows"].append({"name": "real MNIST train images", **real})
    print(json.dumps({"real": real["metrics"]}), flush=True)

    for preset in a.presets.split(","):
        run = work / preset
        shutil.rmtree(run, ignore_errors=True)
        seconds = 0.0
        for i, epochs in enumerate(epochs_list):
            raw = apply_overrides(read_raw(preset), [f"train.epochs={epochs}", "train.max_steps=null",
                                                     f"train.seed={a.seed}", "train.log_every=100"],
                                  get_method("gan").Config)
            t = time.perf_counter()
            result = train(validate(raw), run, data_dir=a.data_dir, resume=i > 0, progress=False)
            seconds += time.perf_counter() - t
            t = time.perf_counter()
            ev = evaluate_run(run, n=a.n, data_dir=a.data_dir, seed=a.seed, select="last", write=True)
            tag = f"quality-{preset}-ep{epochs:g}"
            save_samples(run, out / f"{tag}.png")
            shutil.copy(run / "eval.json", work / f"{tag}.eval.json")
            row = {"name": preset, "epochs": epochs, "steps": result.step, "train_seconds": round(seconds, 1),
                   "images_per_sec": round(result.images_per_second, 1), "eval_seconds": round(time.perf_counter() - t, 1),
                   "grid": f"{tag}.png", "metrics": ev["metrics"], "details": ev["details"]}
            report["rows"].append(row)
            print(json.dumps({k: row[k] for k in ("name", "epochs", "steps", "train_seconds", "metrics")}), flush=True)
            full = {**report, "rows": report["rows"] + kept}
            (out / "quality.json").write_text(json.dumps(full, indent=2) + "\n")
            write_markdown(full, out / "quality.md")
    print(f"wrote {out / 'quality.md'}")


if __name__ == "__main__":
    main()
