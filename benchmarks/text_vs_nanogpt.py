"""genforge's small text preset against nanoGPT's CPU configuration, on the same box in one run, both scored on
the whole held-out split at their own wall-clock points, plotted as validation loss against seconds.

    python benchmarks/text_vs_nanogpt.py --data-dir ../shared/data --nanogpt /tmp/nanogpt      # ~12 min
    python benchmarks/text_speed.py --side-by-side --nanogpt /tmp/nanogpt ...                  # the same

`--nanogpt DIR` is a checkout of karpathy/nanoGPT. Its `train.py` runs unmodified, in a subprocess, with the
command its README gives for a CPU (`config/train_shakespeare_char.py --device=cpu --compile=False
--eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
--max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`) plus `--always_save_checkpoint=True`, so it writes a
checkpoint at each of its evaluations (every 250 iterations); a small wrapper gives each checkpoint its own
file and the time it was written. Its data are made as its `data/shakespeare_char/prepare.py` makes them
(characters of the whole text, the first 90% for training) from the local tiny Shakespeare.

genforge runs as a user runs it, `genforge train shakespeare-char-gpt-small` in a subprocess, with a
checkpoint at each of its evaluations (every 250 steps): once as the preset stands (2,000 steps), and once
with `--budget-minutes` set so that it ends at nanoGPT's wall-clock (less genforge's import time, measured),
and once with a `--long` budget (default 300 s). Its evaluation records carry their time.

Every checkpoint of both is then scored the same way, outside the timing: the mean next-token loss over every
non-overlapping 64-character window of the held-out 10% (what `genforge eval` reports). Seconds are from each
process's launch. Prints JSON, writes benchmarks/text_vs_nanogpt-<cpu kind>.json and a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

NANOGPT_CPU = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
               "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
               "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0", "--always_save_checkpoint=True"]
BLOCK = 64

# Runs nanoGPT's train.py as it is; each checkpoint it saves goes to its own file with the time of writing.
WRAPPER = """
import os, runpy, sys, time, torch
save = torch.save
def save_each(obj, path, *a, **k):
    if isinstance(obj, dict) and "iter_num" in obj:
        obj = {"model": obj["model"], "model_args": obj["model_args"], "iter_num": obj["iter_num"],
               "own_val_estimate": float(obj["best_val_loss"]), "time": time.time()}
        path = os.path.join(os.path.dirname(path), "ckpt-%06d.pt" % obj["iter_num"])
    return save(obj, path, *a, **k)
torch.save = save_each
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def prepare_nanogpt(nanogpt: Path, text: str, work: Path) -> Path:
    """A copy of the checkout with data/shakespeare_char/{train,val}.bin and meta.pkl made from `text`."""
    root = work / "nanogpt"
    subprocess.run(["cp", "-r", str(nanogpt), str(root)], check=True)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    cut = int(len(text) * 0.9)
    out = root / "data" / "shakespeare_char"
    out.mkdir(parents=True, exist_ok=True)
    np.array([stoi[c] for c in text[:cut]], dtype=np.uint16).tofile(out / "train.bin")
    np.array([stoi[c] for c in text[cut:]], dtype=np.uint16).tofile(out / "val.bin")
    with open(out / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    (root / "wrapped_train.py").write_text(WRAPPER)
    return root


@torch.no_grad()
def whole_split_loss(net, val_ids: torch.Tensor) -> float:
    """Mean loss over every non-overlapping BLOCK-token window of the held-out ids (genforge eval's metric)."""
    from genforge.methods.lm import val_windows, window_losses

    x, y = val_windows(val_ids, BLOCK)
    return float(window_losses(net, x, y, 128).double().mean())


def run_nanogpt(root: Path, threads: int | None, smoke: bool = False) -> dict:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    args = NANOGPT_CPU + (["--max_iters=200", "--lr_decay_iters=200", "--warmup_iters=20", "--eval_interval=100"] if smoke else [])
    t0 = time.time()
    p = subprocess.run([sys.executable, "wrapped_train.py", *args], cwd=root, capture_output=True, text=True,
                       env=env)
    seconds = time.time() - t0
    if p.returncode != 0:
        raise SystemExit(f"nanoGPT failed:\n{p.stderr[-3000:]}")
    sys.path.insert(0, str(root))
    import model as nanogpt_model  # noqa: E402  (nanoGPT's model.py)

    val = torch.from_numpy(np.fromfile(root / "data" / "shakespeare_char" / "val.bin", dtype=np.uint16).astype(np.int64))
    points = []
    for f in sorted((root / "out-shakespeare-char").glob("ckpt-*.pt")):
        ck = torch.load(f, map_location="cpu", weights_only=False)
        net = nanogpt_model.GPT(nanogpt_model.GPTConfig(**ck["model_args"]))
        net.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ck["model"].items()})
        points.append({"step": ck["iter_num"], "seconds": round(ck["time"] - t0, 2),
                       "own_estimate": round(ck["own_val_estimate"], 4),
                       "whole_split": round(whole_split_loss(NanoAdapter(net), val), 4)})
    return {"command": "python train.py " + " ".join(NANOGPT_CPU), "seconds": round(seconds, 1), "points": points}


