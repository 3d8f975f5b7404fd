"""Language-model speed per CPU kind: training throughput in fp32, bf16 and `auto` (alternated), what
`shakespeare-char-gpt-small` reaches in a fixed wall-clock budget, and how fast a GPT generates, with and
without the KV cache, in each precision, side by side with nanoGPT's sampling loop.

    python benchmarks/text_speed.py --data-dir ../shared/data --nanogpt /path/to/nanoGPT   # ~15 min
    python benchmarks/text_speed.py --budgets 10 --gen-tokens 20 --compare-steps 20   # smoke test
    python benchmarks/text_speed.py --side-by-side --nanogpt /path/to/nanoGPT --data-dir ../shared/data
        # training against nanoGPT's CPU configuration, whole-split losses against wall-clock (text_vs_nanogpt.py)

Precision: `--compare-rounds` rounds of short runs (`--compare-steps` steps) of the small preset in fp32,
bf16 and `auto` in turn; steady-state tokens/s is the median logged interval after the first; each is
reported at its best round with auto's share of the faster fixed precision. Where oneDNN has no bf16
kernels (AVX2-only CPUs) bf16 is hundreds of times slower and is left out, with that reason in the JSON.

Budget runs (preset defaults, so `auto`): `genforge train --budget-minutes` as a user runs it (the run measures
its step rate over its first steps and sizes its schedule so that the whole `train()` call, set-up and the final
evaluation included, ends inside the budget). Reported: the real seconds, steps, training tokens/s, the in-training
validation loss at the end (200 windows strided across the held-out split, with its standard error) and the loss
on the whole split (`genforge eval`'s) of the same weights, scored after the timing.

Generation: the `shakespeare-char-gpt` architecture (6 layers, 384 wide, block 256) and the small
preset's (nanoGPT's CPU size; `--set` applies to it too), with random weights, which do not change the
speed, continue a one-token prompt by `--gen-tokens` tokens (default 500, so the window slides past the
block) with temperature 0.8, batch 1: fp32 and bf16 with and without the cache, and `auto` (the precision
`genforge.load` picks for the model on this machine). With `--nanogpt DIR` (a checkout of
karpathy/nanoGPT: its model.py is imported from there) nanoGPT's `GPT.generate`, which is what its
sample.py runs (fp32 on CPU, top_k 200), is timed on the same architecture in alternation with
genforge's cached fp32 and auto decoding. Each setting runs once untimed, then the best of `--repeats`
timed runs is kept.

Prints one JSON object and writes it to benchmarks/text_speed-<cpu kind>.json (or `--out FILE`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def throughput(data_dir: str | None, steps: int, setting: str, overrides=()) -> dict:
    """Steady-state training tokens/s of the small preset in one precision setting (median logged interval
    after the first), with the precision verdict of the run."""
    from genforge.methods import get_method
    from genforge.training import apply_overrides, read_raw, train, validate

    raw = apply_overrides(read_raw("shakespeare-char-gpt-small"), list(overrides), get_method("lm").Config)
    raw["train"] = {**raw["train"], "max_steps": steps, "eval_every": None, "log_every": 10, "sample_every": 10**9,
                    "checkpoint_every": 10**9, "mixed_precision": setting}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GENFORGE_CACHE"] = str(Path(tmp) / "cache")  # auto decides afresh every round
        t = time.perf_counter()
        res = train(validate(raw), Path(tmp) / "run", data_dir=data_dir, progress=False)
        seconds = time.perf_counter() - t
        lines = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_sec"] for r in lines if "tokens_per_sec" in r][1:]
    verdict = next((r for r in lines if r.get("event") == "precision"), {})
    return {"setting": setting, "precision": res.precision, "tokens_per_sec": round(statistics.median(rates), 1),
            "run_seconds": round(seconds, 1), "probe_seconds": verdict.get("probe_seconds"),
            "verdict_source": verdict.get("source", "explicit"), "seconds_per_step": verdict.get("seconds_per_step")}


def compare_precisions(data_dir, steps: int, rounds: int, fast_bf16: bool, overrides=()) -> dict:
    settings = ["no", "bf16", "auto"] if fast_bf16 else ["no", "auto"]
    runs = {s: [] for s in settings}
    for _ in range(rounds):
        for setting in settings:
            runs[setting].append(throughput(data_dir, steps, setting, overrides))
    best = {s: max(r, key=lambda x: x["tokens_per_sec"]) for s, r in runs.items()}
    fastest_fixed = max(best[s]["tokens_per_sec"] for s in settings if s != "auto")
    return {"steps": steps, "rounds": rounds,
            "best": best, "each_round": {s: [x["tokens_per_sec"] for x in r] for s, r in runs.items()},
            "auto_choices": [x["precision"] for x in runs["auto"]],
            "auto_share_of_faster_precision": round(best["auto"]["tokens_per_sec"] / fastest_fixed, 3),
            **({} if fast_bf16 else {"bf16": "not run: oneDNN has no bf16 kernels for this CPU"})}


def train_steps(steps: int, data_dir: str | None, overrides=()) -> dict:
    """The small preset trained for `steps` (its schedule sized to them), scored at the end in training and on
    the whole split; the median logged step time after the first interval."""
    return train_for(None, data_dir, [*overrides, f"train.max_steps={steps}"])


def train_for(budget_s: float | None, data_dir: str | None, overrides=()) -> dict:
    """The small preset fitted to `budget_s` by `train.budget_minutes` (the run measures its step rate and
    sizes its schedule; the budget counts from the start of `train()`, set-up included), evaluated once at
    the end in training (the preset's strided windows, with their standard error) and then by `genforge
    eval`'s whole-split loss on the same weights, outside the timing."""
    import genforge
    from genforge.evaluation.text import text_metrics
    from genforge.methods import get_method
    from genforge.training import apply_overrides, read_raw, train, validate

    raw = apply_overrides(read_raw("shakespeare-char-gpt-small"), list(overrides), get_method("lm").Config)
    raw["train"] = {**raw["train"], "budget_minutes": budget_s / 60 if budget_s else None, "eval_every": 10**9,
                    "sample_every": 10**9, "checkpoint_every": 10**9}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = train(validate(raw), Path(tmp) / "run", data_dir=data_dir, progress=False)
        seconds = time.perf_counter() - t
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        whole = text_metrics(genforge.load(Path(tmp) / "run", select="last"), data_dir)
        sample = (Path(tmp) / "run" / "samples" / "final.txt").read_text(encoding="utf-8")
    val = [r for r in records if "val_loss" in r][-1]
    rates = [r["tokens_per_sec"] for r in records if "tokens_per_sec" in r][1:]
    tokens_per_step = raw["train"]["batch_size"] * raw["model"]["block_size"] * raw["train"].get("grad_accum", 1)
    plan = next((r for r in records if r.get("event") == "budget"), {})
    precision = next((r for r in records if r.get("event") == "precision"), {"used": res.precision, "source": "explicit"})
    return {"budget_s": budget_s, "precision": {k: precision.get(k) for k in ("used", "source", "probe_seconds")},
            "seconds": round(seconds, 1), "planned_steps": plan.get("total_steps"), "steps": res.step,
            "train_tokens_per_sec": round(res.items_per_second, 1),
            "median_step_ms": round(1000 * tokens_per_step / statistics.median(rates), 1) if rates else None,
            "final_train_loss": round(res.last_losses.get("loss", float("nan")), 4),
            "in_training_val_loss": round(val["val_loss"], 4), "in_training_val_se": round(val["val_loss_se"], 4),
            "in_training_windows": f"{val['val_windows']} of {val['val_windows_of']}",
            "whole_split_val_loss": round(whole["val_loss"], 4),
            "in_training_vs_whole": round(val["val_loss"] / whole["val_loss"] - 1, 4), "sample_head": sample[:300]}


def _timed(fn, repeats: int) -> tuple[float, int]:
    fn()  # warm-up
    return min(fn() for _ in range(repeats))


def generation_speed(tokens: int, repeats: int, preset: str, fast_bf16: bool, nanogpt: str | None = None,
                     overrides=()) -> list[dict]:
    """tokens/s of `preset`'s GPT architecture (random weights: the speed does not depend on them)."""
    from genforge.artifacts import TextGenerator
    from genforge.methods import get_method
    from genforge.models.gpt import GPT, GPTConfig
    from genforge.models.sampling import generate_ids
    from genforge.training import apply_overrides, read_raw

    m = apply_overrides(read_raw(preset), list(overrides), get_method("lm").Config)["model"]
    torch.manual_seed(0)
    net = GPT(GPTConfig(vocab_size=66, block_size=m["block_size"], n_layer=m["n_layer"], n_head=m["n_head"],
                        n_embd=m["n_embd"], bias=m["bias"])).eval()
    arch = f"{preset}: {m['n_layer']} layers, {m['n_head']} heads, {m['n_embd']} wide, block {m['block_size']}"
    # what genforge.load would pick on this machine for this shape (a fresh cache: measured now)
    auto = TextGenerator(Path("."), {"family": "lm"}, net, None, torch.device("cpu"), precision="auto")

    def genforge_run(dtype, use_cache):
        model = auto._net_in(dtype)  # the weights cast once, as generate()'s docstring advises

        def once():
            g = torch.Generator().manual_seed(0)
            t = time.perf_counter()
            ids = generate_ids(model, [[0]], tokens, temperature=0.8, generator=g, use_cache=use_cache, dtype=dtype)
            return time.perf_counter() - t, len(ids[0])
        return once

    out = []

    def row(name, kv, best_n, **extra):
        best, n = best_n
        out.append({"model": arch, "precision": name, "kv_cache": kv, "new_tokens": n, "seconds": round(best, 3),
                    "tokens_per_sec": round(n / best, 1), **extra})

    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        if dtype is not None and not fast_bf16:
            out.append({"model": arch, "precision": "bf16", "note": "not run: oneDNN has no bf16 kernels for this CPU"})
            continue
        for use_cache in (True, False):
            row(name, use_cache, _timed(genforge_run(dtype, use_cache), repeats))
    # auto (what genforge.load picks here) alternated with fp32, and with nanoGPT's sample.py loop when given
    runs = {"fp32": genforge_run(None, True), "auto": genforge_run(auto.dtype, True)}
    if nanogpt is not None:
        sys.path.insert(0, str(Path(nanogpt).resolve()))
        import model as nanogpt_model  # noqa: E402  (nanoGPT's model.py)

        torch.manual_seed(0)
        ng = nanogpt_model.GPT(nanogpt_model.GPTConfig(vocab_size=66, block_size=m["block_size"], n_layer=m["n_layer"],
                                                       n_head=m["n_head"], n_embd=m["n_embd"], dropout=0.0,
                                                       bias=m["bias"])).eval()

        def nanogpt_once():
            torch.manual_seed(1337)
            x = torch.zeros((1, 1), dtype=torch.long)
            t = time.perf_counter()
            with torch.no_grad():
                y = ng.generate(x, tokens, temperature=0.8, top_k=200)
            return time.perf_counter() - t, y.size(1) - 1

        runs = {"nanogpt": nanogpt_once, **runs}
    for fn in runs.values():
        fn()  # warm-up
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            times[k].append(fn())
    ref = min(times["nanogpt"]) if "nanogpt" in times else None
    if ref:
        row("fp32 (nanoGPT sample.py loop)", False, ref,
            each_round_tokens_per_sec=[round(n / t, 1) for t, n in times["nanogpt"]])
    fp32_best = min(times["fp32"])
    for k, name in (("fp32", "fp32 (alternated)"), ("auto", f"auto ({auto.precision.used})")):
        best = min(times[k])
        extra = {"vs_nanogpt": round((best[1] / best[0]) / (ref[1] / ref[0]), 2)} if ref else {}
        if k == "auto":
            extra["share_of_fp32"] = round((best[1] / best[0]) / (fp32_best[1] / fp32_best[0]), 3)
        row(name, True, best, each_round_tokens_per_sec=[round(n / t, 1) for t, n in times[k]], **extra)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[60, 300], help="training budgets in seconds")
    ap.add_argument("--data-dir", default=os.environ.get("GENFORGE_DATA"))
    ap.add_argument("--compare-steps", type=int, default=150, help="steps per run of the fp32 / bf16 / auto comparison")
    ap.add_argument("--compare-rounds", type=int, default=2)
    ap.add_argument("--gen-tokens", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nanogpt", help="a nanoGPT checkout (its model.py), to time its sampling loop side by side")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[],
                    help="overrides of the preset for the training runs, e.g. train.batch_size=16 (to try recipes)")
    ap.add_argument("--side-by-side", action="store_true",
                    help="only the training side-by-side with nanoGPT's CPU configuration (needs --nanogpt)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.side_by_side:
        from text_vs_nanogpt import side_by_side

        if not args.nanogpt:
            raise SystemExit("--side-by-side needs --nanogpt DIR (a checkout of karpathy/nanoGPT)")
        side_by_side(args.data_dir, args.nanogpt, 300, args.threads, None)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ["GENFORGE_CACHE"] = tempfile.mkdtemp(prefix="gf-text-speed-cache-")  # every verdict measured here
    from genforge import precision as prec

    from machine import cpu_kind  # benchmarks/machine.py (the script's folder is on sys.path)

    fast_bf16 = prec.cpu_bf16_kernels()
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": prec.cpu_model(), "cpu_flags": prec.cpu_flags(), "onednn_bf16_kernels": fast_bf16,
                    "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if not args.skip_training:
        report["training_precision"] = compare_precisions(args.data_dir, args.compare_steps, args.compare_rounds,
                                                          fast_bf16, args.overrides)
        report["training"] = [train_for(b, args.data_dir, args.overrides) for b in args.budgets]
    # the full preset's size (block 256: the KV-cache aim) and the small one's (nanoGPT's CPU size)
    report["generation"] = (generation_speed(args.gen_tokens, args.repeats, "shakespeare-char-gpt", fast_bf16)
                            + generation_speed(args.gen_tokens, args.repeats, "shakespeare-char-gpt-small", fast_bf16,
                                               args.nanogpt, args.overrides))
    out = args.out or Path(__file__).resolve().parent / f"text_speed-{cpu_kind()}.json"
    if args.skip_training and out.exists():  # keep the training figures of the last full run, with their command
        earlier = json.loads(out.read_text())
        for key in ("training_precision", "training"):
            if key in earlier:
                report[key] = earlier[key]
                report["training_from"] = earlier.get("training_from") or {"date": earlier["date"],
                                                                             "command": earlier["command"]}
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
