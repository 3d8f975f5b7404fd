"""Language-model speed: what `shakespeare-char-gpt-small` reaches in a fixed wall-clock budget, and how
fast a block-256 GPT generates, with and without the KV cache, in float32 and bfloat16.

    python benchmarks/text_speed.py --data-dir ../shared/data                     # budgets 60 s and 300 s
    python benchmarks/text_speed.py --budgets 10 --gen-tokens 20 --calibrate-steps 10   # a quick check that it runs

Training: a short calibration run measures steps/s (median interval) and the time spent outside steps;
the timed run then gets `max_steps` = (budget - that time) x steps/s x 0.95, so the whole `train()` call,
set-up and evaluations included, and its warm-up + cosine schedule end inside the budget (a run cut off
mid-schedule would be judged at a high learning rate). Reported: the real seconds, training tokens/s (steady state over
the whole run, evaluations included), and the validation loss at the end and at its best.

Generation: the `shakespeare-char-gpt` architecture (6 layers, 384 wide, block 256) and the small
preset's (nanoGPT's CPU size; `--set` applies to it too), with random weights, which do not change
the speed, continue a one-token prompt by `--gen-tokens` tokens (default 500, so the window slides
past the block) with temperature 0.8, batch 1. Each setting runs once untimed, then the best of
`--repeats` timed runs is kept.

Prints one JSON object; `--out FILE` also writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def train_for(budget_s: float, data_dir: str | None, calibrate_steps: int, threads: int, overrides=()) -> dict:
    from genforge.methods import get_method
    from genforge.training import apply_overrides, read_raw, train, validate

    raw = apply_overrides(read_raw("shakespeare-char-gpt-small"), list(overrides), get_method("lm").Config)
    with tempfile.TemporaryDirectory() as tmp:
        calib = dict(raw, train={**raw["train"], "max_steps": calibrate_steps, "eval_every": None, "log_every": 10,
                                 "sample_every": 10**9, "checkpoint_every": 10**9})
        t = time.perf_counter()
        train(validate(calib), Path(tmp) / "calib", data_dir=data_dir, progress=False)
        setup_and_calib = time.perf_counter() - t
        tokens_per_step = raw["train"]["batch_size"] * raw["model"]["block_size"]
        # steady state: the median logged interval after the first (kernel set-up); one interval alone is noisy
        rates = [json.loads(line)["tokens_per_sec"] for line in
                 (Path(tmp) / "calib" / "metrics.jsonl").read_text().splitlines()][1:]
        steps_per_s = statistics.median(rates) / tokens_per_step
        # what the calibration run spent outside its steps (data, tokenizer, the final sample and checkpoint)
        # is spent again by the timed run; 5% of the rest is left for its four validation passes
        overhead = max(0.0, setup_and_calib - calibrate_steps / steps_per_s)
        steps = max(10, int((budget_s - overhead) * steps_per_s * 0.95))
        cfg = dict(raw, train={**raw["train"], "max_steps": steps, "eval_every": max(1, steps // 4),
                               "sample_every": 10**9, "checkpoint_every": 10**9})
        cfg["model"] = {**raw["model"], "warmup_steps": min(raw["model"]["warmup_steps"], max(1, steps // 10))}
        t = time.perf_counter()
        res = train(validate(cfg), Path(tmp) / "run", data_dir=data_dir, progress=False)
        seconds = time.perf_counter() - t
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        sample = (Path(tmp) / "run" / "samples" / "final.txt").read_text(encoding="utf-8")
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    return {"budget_s": budget_s, "seconds": round(seconds, 1), "setup_and_calibration_s": round(setup_and_calib, 1),
            "steps": res.step, "train_tokens_per_sec": round(res.items_per_second, 1),
            "final_train_loss": round(res.last_losses.get("loss", float("nan")), 4),
            "final_val_loss": round(vals[-1], 4) if vals else None, "best_val_loss": round(min(vals), 4) if vals else None,
            "sample_head": sample[:300]}


def generation_speed(tokens: int, repeats: int, preset: str, overrides=()) -> list[dict]:
    """tokens/s of `preset`'s GPT architecture (random weights: the speed does not depend on them)."""
    from genforge.methods import get_method
    from genforge.models.gpt import GPT, GPTConfig
    from genforge.models.sampling import generate_ids
    from genforge.training import apply_overrides, read_raw

    m = apply_overrides(read_raw(preset), list(overrides), get_method("lm").Config)["model"]
    torch.manual_seed(0)
    net = GPT(GPTConfig(vocab_size=66, block_size=m["block_size"], n_layer=m["n_layer"], n_head=m["n_head"],
                        n_embd=m["n_embd"], bias=m["bias"])).eval()
    arch = f"{preset}: {m['n_layer']} layers, {m['n_head']} heads, {m['n_embd']} wide, block {m['block_size']}"
    out = []
    for dtype_name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        model = net if dtype is None else net.to(dtype)  # cast once, as generate()'s docstring advises
        for use_cache in (True, False):
            def once():
                g = torch.Generator().manual_seed(0)
                t = time.perf_counter()
                ids = generate_ids(model, [[0]], tokens, temperature=0.8, generator=g, use_cache=use_cache, dtype=dtype)
                return time.perf_counter() - t, len(ids[0])
            once()  # warm-up
            best, n = min(once() for _ in range(repeats))
            out.append({"model": arch, "precision": dtype_name, "kv_cache": use_cache, "new_tokens": n,
                        "seconds": round(best, 3), "tokens_per_sec": round(n / best, 1)})
        net = net.float()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[60, 300], help="training budgets in seconds")
    ap.add_argument("--data-dir", default=os.environ.get("GENFORGE_DATA"))
    ap.add_argument("--calibrate-steps", type=int, default=60)
    ap.add_argument("--gen-tokens", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[],
                    help="overrides of the preset for the training runs, e.g. train.batch_size=16 (to try recipes)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from genforge.training.loop import resolve_precision

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "auto_precision": resolve_precision("auto")},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "training": [] if args.skip_training else
        [train_for(b, args.data_dir, args.calibrate_steps, args.threads, args.overrides) for b in args.budgets],
        # the full preset's size (block 256: the KV-cache aim) and the small one's (nanoGPT's CPU size)
        "generation": generation_speed(args.gen_tokens, args.repeats, "shakespeare-char-gpt")
        + generation_speed(args.gen_tokens, args.repeats, "shakespeare-char-gpt-small", args.overrides),
    }
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
