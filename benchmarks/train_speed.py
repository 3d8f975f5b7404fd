"""Training speed of `mnist-dcgan` against a plain eager PyTorch loop of the same networks, per CPU kind.

    python benchmarks/train_speed.py --data-dir ../shared/data     # ~10 min on 2 idle CPU cores

The reference is what a user writes by hand: the preset's own DCGAN networks, batch 64, Adam(2e-4,
beta1 0.5), fp32, a DataLoader over a TensorDataset, default memory format. genforge is the
`mnist-dcgan` preset through the real training loop (Accelerate, EMA, logging) in fp32, in bf16 and
with the preset's `mixed_precision: auto`, which measures both before training (each auto run gets an
empty precision cache, so every round decides afresh; the JSON keeps each verdict and the probe's time).
Each runs in its own process so peak memory (max RSS) is its own; throughput is steady state, warm-up
steps excluded. The loops run in turn `--rounds` times and each is reported at its best round (all
rounds are in the JSON): this box's speed drifts by 10-20% within minutes, and taking every loop's
best keeps one slow moment from deciding a ratio. Reported: auto's speed as a share of the faster
fixed precision, the speed-up over the reference, the CPU model and flags, FLOPs per training image,
this machine's matrix-product peaks and the share of them reached. Where oneDNN has no bf16 kernels
(AVX2-only CPUs) bf16 runs hundreds of times slower than fp32 in a matrix product, so its loop is timed
for `--slow-bf16-steps` steps in the first round only. Sample quality: benchmarks/quality.py.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from machine import cpu_kind  # benchmarks/machine.py (the script's folder is on sys.path)

HERE = Path(__file__).resolve().parent
BATCH = 64


def _preset_model() -> dict:
    import yaml

    from genforge.training.config import presets_dir

    return yaml.safe_load((presets_dir() / "mnist-dcgan.yaml").read_text())["model"]


MODEL = _preset_model()  # the reference uses exactly the preset's networks
G_WIDTH, D_WIDTH, D_HIDDEN = MODEL["g_width"], MODEL["d_width"], MODEL.get("d_hidden", 0)
CLUSTERS = MODEL.get("clusters", 0)  # self-conditioning: G and D take a cluster id, as a cGAN takes a label


def networks():
    from genforge.models.dcgan import Discriminator, Generator

    return (Generator(28, 1, width=G_WIDTH, num_classes=CLUSTERS, label_prior=CLUSTERS > 0),
            Discriminator(28, 1, width=D_WIDTH, num_classes=CLUSTERS, hidden=D_HIDDEN))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------- speed
def reference_loop(data_dir: str, steps: int, warmup: int) -> dict:
    """The hand-written eager loop a user would start from."""
    from genforge.data import load_image_dataset
    from genforge.data.clusters import image_clusters
    from genforge.models.dcgan import init_weights

    torch.manual_seed(0)
    ds = load_image_dataset("mnist", data_dir=data_dir)
    x = ds.images.permute(0, 3, 1, 2).float().div(127.5).sub(1)
    # the preset's cluster ids (computed before timing, as genforge computes them before its first step)
    y = image_clusters(ds.images, CLUSTERS) if CLUSTERS else torch.zeros(len(x), dtype=torch.long)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=True, drop_last=True)
    G, D = networks()
    init_weights(G), init_weights(D)
    c = (lambda y: (y,)) if CLUSTERS else (lambda y: ())  # the label argument, when the networks take one
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    ones, zeros = torch.ones(BATCH), torch.zeros(BATCH)
    done, t0 = 0, None
    while done < steps + warmup:
        for real, y in loader:
            if done == warmup:
                t0 = time.perf_counter()
            z = torch.randn(BATCH, 100)
            fake = G(z, *c(y))
            opt_d.zero_grad()
            loss_d = bce(D(real, *c(y)), ones) + bce(D(fake.detach(), *c(y)), zeros)
            loss_d.backward()
            opt_d.step()
            opt_g.zero_grad()
            loss_g = bce(D(fake, *c(y)), ones)
            loss_g.backward()
            opt_g.step()
            float(loss_d), float(loss_g)  # a user logs the losses
            done += 1
            if done == steps + warmup:
                break
    dt = time.perf_counter() - t0
    return {"images_per_sec": steps * BATCH / dt, "peak_rss_mb": peak_rss_mb()}


def genforge_loop(data_dir: str, steps: int, warmup: int, precision: str, preset: str = "mnist-dcgan") -> dict:
    from genforge.methods import get_method
    from genforge.training import apply_overrides, read_raw, train, validate

    run = Path(os.environ.get("TMPDIR", "/tmp")) / f"gf-speed-{os.getpid()}"
    shutil.rmtree(run, ignore_errors=True)
    os.environ["GENFORGE_CACHE"] = str(run) + "-cache"  # auto decides afresh in every round
    shutil.rmtree(os.environ["GENFORGE_CACHE"], ignore_errors=True)
    log_every = min(50, steps)
    raw = apply_overrides(read_raw(preset), [
        f"train.max_steps={steps + warmup}", f"train.mixed_precision={precision}", f"train.log_every={log_every}",
        "train.checkpoint_every=1000000", "train.sample_every=1000000"], get_method("gan").Config)
    train(validate(raw), run, data_dir=data_dir, progress=False)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    verdict = json.loads((run / "config.json").read_text())["precision"]
    recs = [r for r in recs if "time" in r]  # loss lines; the precision line has no time
    # steady state: from the first log line at/after warm-up to the end, by wall clock
    first = next(r for r in recs if r["step"] >= warmup)
    last = recs[-1]
    ips = (last["step"] - first["step"]) * BATCH / (last["time"] - first["time"])
    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(os.environ["GENFORGE_CACHE"], ignore_errors=True)
    return {"images_per_sec": ips, "peak_rss_mb": peak_rss_mb(), "precision": verdict["used"],
            "verdict": {k: verdict.get(k) for k in ("source", "seconds_per_step", "speed_vs_fp32", "probe_seconds",
                                                    "notes") if verdict.get(k) is not None}}


def flops_per_image() -> float:
    """FLOPs of one training step (D update on real+fake, G update through D) divided by the batch."""
    from torch.utils.flop_counter import FlopCounterMode

    G, D = networks()
    bce = nn.BCEWithLogitsLoss()
    real, z = torch.randn(BATCH, 1, 28, 28), torch.randn(BATCH, 100)
    c = (torch.randint(CLUSTERS, (BATCH,)),) if CLUSTERS else ()
    with FlopCounterMode(display=False) as fc:
        fake = G(z, *c)
        (bce(D(real, *c), torch.ones(BATCH)) + bce(D(fake.detach(), *c), torch.zeros(BATCH))).backward()
        bce(D(fake, *c), torch.ones(BATCH)).backward()
    return fc.get_total_flops() / BATCH


def run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("GENFORGE_DATA", str(HERE.parent.parent / "shared" / "data")))
    p.add_argument("--steps", type=int, default=500, help="timed steps per speed run")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3,
                   help="the three loops run in turn this many times; each is reported at its best round, so a "
                        "moment of machine noise does not decide the ratio")
    p.add_argument("--slow-bf16-steps", type=int, default=3,
                   help="timed bf16 steps (after one warm-up step, first round only) where oneDNN has no bf16 kernels")
    p.add_argument("--child", choices=["reference", "genforge-auto", "genforge-fp32", "genforge-bf16"],
                   help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child == "reference":
        print(json.dumps(reference_loop(a.data_dir, a.steps, a.warmup)))
        return
    if a.child:
        setting = {"genforge-auto": "auto", "genforge-fp32": "no", "genforge-bf16": "bf16"}[a.child]
        print(json.dumps(genforge_loop(a.data_dir, a.steps, a.warmup, setting)))
        return

    from genforge import precision as prec
    from genforge.doctor import matmul_gflops

    fast_bf16 = prec.cpu_bf16_kernels()
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, {prec.cpu_model()}",
        "cpu_model": prec.cpu_model(), "cpu_flags": prec.cpu_flags(), "onednn_bf16_kernels": fast_bf16,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "batch": BATCH,
        "g_width": G_WIDTH, "d_width": D_WIDTH, "d_hidden": D_HIDDEN,
        # genforge info's measurement: 2048^3 where one product takes under 0.1 s, smaller where bf16 is slow
        "peak_gflops_fp32": round(matmul_gflops(torch.float32), 1),
        "peak_gflops_bf16": round(matmul_gflops(torch.bfloat16), 1),
    }
    common = ["--data-dir", a.data_dir, "--steps", str(a.steps), "--warmup", str(a.warmup)]
    slow = ["--data-dir", a.data_dir, "--steps", str(a.slow_bf16_steps), "--warmup", "1"]
    loops = {"reference_fp32_eager": "reference", "genforge_fp32": "genforge-fp32", "genforge_bf16": "genforge-bf16",
             "genforge_auto": "genforge-auto"}
    rounds = {key: [] for key in loops}
    for r in range(max(1, a.rounds)):
        for key, child in loops.items():
            if child == "genforge-bf16" and not fast_bf16:
                if r == 0:
                    rounds[key].append(run_child(["--child", child, *slow]))
                continue
            rounds[key].append(run_child(["--child", child, *common]))
    for key, results in rounds.items():
        report[key] = {**max(results, key=lambda r: r["images_per_sec"]),
                       "images_per_sec_each_round": [round(r["images_per_sec"], 1) for r in results]}
    if not fast_bf16:
        report["genforge_bf16"]["note"] = (f"no oneDNN bf16 kernels on this CPU: timed for {a.slow_bf16_steps} steps "
                                           "after 1 warm-up step, first round only")
    best_fixed = max(report["genforge_fp32"]["images_per_sec"], report["genforge_bf16"]["images_per_sec"])
    report["auto_share_of_faster_precision"] = report["genforge_auto"]["images_per_sec"] / best_fixed
    report["auto_choices_each_round"] = [r["precision"] for r in rounds["genforge_auto"]]
    report["speedup_vs_reference"] = report["genforge_auto"]["images_per_sec"] / report["reference_fp32_eager"]["images_per_sec"]
    fpi = flops_per_image()
    report["flops_per_training_image"] = fpi
    for key in ("reference_fp32_eager", "genforge_fp32", "genforge_bf16", "genforge_auto"):
        achieved = report[key]["images_per_sec"] * fpi / 1e9
        report[key]["achieved_gflops"] = round(achieved, 1)
        report[key]["share_of_measured_fp32_peak"] = round(achieved / report["peak_gflops_fp32"], 3)
        report[key]["share_of_measured_bf16_peak"] = round(achieved / report["peak_gflops_bf16"], 3)
    out = HERE / f"train_speed-{cpu_kind()}.json"  # one file per kind of box: figures of two kinds never mix
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
