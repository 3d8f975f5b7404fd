"""Issue 24's spoken-digit evaluator, measured: trains it from scratch with its recipe and seed on the FSDD train
split (2,700 clips), states its digit and speaker accuracy on the official test split (300 clips) and its
training time, then what `genforge eval` reports for real and degraded real clips, so generated clips' figures
have a scale:

- floor: the real test clips scored as if generated (their FID/KID against 300 training clips), as eval.json's
  "floor";
- train300: 300 other real training clips scored as generated clips are (memorization 1.0: they are copies);
- griffinlim: those clips through the spectrogram codec and back (fast Griffin-Lim, 32 iterations): the best a
  spectrogram model can sound;
- mulaw8: those clips rounded to 8-bit mu-law: the best a WaveNet can sound;
- noise20db / noise10db: with white noise at 20 / 10 dB SNR.

    python benchmarks/audio_classifier.py --data-dir ../shared/data [--root DIR] [--seed 0] [--no-metrics]

Writes benchmarks/audio_classifier-<cpu kind>.json (or --json) and prints the figures. Run it alone: it is a
CPU-bound training job.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_kind  # noqa: E402


def degraded_sets(train, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Real training clips, 30 of each digit (in i % 10 order, as `genforge eval` asks for them), and degraded copies."""
    from genforge.audio.codec import SpectrogramCodec
    from genforge.audio.mulaw import mulaw_decode, mulaw_encode

    rng = np.random.default_rng(seed + 1)  # not the floor's draw
    per_digit = [rng.choice(np.flatnonzero(train.labels == d), 30, replace=False) for d in range(10)]
    idx = np.array([per_digit[i % 10][i // 10] for i in range(300)])
    x, y = train.clips[idx], train.labels[idx]
    codec = SpectrogramCodec()
    stats = codec.fit_stats(codec.log_magnitude(train.clips))
    rms = np.sqrt(np.mean(x**2, axis=1, keepdims=True))
    noise = rng.standard_normal(x.shape).astype(np.float32)
    return {
        "train300": (x, y),
        "griffinlim": (codec.decode(codec.encode(x, stats), stats, iters=32, seed=seed), y),
        "mulaw8": (mulaw_decode(mulaw_encode(x)), y),
        "noise20db": (np.clip(x + noise * rms * 10 ** (-20 / 20), -1, 1), y),
        "noise10db": (np.clip(x + noise * rms * 10 ** (-10 / 20), -1, 1), y),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="folder holding fsdd/ (default: $GENFORGE_DATA)")
    p.add_argument("--root", default=None, help="where to store the trained evaluator (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=float, default=None, help="override the recipe's epochs")
    p.add_argument("--no-metrics", action="store_true", help="only train and state the accuracy")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    import torch

    from genforge.data.audio import load_audio_dataset
    from genforge.evaluation import AudioRecipe, evaluate_clips, train_audio_evaluator
    from genforge.evaluation.audio_classifier import AUDIO_RECIPES

    recipe: AudioRecipe = AUDIO_RECIPES["fsdd"]
    load_before = os.getloadavg()[0]  # the box is shared: say how busy it was while the time was taken
    t = time.perf_counter()
    train = load_audio_dataset("fsdd", args.data_dir, "train", recipe.sample_rate, recipe.length)
    test = load_audio_dataset("fsdd", args.data_dir, "test", recipe.sample_rate, recipe.length)
    load_seconds = time.perf_counter() - t
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="genforge-audio-evaluator-"))
    t = time.perf_counter()
    ev = train_audio_evaluator("fsdd", args.data_dir, root=root, epochs=args.epochs, seed=args.seed, device="cpu",
                               force=True, train_set=train, test_set=test)
    total_seconds = time.perf_counter() - t
    tr = ev.config["training"]
    out = {
        "machine": cpu_kind(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "command": "python benchmarks/audio_classifier.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "evaluator_id": ev.id, "weights_sha256": ev.config["weights_sha256"], "directory": str(ev.directory),
        "test_accuracy": ev.test_accuracy, "speaker_test_accuracy": ev.config.get("speaker_test_accuracy"),
        "test_clips": ev.config["test_clips"], "train_clips": tr["train_clips"],
        "train_seconds": tr["seconds"], "train_and_test_seconds": round(total_seconds, 1),
        "load_seconds": round(load_seconds, 1),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "steps": tr["steps"], "epochs": tr["epochs_done"],
        "recipe": {k: v for k, v in asdict(recipe).items()}, "seed": args.seed,
    }
    print(f"{ev.id}: digit accuracy {ev.test_accuracy:.2%} on {out['test_clips']} test clips, speaker accuracy "
          f"{out['speaker_test_accuracy']:.2%}; trained {tr['steps']} steps ({tr['epochs_done']} epochs) in "
          f"{tr['seconds']} s on {out['threads']} threads ({out['machine']}); stored in {ev.directory}", flush=True)
    if not args.no_metrics:
        labels = [i % 10 for i in range(300)]
        rows = {}
        for name, (clips, y) in degraded_sets(train, args.seed).items():
            assert (y == np.array(labels)).all()
            r = evaluate_clips(clips, ev, labels=labels, seed=args.seed, floor=name == "train300")
            if "floor" in r:
                rows["floor"] = r["floor"]["metrics"]
            rows[name] = r["metrics"]
        out["metrics"] = rows
        keys = list(rows["floor"])
        print("set        " + " ".join(f"{k[:10]:>10s}" for k in keys))
        for name, m in rows.items():
            print(f"{name:10s} " + " ".join(f"{m[k]:10.4g}" for k in keys), flush=True)
    path = Path(args.json or Path(__file__).parent / f"audio_classifier-{cpu_kind()}.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
