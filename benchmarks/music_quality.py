"""Music quality figures for RESULTS.md: each run's `genforge eval` report (eval.json, written by
`genforge eval RUN --n 200 --seed 0`) gathered into one JSON, plus the validity of composed pieces at lower
sampling temperatures (what `genforge sample --temperature` trades for variety).

    python benchmarks/music_quality.py runs/folk-abc-gpt runs/bach-chorales-gpt --n 200
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_kind  # noqa: E402

TEMPERATURES = (1.0, 0.8, 0.6)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    import genforge

    out = {"machine": cpu_kind(), "runs": {}}
    for run in args.runs:
        report = json.loads((run / "eval.json").read_text())
        m = report["details"]["music"]
        gen = genforge.load(run, precision="no")
        sweep = {}
        for t in TEMPERATURES:
            pieces, counts = gen.compose(None, args.n, temperature=t, seed=0, keep_invalid=True)
            sweep[str(t)] = {"validity": sum(p.valid for p in pieces) / len(pieces),
                             "complete": sum(p.complete for p in pieces) / len(pieces)}
        out["runs"][str(run)] = {"step": gen.meta.get("step"), "metrics": report["metrics"],
                                 "overlap": m["overlap"], "floor": m["floor"], "memorization": m["memorization"],
                                 "counts": m["counts"], "validity_by_temperature": sweep}
        print(run, json.dumps(sweep))
    path = Path(__file__).with_name(f"music_quality-{cpu_kind()}.json")
    path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
