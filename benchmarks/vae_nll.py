"""Test NLL of `mnist-vae` on dynamically binarised MNIST against minutes of training (issue 10's aim: <= 84
nats within 30 minutes on 2 CPU cores), and the conditional accuracy of `mnist-cvae`.

The run trains in slices of `--slice` minutes (train.max_minutes, then --resume), and after each slice the
exported weights are scored by importance sampling (k and n below) on the fixed-binarised MNIST test set,
so the curve costs no training time. The last point is scored again with a larger k.

    python benchmarks/vae_nll.py --data-dir ../shared/data --out /tmp/vae-bench
Run it on an idle machine: the slices are wall-clock minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import genforge  # noqa: E402
from genforge.evaluation.likelihood import likelihood_metrics  # noqa: E402
from genforge.training import apply_overrides, read_raw, train, validate  # noqa: E402
from machine import cpu_kind  # noqa: E402


def curve(args) -> dict:
    run = Path(args.out) / "mnist-vae"
    if args.points_from:  # the curve was measured already (its JSON lines logged): score the final weights only
        points = [json.loads(line) for line in Path(args.points_from).read_text().splitlines() if line.startswith("{")]
        points = [p for p in points if "minutes" in p]
        model = genforge.load(run, select="last", precision="no")
        final, d = likelihood_metrics(model, args.data_dir, k=args.final_k, n=args.final_n, seed=0)
        return {"run": str(run), "points": points, "final": {**final, **d}}
    raw = apply_overrides(read_raw("mnist-vae"), [f"train.max_minutes={args.slice}", "train.checkpoint_every=100000",
                                                  *args.set], None)
    cfg = validate(raw)
    points, minutes = [], 0.0
    while minutes < args.minutes - 1e-6:
        t = time.perf_counter()
        res = train(cfg, run, data_dir=args.data_dir, resume=minutes > 0, progress=False)
        minutes += (time.perf_counter() - t) / 60
        model = genforge.load(run, select="last", precision="no")
        m, d = likelihood_metrics(model, args.data_dir, k=args.k, n=args.n, seed=0)
        points.append({"minutes": round(minutes, 2), "step": res.step, "epoch": round(res.step * cfg.train.batch_size / 60000, 2),
                       **{k: round(v, 3) for k, v in m.items()}, "nll_std_error": round(d["nll_std_error"], 3)})
        print(json.dumps(points[-1]), flush=True)
        if len(points) > 1 and res.step == points[-2]["step"]:  # the run had already reached its length
            break
    model = genforge.load(run, select="last", precision="no")
    final, d = likelihood_metrics(model, args.data_dir, k=args.final_k, n=args.final_n, seed=0)
    return {"run": str(run), "points": points, "final": {**final, **d}}


def plot(points, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([p["minutes"] for p in points], [p["nll_nats"] for p in points], "o-", label="test NLL (IS)")
    ax.plot([p["minutes"] for p in points], [p["neg_elbo_nats"] for p in points], "s--", label="test -ELBO")
    ax.axhline(84, color="grey", lw=0.8, ls=":", label="aim 84")
    ax.set_xlabel("training minutes (2 CPU cores)")
    ax.set_ylabel("nats")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--out", default="/tmp/vae-bench")
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--slice", type=float, default=5)
    p.add_argument("--k", type=int, default=100, help="importance samples per image along the curve")
    p.add_argument("--n", type=int, default=1000, help="test images along the curve")
    p.add_argument("--final-k", type=int, default=1000)
    p.add_argument("--final-n", type=int, default=1000)
    p.add_argument("--set", action="append", default=[], help="config override, e.g. model.iw_samples=5")
    p.add_argument("--points-from", default=None, help="a log of this script's curve lines: skip training, score the last weights")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    t = time.perf_counter()
    out = {"machine": cpu_kind(), "preset": "mnist-vae", "overrides": args.set, **curve(args)}
    out["seconds"] = round(time.perf_counter() - t, 1)
    path = Path(args.json or Path(__file__).parent / f"vae_nll-{cpu_kind()}.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    plot(out["points"], path.with_suffix(".png"))
    print(json.dumps(out["final"]))


if __name__ == "__main__":
    main()
