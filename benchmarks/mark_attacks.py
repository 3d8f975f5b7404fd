"""Issue 28 item 5: the keyed image mark (version 2) against the everyday handling a picture meets.

    python benchmarks/mark_attacks.py --run mnist-ddpm=RUN --run mnist-dcgan=RUN ... --real mnist --real cifar10 \
        --n-marked 300 --n-unmarked 1000 --data-dir /work/shared/data [--compare-v1]

Per image family (a run's generated images, or real test images): n-unmarked unmarked images (generated with
seed 0 and no key, or the first test images), the first n-marked of them marked with ImageMark v2 under a fixed
benchmark key (what a generator with a key writes: generators/images.py `_marked`). For every attack of
`genforge.media.attacks.grid(--scale)`: the true-positive rate on the attacked marked images and the false
positives on the same unmarked images under the same attack (all n-unmarked at the "none" point, the first
--n-unmarked-attacked otherwise; attacks that enlarge the image use at most --n-large of each, the detector
being slowest there). Image i of either set gets attack seed i (the same crop offsets and noise). Also: PSNR
of marked against unmarked, and for generated families with an evaluator, FID of the marked, the unmarked and
a second unmarked set (seed 1), --fid-n images each. With --compare-v1: version 1 (media/legacy_mark.py) on
the same images for a subset of attacks.

Writes benchmarks/mark_attacks-<cpu kind>.json (merged with what is there: run families one at a time) and
benchmarks/mark_attacks-<cpu kind>.png (one panel per attack family, TPR against strength, a line per image
family), and prints a compact table. Run with OMP_NUM_THREADS=1: the figures are counts, the seconds are load.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_kind

HERE = Path(__file__).resolve().parent
KEY = b"benchmark key: not a secret, 32+ bytes long"
V1_ATTACKS = ("none", "JPEG 50", "JPEG 75", "JPEG 90", "WebP 80", "x2 lanczos", "x2 nearest", "x0.5 and back bicubic",
              "crop 5% of each side", "rotate +1 deg", "brightness +10%", "Gaussian noise sigma 4",
              "screenshot x1.5 bilinear + JPEG 80")


# ------------------------------------------------------------------------------------------------------ images

def real_images(name: str, n: int, data_dir: Path) -> np.ndarray:
    """The first n test images of MNIST (idx gz) or n of CIFAR-10's test split (the JPEG-75 archive; a seeded
    shuffle of its first 10n test members)."""
    from PIL import Image

    if name == "mnist":
        with gzip.open(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
            raw = f.read()
        return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28, 1)[:n].copy()
    if name == "cifar10":
        out = []
        with tarfile.open(data_dir / "cifar10-jpeg" / "cifar10-jpeg75.tar.gz") as tar:
            for m in tar:
                if m.name.startswith("test/") and m.name.endswith(".jpg"):
                    out.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")))
                    if len(out) >= 10 * n:
                        break
        out = np.stack(out)
        return out[np.random.default_rng(0).permutation(len(out))[:n]]
    raise SystemExit(f"--real: mnist or cifar10, not {name!r}")


def generated(run: str, n: int, seed: int, args) -> tuple[np.ndarray, object, dict]:
    import genforge

    model = genforge.load(run, precision="no", select="last")
    model.use_mark_key(False)
    opts = {k: v for k, v in (("steps", args.steps), ("sampler", args.sampler)) if v is not None and k in model.options()}
    return cached(args, run, n, seed, opts, lambda: model.generate(n, seed=seed, **opts)), model, opts


def cached(args, run: str, n: int, seed: int, opts: dict, make) -> np.ndarray:
    """`make()`, kept in --cache (keyed by the run's weights file's time, n, seed and options) when given."""
    if not args.cache:
        return make()
    weights = Path(run) / "model.safetensors"
    stamp = int(weights.stat().st_mtime) if weights.exists() else 0
    tag = "-".join(f"{k}{v}" for k, v in sorted(opts.items()))
    path = Path(args.cache) / f"{Path(run).name}-{stamp}-n{n}-seed{seed}-{tag}.npy"
    if path.exists():
        return np.load(path)
    images = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, images)
    return images


def evaluator_for(dataset: str, data_dir: Path):
    from genforge.errors import UserError
    from genforge.evaluation import evaluator_domain, load_evaluator

    try:
        return load_evaluator(evaluator_domain(dataset)[0], data_dir, train_if_missing=False), None
    except UserError as e:
        return None, str(e)


# ----------------------------------------------------------------------------------------------------- measuring

_SOURCES: dict[str, str] = {}


def source_hashes() -> dict[str, str]:
    """sha256 (16 hex) of the mark modules' source files, read right after importing them (at start-up), so
    the hash is that of the code that runs even if the file is edited later."""
    import hashlib
    import importlib

    if not _SOURCES:
        for name in ("genforge.media.image_mark", "genforge.media.legacy_mark", "genforge.media.attacks"):
            module = importlib.import_module(name)
            _SOURCES[Path(module.__file__).name] = hashlib.sha256(Path(module.__file__).read_bytes()).hexdigest()[:16]
    return _SOURCES


def mark_version(mark) -> dict:
    """The mark's parameters and the hash of the source that ran (the module is still being tuned)."""
    import dataclasses
    import inspect

    source = Path(inspect.getsourcefile(type(mark)))
    params = {f.name: getattr(mark, f.name) for f in dataclasses.fields(mark) if f.name != "key"}
    return {"scheme": mark.scheme, **params, "source": source.name, "source_sha256": source_hashes()[source.name],
            "sources_sha256": source_hashes()}


