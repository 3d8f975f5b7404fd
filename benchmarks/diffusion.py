"""Issue 12's diffusion benchmarks: sampler quality against cost, the three objectives, guidance, diffusion vs GAN.

Train the runs first (`genforge train mnist-ddpm --out RUN`, about an hour on 2 CPU cores); each subcommand
then scores a trained run with `genforge eval`'s evaluator (classifier-feature FID, precision/recall,
conditional accuracy; samples against the MNIST test split) and merges its rows into one JSON per CPU kind
(`--json`, default benchmarks/diffusion-<cpu>.json) plus a 64-sample grid per row in `--grids`.

    python benchmarks/diffusion.py samplers --run RUN --n 2000 --n-small 200
        DDPM-1000, DDIM-50/20/10, DPM-Solver++(2M)-20/10: FID and images/s. DDPM-1000 on 2,000 samples is
        hours of CPU, so every sampler is also scored on the first --n-small samples (same seed, same starting
        noise), where DDPM-1000 runs too: ratios are taken at equal N (FID depends on N).
    python benchmarks/diffusion.py objectives --epochs 1 --work DIR
        Trains mnist-ddpm with model.objective = eps, v and flow for the same epochs and scores each at 10 and
        20 network evaluations (DPM-Solver++(2M) and DDIM).
    python benchmarks/diffusion.py guidance --run CRUN --scales 0,1,2,3,4,5 --n 2000
        A class-conditional run: FID and conditional accuracy against the guidance scale.
    python benchmarks/diffusion.py score --run RUN --name mnist-ddpm --n 10000
        One run at its default sampler, e.g. to set beside `mnist-dcgan` at the same N.

Quality figures do not depend on the machine being idle; images/s does (record the load beside it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_kind  # noqa: E402

HERE = Path(__file__).resolve().parent
KEEP = ("fid", "kid", "precision", "recall", "density", "coverage", "conditional_accuracy", "classes_hit")


def score(run: Path, n: int, options: dict, args) -> dict:
    """Evaluate `run` on n samples drawn with `options`; the metrics kept, the sampling rate and the time."""
    from genforge.evaluation import evaluate_run

    report = evaluate_run(run, n=n, data_dir=args.data_dir, seed=args.seed, select="last", write=False,
                          sample_options=options, batch_size=args.batch_size)
    metrics = {k: round(float(v), 4) for k, v in report["metrics"].items() if k in KEEP and v is not None}
    seconds = report["seconds"]["generate"]
    return {"n": n, **metrics, "generate_seconds": round(seconds, 1), "images_per_sec": round(n / seconds, 2)}


def grid(run: Path, options: dict, path: Path, args) -> None:
    import genforge
    from genforge.visual import save_grid

    model = genforge.load(run, select="last", precision="no")
    labels = [i % len(model.classes) for i in range(64)] if model.conditional else None
    save_grid(model.generate(64, seed=args.seed, labels=labels, batch_size=64, **options), path, nrow=8, scale=2)


def tag(options: dict) -> str:
    return "-".join(f"{v}" for v in options.values())


def samplers(args) -> list[dict]:
    rows = []
    for spec in args.rows.split(","):
        sampler, steps = spec.split(":")
        options = {"sampler": sampler, "steps": int(steps)}
        expensive = sampler == "ddpm" or int(steps) > 100
        row = {"sampler": sampler, "steps": int(steps), "run": str(args.run)}
        row["small"] = score(args.run, args.n_small, options, args)
        print(json.dumps(row), flush=True)
        if not expensive and args.n > 0:
            row["full"] = score(args.run, args.n, options, args)
            print(json.dumps(row), flush=True)
        if not expensive or args.grid_expensive:  # 64 more DDPM-1000 images cost as much as the row itself
            name = f"diffusion-samplers-{sampler}-{steps}.png"
            grid(args.run, options, Path(args.grids) / name, args)
            row["grid"] = name
        rows.append(row)
    return rows


def objectives(args) -> list[dict]:
    from genforge.training import apply_overrides, read_raw, train, validate

    rows = []
    for objective in args.objectives.split(","):
        run = Path(args.work) / f"{args.preset}-{objective}"
        shutil.rmtree(run, ignore_errors=True)
        raw = apply_overrides(read_raw(args.preset), [f"model.objective={objective}", f"train.epochs={args.epochs}",
                                                      "train.max_steps=null", f"train.seed={args.seed}",
                                                      *args.set], None)
        t = time.perf_counter()
        result = train(validate(raw), run, data_dir=args.data_dir, progress=False)
        row = {"objective": objective, "preset": args.preset, "epochs": args.epochs, "steps": result.step,
               "train_seconds": round(time.perf_counter() - t, 1), "run": str(run)}
        for sampler in args.samplers.split(","):
            for steps in (10, 20):
                row[f"{sampler}-{steps}"] = score(run, args.n, {"sampler": sampler, "steps": steps}, args)
                print(json.dumps(row), flush=True)
        name = f"diffusion-objective-{objective}.png"
        grid(run, {"sampler": "dpmpp2m", "steps": 20}, Path(args.grids) / name, args)
        row["grid"] = name
        rows.append(row)
    return rows


def guidance(args) -> list[dict]:
    rows = []
    for scale in (float(s) for s in args.scales.split(",")):
        options = {"guidance": scale}
        if args.sampler:
            options.update(sampler=args.sampler, steps=args.steps)
        row = {"guidance": scale, "run": str(args.run), **score(args.run, args.n, options, args)}
        name = f"diffusion-guidance-{scale:g}.png"
        grid(args.run, options, Path(args.grids) / name, args)
        row["grid"] = name
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def speed(args) -> list[dict]:
    """Images/s of each sampler on an idle box: one timed batch after one warm-up call (quality rows from lanes
    that share the cores carry slower rates)."""
    import genforge

    model = genforge.load(args.run, select="last", precision="no")
    rows = []
    for spec in args.rows.split(","):
        sampler, steps = spec.split(":")
        n = args.n_slow if sampler == "ddpm" or int(steps) > 100 else args.n
        options = {"sampler": sampler, "steps": int(steps)}
        model.generate(2, seed=args.seed, batch_size=2, sampler="ddim", steps=1)
        t = time.perf_counter()
        model.generate(n, seed=args.seed, batch_size=n, **options)
        seconds = time.perf_counter() - t
        row = {"sampler": sampler, "steps": int(steps), "n": n, "seconds": round(seconds, 2),
               "images_per_sec": round(n / seconds, 3)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def score_one(args) -> list[dict]:
    options = {"sampler": args.sampler, "steps": args.steps} if args.sampler else {}
    row = {"name": args.name, "run": str(args.run), "options": options, **score(args.run, args.n, options, args)}
    name = f"diffusion-score-{args.name}.png"
    grid(args.run, options, Path(args.grids) / name, args)
    row["grid"] = name
    print(json.dumps(row), flush=True)
    return [row]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--json", default=None, help="results file (default benchmarks/diffusion-<cpu kind>.json)")
    p.add_argument("--grids", default=str(HERE), help="folder for the sample grids")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250, help="images per network call while sampling")
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("samplers", help="sampler quality against cost on one run")
    s.add_argument("--run", type=Path, required=True)
    s.add_argument("--rows", default="ddpm:1000,ddim:50,ddim:20,ddim:10,dpmpp2m:20,dpmpp2m:10")
    s.add_argument("--n", type=int, default=2000, help="samples per cheap sampler (0: the equal-N rows only)")
    s.add_argument("--n-small", type=int, default=200, help="samples per sampler at equal N, DDPM-1000 included")
    s.add_argument("--grid-expensive", action="store_true", help="draw the 64-image grid for DDPM-1000 too")
    o = sub.add_parser("objectives", help="eps against v against flow at 10 and 20 network evaluations")
    o.add_argument("--preset", default="mnist-ddpm")
    o.add_argument("--objectives", default="eps,v,flow")
    o.add_argument("--epochs", type=float, default=1)
    o.add_argument("--samplers", default="dpmpp2m,ddim")
    o.add_argument("--n", type=int, default=2000)
    o.add_argument("--work", required=True, help="where the runs are trained (replaced)")
    o.add_argument("--set", action="append", default=[], help="a further config override, e.g. model.width=16")
    g = sub.add_parser("guidance", help="FID and conditional accuracy against the guidance scale")
    g.add_argument("--run", type=Path, required=True)
    g.add_argument("--scales", default="0,1,2,3,4,5")
    g.add_argument("--sampler", default=None)
    g.add_argument("--steps", type=int, default=0)
    g.add_argument("--n", type=int, default=2000)
    t = sub.add_parser("speed", help="images/s per sampler on an idle box (no FID)")
    t.add_argument("--run", type=Path, required=True)
    t.add_argument("--rows", default="ddpm:1000,ddim:50,ddim:20,ddim:10,dpmpp2m:20,dpmpp2m:10,unipc:20,unipc:10")
    t.add_argument("--n", type=int, default=100, help="images in the timed batch")
    t.add_argument("--n-slow", type=int, default=10, help="images in the timed batch of DDPM-1000")
    c = sub.add_parser("score", help="one run at its default (or a given) sampler")
    c.add_argument("--run", type=Path, required=True)
    c.add_argument("--name", required=True)
    c.add_argument("--sampler", default=None)
    c.add_argument("--steps", type=int, default=0)
    c.add_argument("--n", type=int, default=10_000)
    args = p.parse_args()

    Path(args.grids).mkdir(parents=True, exist_ok=True)
    path = Path(args.json or HERE / f"diffusion-{cpu_kind()}.json")
    results = json.loads(path.read_text()) if path.exists() else {}
    t = time.perf_counter()
    rows = {"samplers": samplers, "objectives": objectives, "guidance": guidance, "score": score_one,
            "speed": speed}[args.what](args)
    entry = {"command": "python benchmarks/diffusion.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
             "cpu": cpu_kind(), "seconds": round(time.perf_counter() - t, 1), "rows": rows}
    key = args.what if args.what != "score" else f"score-{args.name}"
    results[key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
