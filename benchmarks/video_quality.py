"""Video quality (issue 25's aims): `genforge eval` of each trained video run (Fréchet distances per frame and
per clip, identity consistency, label accuracy, motion physics, beside the same figures for real test clips), a
filmstrip per run (one clip per digit, frames across) and a few clips to watch, written where the README shows
them (docs/video/).

    python benchmarks/video_quality.py runs/mm-gan runs/mm-diffusion --n 256

Needs the Moving-MNIST evaluator for the runs' frame size (trained on first use, or
`genforge evaluator train moving-mnist --size 32`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_kind  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "docs" / "video"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def real_assets(meta: dict, data_dir) -> None:
    """The real test clips (one per digit), through the same writers, for comparison."""
    from genforge.data.video import MovingMnist
    from genforge.media.video import save_filmstrip, write_clips

    test = MovingMnist("test", meta["data"]["video"], data_dir)
    got = test.clips(range(200))
    idx = [int(np.nonzero(got.labels == d)[0][0]) for d in range(10)]
    save_filmstrip(got.clips[idx], ASSETS / "real-moving-mnist-test.png", scale=2)
    write_clips(got.clips[idx[:4]], str(ASSETS / "real.gif"), meta["data"]["fps"], scale=2)


def run_assets(run: str, name: str) -> None:
    import genforge
    from genforge.media.video import save_filmstrip, write_clips

    gen = genforge.load(run)
    gen.use_mark_key(False)
    clips = gen.generate(10, seed=0, labels=list(range(10)))
    record = gen.record(0, n=10, labels=list(range(10)))
    save_filmstrip(clips, ASSETS / f"{name}.png", scale=2, record=record)
    write_clips(clips[:4], str(ASSETS / f"{name}.gif"), gen.fps, record=record, scale=2)
    write_clips(clips[:1], str(ASSETS / f"{name}.mp4"), gen.fps, record=record, scale=4)


def mark_rates(run: str, n: int = 40) -> dict:
    """The keyed mark in generated clips (marked per frame, detection pooled over frames) after each writer, and
    the false positives on the same clips unmarked."""
    import genforge
    from genforge.media.clip_mark import detect_clip_mark
    from genforge.media.video import decode_clip, encode_clip
    from genforge.media.watermark import MarkKey

    gen = genforge.load(run)
    gen.use_mark_key(MarkKey(b"video-quality-benchmark-key"))
    marked = gen.generate(n, seed=7)
    mark = gen.image_mark
    gen.use_mark_key(False)
    plain = gen.generate(n, seed=7)
    out = {}
    for fmt in ("mp4", "webp", "gif"):
        found = [detect_clip_mark(mark, decode_clip(encode_clip(c, fmt, gen.fps))[0])["detected"] for c in marked]
        false = [detect_clip_mark(mark, decode_clip(encode_clip(c, fmt, gen.fps))[0])["detected"] for c in plain]
        out[fmt] = {"detected": float(np.mean(found)), "false_positives": float(np.mean(false))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from genforge.evaluation import evaluate_run

    ASSETS.mkdir(parents=True, exist_ok=True)
    result = {"machine": cpu_kind(), "n": args.n, "runs": {}}
    for i, run in enumerate(args.runs):
        meta = json.loads((Path(run) / "config.json").read_text())
        if i == 0:
            real_assets(meta, args.data_dir)
        t = time.perf_counter()
        done = Path(run) / "eval.json"  # `genforge eval RUN --n N --seed 0` already run: reuse it
        report = json.loads(done.read_text()) if done.exists() else None
        if report is None or report.get("details", {}).get("n") != args.n:
            report = evaluate_run(run, n=args.n, data_dir=args.data_dir, seed=0, progress=True)
        name = meta.get("name", Path(run).name)
        seconds = round(time.perf_counter() - t, 1)
        run_assets(run, name)
        result["runs"][name] = {"run": run, "step": meta.get("step"), "metrics": report["metrics"],
                                "floor": (report.get("floor") or {}).get("metrics"), "eval_seconds": seconds,
                                "evaluator": report.get("evaluator"), "mark": mark_rates(run)}
        print(name, json.dumps(result["runs"][name], indent=1), flush=True)
    path = Path(args.json or Path(__file__).parent / f"video_quality-{cpu_kind()}.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