def _detect(mark, images: list[np.ndarray]) -> list[dict]:
    if hasattr(mark, "detect_many"):
        return mark.detect_many(images)
    return [mark.detect(img) for img in images]


def attack_row(mark, attack, marked: np.ndarray, unmarked: np.ndarray, n_marked: int, n_unmarked: int,
               n_large: int) -> dict:
    t = time.perf_counter()
    probe = attack.apply(marked[0], seed=0)
    large = probe.shape[0] * probe.shape[1] > marked.shape[1] * marked.shape[2]
    nm = min(n_marked, len(marked), n_large if large else n_marked)
    nu = min(len(unmarked), n_unmarked, n_large if large else n_unmarked)
    am = [attack.apply(img, seed=i) for i, img in enumerate(marked[:nm])]
    au = [attack.apply(img, seed=i) for i, img in enumerate(unmarked[:nu])]
    rm, ru = _detect(mark, am), _detect(mark, au)
    zm = np.array([r["z"] for r in rm])
    zu = np.array([r["z"] for r in ru])
    tp = int(sum(r["detected"] for r in rm))
    fp = int(sum(r["detected"] for r in ru))
    return {"family": attack.family, "strength": attack.strength, "size": list(probe.shape),
            "n_marked": nm, "detected": tp, "tpr": round(tp / nm, 4), "z_marked_median": round(float(np.median(zm)), 2),
            "n_unmarked": nu, "false_positives": fp, "fpr": round(fp / nu, 5),
            "z_unmarked_max": round(float(zu.max()), 2), "p_unmarked_min": float(min(r["p_value"] for r in ru)),
            "seconds": round(time.perf_counter() - t, 1)}


