"""Issue 28 item 2: the diffusion noise mark (diffusion/noise_mark.py) on a trained MNIST flow model.

    OMP_NUM_THREADS=1 python benchmarks/noise_mark.py --run /work/runs/edit/mnist-ddpm --n 1000 \
        --data-dir ../shared/data

Samples (UniPC, the run's 20 steps): n with the noise mark only, the same n with both marks (the noise mark and
then the post-hoc image mark: what `genforge sample` writes with a key and model.noise_mark on), n unmarked (same
seed) and n unmarked of a second seed; n real MNIST test images. Each is read the way `verify --model` reads it:
resized to 28x28 (bilinear) when it is not, inverted to its starting noise by the Euler method (DDIM eta 0) in
--steps steps, scored against the key (z; p = P(Z > z)). Attacks (numpy / Pillow, fixed seeds):
  none; JPEG 50; JPEG 75; crop 25%: a random crop keeping 75% of each side (21x21 at a uniform offset), resized
  back to 28x28 (bilinear; the Tree-Ring paper's crop & scale; a crop passed as is to `verify` is resized the same
  way, so the two are one attack); rotation: a uniform angle in [-5, 5] degrees, bilinear, black corners; noise:
  Gaussian, sigma 12.75 (5% of the 8-bit range), rounded and clipped.
TPR at z >= 3.09 (p <= 1e-3, the detector's threshold) and at the empirical threshold (the largest z of the
unmarked and real images as found, so FPR <= 1/n on each); FPR on unmarked samples and real images as found and
after JPEG 50; FID (MNIST evaluator, test reference) of marked, unmarked and the second unmarked seed; inversion
time per image. Writes benchmarks/noise_mark.json and benchmarks/noise_mark.png (TPR per attack).

Runs single-threaded in bf16 (the run's `auto` precision on these CPUs); `verify` inverts in fp32.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_kind  # noqa: E402

HERE = Path(__file__).resolve().parent
KEY = b"benchmark key: not a secret, 32+ bytes long"
Z_THRESHOLD = 3.0902  # one-sided p = 1e-3


def _jpeg(images, q):
    out = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img[..., 0]).save(buf, "JPEG", quality=q)
        out.append(np.asarray(Image.open(buf))[..., None])
    return np.stack(out)


def _crop(images, rng):
    out = []
    for img in images:
        i, j = rng.integers(0, 8, 2)
        tile = Image.fromarray(img[i:i + 21, j:j + 21, 0])
        out.append(np.asarray(tile.resize((28, 28), Image.BILINEAR))[..., None])
    return np.stack(out)


def _rotate(images, rng):
    return np.stack([np.asarray(Image.fromarray(img[..., 0]).rotate(float(rng.uniform(-5, 5)), Image.BILINEAR))[..., None]
                     for img in images])


def _noise(images, rng):
    return np.clip(np.rint(images + rng.normal(0, 12.75, images.shape)), 0, 255).astype(np.uint8)


ATTACKS = {
    "none": lambda x, r: x,
    "JPEG 50": lambda x, r: _jpeg(x, 50),
    "JPEG 75": lambda x, r: _jpeg(x, 75),
    "crop 25% + resize": _crop,
    "rotation +-5 deg": _rotate,
    "Gaussian noise 12.75": _noise,
}


def _real(data_dir: Path, n: int) -> np.ndarray:
    raw = gzip.open(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz").read()
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28, 1)[:n].copy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="/work/runs/edit/mnist-ddpm")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=10, help="inversion steps")
    ap.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--json", type=Path, default=HERE / "noise_mark.json")
    ap.add_argument("--no-fid", action="store_true")
    args = ap.parse_args()

    import torch

    import genforge
    from genforge.diffusion import noise_mark
    from genforge.media.watermark import MarkKey

    torch.set_num_threads(1)
    key = MarkKey(KEY)
    gen = genforge.load(args.run)
    pattern = noise_mark.key_pattern(key, gen._noise_shape())
    t0 = time.perf_counter()

    def sample(seed, planted):
        gen.use_mark_key(key if planted else False)
        gen.use_noise_mark(planted)
        gen._marked = lambda images: images  # the noise mark alone; the post-hoc mark is added below
        return gen.generate(args.n, seed=seed, batch_size=250)

    t = time.perf_counter()
    marked = sample(0, True)
    gen_s = time.perf_counter() - t
    plain, plain2 = sample(0, False), sample(1, False)
    gen.use_mark_key(key)
    both = gen.image_mark.embed(marked)  # the post-hoc mark the generator applies (whichever version it is)
    real = _real(args.data_dir, args.n)
    print(f"generated 3 x {args.n} in {time.perf_counter() - t0:.0f} s", flush=True)

    inv_s = [0.0, 0]

    def z_of(images):
        t = time.perf_counter()
        out = []
        for i in range(0, len(images), 250):
            x = gen._inversion_input(images[i:i + 250])
            out.append(noise_mark.z_scores(gen.invert_noise(x, args.steps), pattern))
        inv_s[0] += time.perf_counter() - t
        inv_s[1] += len(images)
        return np.concatenate(out)

    sets = {"noise mark only": (marked, list(ATTACKS)), "noise mark + post-hoc mark": (both, list(ATTACKS)),
            "unmarked samples": (plain, ["none", "JPEG 50"]), "real MNIST test": (real, ["none", "JPEG 50"])}
    z = {}
    for name, (images, attacks) in sets.items():
        for a in attacks:
            rng = np.random.default_rng(1)  # the same attack draws for every set
            z[(name, a)] = z_of(ATTACKS[a](images, rng))
            print(f"{name} / {a}: median z {np.median(z[(name, a)]):.2f}, > {Z_THRESHOLD}: "
                  f"{np.mean(z[(name, a)] >= Z_THRESHOLD):.3f}", flush=True)

    null_found = np.concatenate([z[("unmarked samples", "none")], z[("real MNIST test", "none")]])
    empirical = float(null_found.max())
    tpr = {name: {a: {"tpr_p1e-3": round(float(np.mean(z[(name, a)] >= Z_THRESHOLD)), 4),
                      "tpr_empirical": round(float(np.mean(z[(name, a)] > empirical)), 4),
                      "median_z": round(float(np.median(z[(name, a)])), 2)} for a in attacks}
           for name, (_, attacks) in sets.items() if name.startswith("noise")}
    fpr = {name: {a: {"fpr_p1e-3": round(float(np.mean(z[(name, a)] >= Z_THRESHOLD)), 4),
                      "fpr_p1e-2": round(float(np.mean(z[(name, a)] >= 2.3263)), 4),
                      "z_mean": round(float(z[(name, a)].mean()), 3), "z_std": round(float(z[(name, a)].std()), 3),
                      "z_max": round(float(z[(name, a)].max()), 2)} for a in attacks}
           for name, (_, attacks) in sets.items() if not name.startswith("noise")}
    row = {"run": args.run, "n": args.n, "inversion_steps": args.steps, "band": list(noise_mark.RADIUS),
           "sampler": "unipc 20 (the run's default)", "precision": gen.precision.used,
           "z_threshold": Z_THRESHOLD, "empirical_threshold": round(empirical, 3), "tpr": tpr, "fpr": fpr,
           "null_on_white_noise": noise_mark.null_check(20000, gen._noise_shape()),
           "inversion_ms_per_image": round(1000 * inv_s[0] / max(inv_s[1], 1), 1),
           "generate_s_per_1000": round(gen_s * 1000 / args.n, 1), "cpu": cpu_kind(), "threads": 1,
           "date": time.strftime("%Y-%m-%d")}
    if not args.no_fid:
        from genforge.evaluation import evaluate_images, evaluator_domain, load_evaluator

        evaluator = load_evaluator(evaluator_domain(gen.meta["data"]["dataset"])[0], args.data_dir)
        row["fid"] = {label: round(float(evaluate_images(imgs, evaluator, reference="test", seed=0)["metrics"]["fid"]), 3)
                      for label, imgs in (("noise mark only", marked), ("noise mark + post-hoc mark", both),
                                          ("unmarked", plain), ("unmarked, second seed", plain2))}
    row["total_s"] = round(time.perf_counter() - t0, 1)
    args.json.write_text(json.dumps(row, indent=1) + "\n")
    print(json.dumps(row, indent=1), flush=True)
    _plot(row, args.json.with_suffix(".png"))


def _plot(row: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = list(ATTACKS)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.38
    for i, (name, per) in enumerate(row["tpr"].items()):
        vals = [per.get(a, {}).get("tpr_p1e-3", np.nan) for a in attacks]
        ax.bar(np.arange(len(attacks)) + (i - 0.5) * width, vals, width, label=name)
    ax.axhline(0.95, color="k", lw=0.8, ls="--", label="aim 95%")
    ax.set_xticks(np.arange(len(attacks)), attacks, rotation=15, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("TPR at p <= 1e-3")
    f = row["fpr"]
    ax.set_title(f"noise mark, mnist-ddpm (flow), n={row['n']}: FPR unmarked {f['unmarked samples']['none']['fpr_p1e-3']}, "
                 f"real {f['real MNIST test']['none']['fpr_p1e-3']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
