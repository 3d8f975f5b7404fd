"""Train the evaluators genforge ships inside the package, with a fixed seed, and record what they reach.

    python scripts/ship_evaluators.py --data-dir ../shared/data

Writes src/genforge/evaluation/shipped/<name>/{config.json,model.safetensors} and shipped/README.md (test accuracy,
sha256, training time, machine). Only the small evaluators ship: MNIST, the spoken digits (FSDD) and Moving-MNIST
at the 32-px frames of the CPU presets (a few MB together). CIFAR-10's are trained on first use: an hour on a CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
from pathlib import Path

import torch

from genforge.evaluation import train_audio_evaluator, train_evaluator
from genforge.evaluation.stored import CONFIG_FILE, SHIPPED, WEIGHTS_FILE
from genforge.evaluation.video_evaluator import train_video_evaluator

SHIPPED_SET = {  # name -> how to train it
    "mnist-v1": lambda data, root: train_evaluator("mnist", data, root=root, seed=0, progress=True),
    "fsdd-v1": lambda data, root: train_audio_evaluator("fsdd", data, root=root, seed=0, progress=True),
    "moving-mnist-v1-32": lambda data, root: train_video_evaluator({"size": 32, "digits": 1}, data, root=root, seed=0,
                                                                   progress=True),
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, required=True, help="the folder holding mnist/ and fsdd/")
    ap.add_argument("--only", nargs="*", choices=sorted(SHIPPED_SET), help="train just these")
    args = ap.parse_args()
    rows = []
    for name in args.only or SHIPPED_SET:
        with tempfile.TemporaryDirectory() as root:
            ev = SHIPPED_SET[name](args.data_dir, root)
            assert ev.directory.name == name, (ev.directory.name, name)
            out = SHIPPED / name
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            for f in (CONFIG_FILE, WEIGHTS_FILE):
                shutil.copyfile(ev.directory / f, out / f)
            t = ev.config["training"]
            rows.append(f"| {name} | {ev.test_accuracy:.2%} | {t.get('steps', '?')} steps, {t['seconds']} s, "
                        f"{t.get('precision', 'fp32')} | `{ev.config['weights_sha256']}` | "
                        f"{(out / WEIGHTS_FILE).stat().st_size / 1e6:.2f} MB |")
            print(rows[-1], flush=True)
    readme = SHIPPED / "README.md"
    kept = [r for r in (readme.read_text().splitlines() if readme.exists() else [])
            if r.startswith("| ") and not r.startswith("| name") and r.split(" | ")[0][2:] not in (args.only or SHIPPED_SET)]
    readme.write_text(
        "# Evaluators shipped with genforge\n\n"
        "Trained by `python scripts/ship_evaluators.py --data-dir ../shared/data` (seed 0) on "
        f"{cpu_name()} ({platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}; `genforge eval` copies "
        "one into the evaluator cache on first use.\n"
        "Test accuracy is on the dataset's test split (frame accuracy for Moving-MNIST).\n\n"
        "Credits: MNIST by Y. LeCun, C. Cortes and C. J. C. Burges; the Free Spoken Digit Dataset by Z. Jackson et al. "
        "(CC BY-SA 4.0; the fsdd-v1 weights are trained on it and shared under the same terms); Moving-MNIST clips are "
        "made by genforge from MNIST digits.\n\n"
        "| name | test accuracy | training | weights sha256 | size |\n|---|---|---|---|---|\n"
        + "\n".join(sorted(kept + rows)) + "\n")


if __name__ == "__main__":
    main()