def family_rows(name: str, source: str, unmarked: np.ndarray, second: np.ndarray | None, evaluator, no_fid: str | None,
                args, extra: dict) -> dict:
    from genforge.evaluation import evaluate_images
    from genforge.media.attacks import grid, skipped
    from genforge.media.image_mark import ImageMark
    from genforge.media.legacy_mark import ImageMarkV1
    from genforge.media.watermark import MarkKey, psnr

    t0 = time.perf_counter()
    mark = ImageMark(MarkKey(KEY))
    n_embed = max(args.n_marked, args.fid_n if evaluator is not None else 0)
    t = time.perf_counter()
    marked = mark.embed(unmarked[:n_embed])
    embed_ms = (time.perf_counter() - t) / len(marked) * 1e3
    psnrs = np.array([psnr(a, b) for a, b in zip(unmarked[:n_embed], marked)])
    row = {"source": source, "image_shape": list(unmarked.shape[1:]), "n_unmarked": len(unmarked),
           "n_marked": min(args.n_marked, len(marked)), "embedded": len(marked), **extra,
           "psnr_mean": round(float(psnrs.mean()), 2), "psnr_min": round(float(psnrs.min()), 2),
           "psnr_5th_percentile": round(float(np.percentile(psnrs, 5)), 2), "embed_ms_per_image": round(embed_ms, 2),
           "skipped_attacks": skipped(args.scale), "mark": mark_version(mark), "attacks": {}}
    for attack in grid(args.scale):
        n_un = len(unmarked) if attack.family == "none" else args.n_unmarked_attacked
        r = attack_row(mark, attack, marked[:args.n_marked], unmarked, args.n_marked, n_un, args.n_large)
        row["attacks"][attack.label] = r
        print(f"{name:16s} {attack.label:38s} TPR {r['tpr']:6.1%} ({r['n_marked']})  FP {r['false_positives']}/"
              f"{r['n_unmarked']}  {r['seconds']:5.1f} s", flush=True)
    if args.compare_v1:
        v1 = ImageMarkV1(MarkKey(KEY))
        n1 = min(args.n_v1, len(unmarked))
        marked1 = v1.embed(unmarked[:n1])
        p1 = np.array([psnr(a, b) for a, b in zip(unmarked[:n1], marked1)])
        row["v1"] = {"n": n1, "psnr_mean": round(float(p1.mean()), 2), "psnr_min": round(float(p1.min()), 2),
                     "attacks": {}}
        for attack in grid("full"):
            if attack.label in V1_ATTACKS:
                r = attack_row(v1, attack, marked1, unmarked, n1, n1, n1)
                row["v1"]["attacks"][attack.label] = r
                print(f"{name:16s} v1 {attack.label:35s} TPR {r['tpr']:6.1%} ({r['n_marked']})  FP "
                      f"{r['false_positives']}/{r['n_unmarked']}", flush=True)
    if evaluator is not None and second is not None:
        fid = {}
        for label, imgs in (("unmarked", unmarked[:args.fid_n]), ("marked", marked[:args.fid_n]),
                            ("unmarked, second seed", second[:args.fid_n])):
            fid[label] = round(float(evaluate_images(imgs, evaluator, reference="test", seed=0)["metrics"]["fid"]), 4)
        row["fid"] = {"n": min(args.fid_n, len(marked)), "evaluator": str(evaluator.directory), **fid,
                      "marked_minus_unmarked": round(fid["marked"] - fid["unmarked"], 4),
                      "seed_to_seed": round(fid["unmarked, second seed"] - fid["unmarked"], 4)}
        print(f"{name:16s} FID {json.dumps(row['fid'])}", flush=True)
    else:
        row["fid"] = {"skipped": no_fid or "real images: no second sample to compare"}
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


# ------------------------------------------------------------------------------------------------------ output

