"""Issue 28's clip aim: the keyed image mark, written into every frame, found in 16-frame clips after the
writers people use (H.264 at crf 18-35, animated WebP, GIF's 256-colour palette), and never in unmarked clips.

    python benchmarks/clip_marks.py --run mm-gan=RUN --run mm-diffusion=RUN --n 40

For each video run: n clips generated with the key (marked by the generator, as `genforge video` writes them) and
the same n without; each through every writer (also enlarged x2 first, as `--scale 2` writes) and decoded back (media.video.encode_clip / encode_mp4 /
decode_clip), then media.clip_mark.detect_clip_mark. Writes benchmarks/clip_marks-<cpu kind>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_kind  # noqa: E402

HERE = Path(__file__).resolve().parent
KEY = b"benchmark key: not a secret, 32+ bytes long"
WRITERS = (("H.264 crf 18", "mp4", 18, 1), ("H.264 crf 23", "mp4", 23, 1), ("H.264 crf 28", "mp4", 28, 1),
           ("H.264 crf 35", "mp4", 35, 1), ("H.264 crf 28, written x2", "mp4", 28, 2),
           ("H.264 crf 35, written x2", "mp4", 35, 2), ("animated WebP", "webp", None, 1), ("GIF", "gif", None, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR of a video run (repeat)")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import genforge
    from genforge.media.clip_mark import detect_clip_mark
    from genforge.media.video import decode_clip, encode_clip
    from genforge.media.video_containers import encode_mp4
    from genforge.media.watermark import MarkKey

    out = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_kind(), "runs": {}}
    for spec in args.run:
        name, run = spec.split("=", 1)
        gen = genforge.load(run)
        gen.use_mark_key(MarkKey(KEY))
        mark = gen.image_mark
        marked = gen.generate(args.n, seed=11)
        gen.use_mark_key(False)
        plain = gen.generate(args.n, seed=11)
        rows = {}
        for label, fmt, crf, scale in WRITERS:
            t0 = time.time()

            def through(clip):
                if scale > 1:  # what `genforge video --scale 2` writes (nearest neighbour), read without its record
                    clip = clip.repeat(scale, axis=1).repeat(scale, axis=2)
                data = encode_mp4(clip, gen.fps, crf=crf) if crf is not None else encode_clip(clip, fmt, gen.fps)
                return decode_clip(data)[0]

            found = [detect_clip_mark(mark, through(c)) for c in marked]
            false = [detect_clip_mark(mark, through(c)) for c in plain]
            rows[label] = {"detected": float(np.mean([f["detected"] for f in found])),
                           "z_median": float(np.median([f["z"] for f in found])),
                           "false_positives": int(sum(f["detected"] for f in false)), "unmarked": len(false),
                           "p_min_unmarked": float(min(f["p_value"] for f in false)),
                           "seconds_per_clip": round((time.time() - t0) / (2 * args.n), 3)}
            print(name, label, rows[label], flush=True)
        out["runs"][name] = {"run": run, "clips": args.n, "frames": int(marked.shape[1]),
                             "size": list(marked.shape[2:4]), "writers": rows}
    path = Path(args.json) if args.json else HERE / f"clip_marks-{cpu_kind()}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