class NanoAdapter(torch.nn.Module):
    """nanoGPT's forward without targets returns only the last position's logits; with dummy targets it
    returns them all (its loss is not used here)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x, torch.zeros_like(x))[0], None


def run_genforge(tag: str, data_dir: str | None, work: Path, extra: list[str], threads: int | None) -> dict:
    """`genforge train shakespeare-char-gpt-small` with a checkpoint at each evaluation; each scored whole-split."""
    import genforge
    from genforge.data.text import load_text_corpus
    from genforge.methods.lm import split_text
    from safetensors.torch import load_file

    out = work / tag
    cmd = [sys.executable, "-m", "genforge.cli", "train", "shakespeare-char-gpt-small", "--out", str(out),
           "--no-progress", "--set", "train.checkpoint_every=250", "--set", "train.keep_checkpoints=100", *extra,
           *(["--data-dir", data_dir] if data_dir else [])]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.time() - t0
    if p.returncode != 0:
        raise SystemExit(f"genforge failed:\n{p.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r for r in records if "val_loss" in r}
    model = genforge.load(out, select="last", precision="no")
    meta = model.meta["data"]
    _, val_text = split_text(load_text_corpus(meta["dataset"], data_dir).text, meta["val_fraction"])
    val = model.tokenizer.encode_tensor(val_text)
    points = []
    for ck in sorted((out / "checkpoints").glob("step-*")):
        step = int(ck.name.split("-")[1])
        if step not in evals:
            continue
        model.net.load_state_dict(load_file(str(ck / "model.safetensors")))
        r = evals[step]
        points.append({"step": step, "seconds": round(r["time"] - t0, 2), "in_training": round(r["val_loss"], 4),
                       "in_training_se": round(r["val_loss_se"], 4), "whole_split": round(whole_split_loss(model.net, val), 4)})
    plan = next((r for r in records if r.get("event") == "budget"), None)
    return {"command": "genforge train shakespeare-char-gpt-small " + " ".join(extra), "seconds": round(seconds, 1),
            "precision": next((r.get("used") for r in records if r.get("event") == "precision"), None),
            "budget_plan": plan, "points": points}


def import_seconds(threads) -> float:
    """What `genforge train` spends before train() starts (Python, torch, genforge imported): median of 3."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    times = []
    for _ in range(3):
        t = time.time()
        subprocess.run([sys.executable, "-c", "import genforge.cli, genforge.training, genforge.methods.lm"], check=True,
                       env=env)
        times.append(time.time() - t)
    return sorted(times)[1]


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, run in report["runs"].items():
        xs = [p["seconds"] for p in run["points"]]
        ys = [p["whole_split"] for p in run["points"]]
        ax.plot(xs, ys, marker="o", label=f"{name} (end {ys[-1]:.3f} at {xs[-1]:.0f} s)")
    ax.axvline(report["runs"]["nanoGPT CPU config"]["points"][-1]["seconds"], color="grey", ls=":", lw=1)
    ax.set_xlabel("wall-clock seconds from launch")
    ax.set_ylabel("validation loss, whole held-out split (nats)")
    ax.set_ylim(1.35, 2.6)
    ax.grid(alpha=0.3)
    ax.legend()
    flags = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in report["machine"]["cpu_flags"]][:1]
    ax.set_title(f"tiny Shakespeare, {report['machine']['cpu']} ({', '.join(flags)}), {report['machine']['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def side_by_side(data_dir: str | None, nanogpt: str, long_s: float, threads: int | None, out: Path | None,
                 smoke: bool = False) -> dict:
    from genforge import precision as prec
    from genforge.data.text import load_text_corpus

    from machine import cpu_kind  # benchmarks/machine.py

    text = load_text_corpus("tinyshakespeare", data_dir).text
    report = {"date": time.strftime("%Y-%m-%d"), "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "machine": {"cpu": prec.cpu_model(), "cpu_flags": prec.cpu_flags(), "cores": os.cpu_count(),
                          "torch": torch.__version__, "threads": threads or torch.get_num_threads()},
              "metric": f"mean loss over every non-overlapping {BLOCK}-char window of the last 10% (genforge eval)",
              "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["GENFORGE_CACHE"] = str(work / "cache")  # genforge's precision verdict measured in its first run
        runs = report["runs"]
        runs["nanoGPT CPU config"] = run_nanogpt(prepare_nanogpt(Path(nanogpt), text, work), threads, smoke)
        t_nano = runs["nanoGPT CPU config"]["points"][-1]["seconds"]
        runs["genforge preset (2,000 steps)"] = run_genforge(
            "preset", data_dir, work, ["--max-steps", "500"] if smoke else [], threads)
        report["genforge_import_seconds"] = imp = round(import_seconds(threads), 2)
        runs["genforge at nanoGPT's wall-clock"] = run_genforge(
            "budget", data_dir, work, ["--budget-minutes", f"{(t_nano - imp) / 60:.4f}"], threads)
        runs[f"genforge {long_s:.0f}-s budget"] = run_genforge(
            "long", data_dir, work, ["--budget-minutes", f"{(long_s - imp) / 60:.4f}"], threads)
    nano_end = runs["nanoGPT CPU config"]["points"][-1]["whole_split"]
    ours = runs["genforge at nanoGPT's wall-clock"]["points"][-1]
    report["at_nanogpt_wall_clock"] = {"seconds": t_nano, "nanogpt": nano_end, "genforge": ours["whole_split"],
                                       "genforge_seconds": ours["seconds"],
                                       "margin": round(nano_end - ours["whole_split"], 4)}
    out = out or Path(__file__).resolve().parent / f"text_vs_nanogpt-{cpu_kind()}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out.with_suffix(".png"))
    print(json.dumps(report, indent=2))
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("GENFORGE_DATA"))
    ap.add_argument("--nanogpt", required=True, help="a checkout of karpathy/nanoGPT")
    ap.add_argument("--long", type=float, default=300, help="seconds of the longer genforge budget run")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--smoke", action="store_true", help="a quick check of the script: 200 nanoGPT iterations, 500 steps")
    args = ap.parse_args()
    side_by_side(args.data_dir, args.nanogpt, args.long, args.threads, args.out, args.smoke)


if __name__ == "__main__":
    main()