def table(results: dict) -> str:
    fams = list(results.get("families", {}))
    if not fams:
        return ""
    labels = list(next(iter(results["families"].values()))["attacks"])
    for f in fams:
        labels += [a for a in results["families"][f]["attacks"] if a not in labels]
    width = max(10, *(len(f) for f in fams))
    lines = [f"{'attack (TPR, marked)':40s}" + "".join(f" {f:>{width}s}" for f in fams)]
    for a in labels:
        cells = []
        for f in fams:
            r = results["families"][f]["attacks"].get(a)
            cells.append(f"{r['tpr']:.1%}" if r else "-")
        lines.append(f"{a:40s}" + "".join(f" {c:>{width}s}" for c in cells))
    lines.append("")
    lines.append(f"{'FPR (false positives / unmarked)':40s}" + "".join(f" {f:>{width}s}" for f in fams))
    for a in labels:
        cells = []
        for f in fams:
            r = results["families"][f]["attacks"].get(a)
            cells.append(f"{r['false_positives']}/{r['n_unmarked']}" if r else "-")
        lines.append(f"{a:40s}" + "".join(f" {c:>{width}s}" for c in cells))
    lines.append("")
    for f in fams:
        r = results["families"][f]
        fid = r["fid"]
        fid_s = (f"FID unmarked {fid['unmarked']} / marked {fid['marked']} / 2nd seed {fid['unmarked, second seed']} "
                 f"(n {fid['n']})") if "marked" in fid else f"FID skipped ({fid['skipped'][:60]})"
        lines.append(f"{f}: PSNR mean {r['psnr_mean']} dB, min {r['psnr_min']} dB; {fid_s}")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = list(results.get("families", {}))
    if not fams:
        return
    groups: dict[str, list[str]] = {}
    for f in fams:
        for label, r in results["families"][f]["attacks"].items():
            if r["family"] != "none" and label not in groups.setdefault(r["family"], []):
                groups[r["family"]].append(label)
    cols = 4
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (group, labels) in zip(axes.flat, groups.items()):
        for i, f in enumerate(fams):
            att = results["families"][f]["attacks"]
            pts = sorted((att[a]["strength"], att[a]["tpr"]) for a in labels if a in att)
            if pts:
                ax.plot(*zip(*pts), "o-", color=colors[i % len(colors)], label=f, ms=3)
            v1 = results["families"][f].get("v1", {}).get("attacks", {})
            pts = sorted((v1[a]["strength"], v1[a]["tpr"]) for a in labels if a in v1)
            if pts:
                ax.plot(*zip(*pts), "x--", color=colors[i % len(colors)], label=f"{f} (v1)", ms=5, alpha=0.6)
        ax.set_title(group, fontsize=10)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.set_xlabel({"jpeg": "quality", "webp": "quality", "avif": "quality", "crop": "% of each side cut",
                       "rotate": "degrees", "brightness": "%", "contrast": "%", "noise": "sigma",
                       "screenshot": "scale (then JPEG 80)"}.get(group, "scale factor"), fontsize=8)
        ax.set_ylabel("TPR", fontsize=8)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower right", fontsize=8)
    fig.suptitle("Image mark v2: true-positive rate under attack (detection p <= 1e-4, Bonferroni over views and "
                 "alignments)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", default=[], help="NAME=RUN_DIR of an image model (repeatable)")
    p.add_argument("--real", action="append", default=[], choices=["mnist", "cifar10"], help="real test images")
    p.add_argument("--n-marked", type=int, default=300, help="marked images per attack")
    p.add_argument("--n-unmarked", type=int, default=1000, help="unmarked images (all at the no-attack point)")
    p.add_argument("--n-unmarked-attacked", type=int, default=200, help="unmarked images per attack")
    p.add_argument("--n-large", type=int, default=100, help="at most this many of each for attacks that enlarge")
    p.add_argument("--fid-n", type=int, default=None, help="images per FID set (default: --n-unmarked)")
    p.add_argument("--compare-v1", action="store_true", help="also version 1, on a subset of attacks")
    p.add_argument("--n-v1", type=int, default=200, help="images (marked and unmarked) for the v1 comparison")
    p.add_argument("--scale", default="full", choices=["full", "small"], help="attacks.grid(scale)")
    p.add_argument("--steps", type=int, default=10, help="diffusion models: sampler steps")
    p.add_argument("--sampler", default=None, help="diffusion models: sampler (default: the run's)")
    p.add_argument("--data-dir", default="/work/shared/data")
    p.add_argument("--json", default=None)
    p.add_argument("--png", default=None)
    p.add_argument("--cache", default=None, help="folder to keep generated images in (reruns skip generating)")
    p.add_argument("--replot", action="store_true", help="only redraw the plot and table from the JSON")
    args = p.parse_args()
    args.fid_n = args.fid_n or args.n_unmarked
    source_hashes()
    data_dir = Path(args.data_dir)

    kind = cpu_kind()
    path = Path(args.json or HERE / f"mark_attacks-{kind}.json")
    png = Path(args.png or path.with_suffix(".png"))
    results = json.loads(path.read_text()) if path.exists() else {}
    if args.replot:
        plot(results, png)
        print(table(results))
        return
    command = "python benchmarks/mark_attacks.py " + " ".join(sys.argv[1:])
    fam = results.setdefault("families", {})
    for spec in args.real:
        t = time.perf_counter()
        images = real_images(spec, args.n_unmarked, data_dir)
        name = f"real {spec}"
        fam[name] = family_rows(name, f"{spec} test images", images, None, None, None, args,
                                {"load_seconds": round(time.perf_counter() - t, 1), "command": command,
                                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        path.write_text(json.dumps(results, indent=2) + "\n")
    for spec in args.run:
        name, run = spec.split("=", 1)
        t = time.perf_counter()
        unmarked, model, opts = generated(run, args.n_unmarked, 0, args)
        gen_s = time.perf_counter() - t
        evaluator, why = evaluator_for(model.meta["data"]["dataset"], data_dir)
        second = None
        if evaluator is not None:
            second = cached(args, run, args.fid_n, 1, opts, lambda m=model, o=opts: m.generate(args.fid_n, seed=1, **o))
        fam[name] = family_rows(name, run, unmarked, second, evaluator, why, args,
                                {"generate_options": opts, "generate_seconds": round(gen_s, 1),
                                 "dataset": model.meta["data"]["dataset"], "command": command,
                                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        path.write_text(json.dumps(results, indent=2) + "\n")
    from genforge.media.attacks import skipped

    results["meta"] = {"cpu": kind, "key": KEY.decode(), "threshold": "p <= 1e-4 (ImageMark.false_positive_rate)",
                       "skipped_attacks": skipped(args.scale), "last_command": command,
                       "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    path.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, png)
    print(table(results))
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
