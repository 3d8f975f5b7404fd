"""Speech quality (issue 24's aims): `genforge eval` of each trained speech run (Fréchet distance, KID, IS,
conditional accuracy, speaker diversity, memorization, beside the real-test floor), a spectrogram grid per run
(one row per digit) and a few WAVs to listen to, written where the README shows them.

    python benchmarks/speech_quality.py runs/fsdd-specgan runs/fsdd-diffusion runs/fsdd-wavenet

Needs the spoken-digit evaluator (trained on first use, or `genforge evaluator train fsdd`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_kind  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "docs" / "speech"
NUMBER = "415 555 0199"
PER_DIGIT = 4


def shrink(path: Path) -> Path:
    """A README picture: the grid in a 64-colour palette (a spectrogram's noise floor keeps full-colour PNGs large)."""
    from PIL import Image

    Image.open(path).convert("RGB").quantize(64).save(path, optimize=True)
    return path


def real_grid(data_dir: str | None) -> Path:
    """The real FSDD test clips, one row per digit, through the same picture code, for comparison."""
    from genforge.audio.codec import SpectrogramCodec
    from genforge.data.audio import load_audio_dataset
    from genforge.media.audio import save_spectrogram_grid

    test = load_audio_dataset("fsdd", data_dir, "test")
    rows = [np.nonzero(test.labels == d)[0][::25][:PER_DIGIT] for d in range(10)]  # 4 speakers a digit
    clips = test.clips[np.concatenate(rows)]
    codec = SpectrogramCodec()
    logmag = codec.log_magnitude(clips)
    specs = np.clip((logmag - (logmag.max() - 8.0)) / 8.0 * 2 - 1, -1, 1)
    return shrink(save_spectrogram_grid(specs, ASSETS / "real-fsdd-test.png", nrow=PER_DIGIT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--n", type=int, default=300, help="clips per evaluation (30 per digit)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import genforge
    from genforge.media.audio import write_audio

    ASSETS.mkdir(parents=True, exist_ok=True)
    result = {"machine": cpu_kind(), "n": args.n, "runs": {}}
    print(f"real clips: {real_grid(args.data_dir)}")
    for run in args.runs:
        name = json.loads((Path(run) / "config.json").read_text())["name"]
        cmd = [sys.executable, "-m", "genforge.cli", "eval", run, "--n", str(args.n), "--seed", "0", "--no-progress"]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        p = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        print(p.stdout, p.stderr[-2000:] if p.returncode else "", flush=True)
        if p.returncode:
            raise SystemExit(f"genforge eval {run} failed")
        report = json.loads((Path(run) / "eval.json").read_text())
        gen = genforge.load(run)
        gen.use_mark_key(False)
        clips = gen.generate(10 * PER_DIGIT, seed=1, labels=[d for d in range(10) for _ in range(PER_DIGIT)])
        grid = shrink(gen.save_grid(clips, ASSETS / f"{name}.png", nrow=PER_DIGIT))
        number = gen.speak(NUMBER, seed=0)
        wavs = write_audio(number[None], gen.sample_rate, str(ASSETS / f"{name}-415-555-0199.wav"),
                           record=gen.record(0, text=NUMBER))
        wavs += write_audio(clips[7 * PER_DIGIT : 7 * PER_DIGIT + 1], gen.sample_rate, str(ASSETS / f"{name}-seven.wav"),
                            record=gen.record(1, labels=7))
        result["runs"][name] = {"run": run, "family": gen.meta["family"], "step": gen.meta.get("step"),
                                "weights": report["model"]["weights"], "metrics": report["metrics"],
                                "floor": report.get("floor", {}).get("metrics"), "details": report.get("details"),
                                "grid": str(grid.relative_to(ASSETS.parents[1])),
                                "wavs": [str(w.relative_to(ASSETS.parents[1])) for w in wavs]}
    path = Path(args.json or Path(__file__).parent / f"speech_quality-{cpu_kind()}.json")
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
