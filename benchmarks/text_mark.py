"""Issue 28 item 4: a cheaper text mark. The tournament mark (media/text_mark.TournamentMark) against the green-list
mark it replaces, on a language-model run: detection, false positives and what the mark costs.

    python benchmarks/text_mark.py --run RUN --human tinyshakespeare --texts 200 \
        --settings 20,3 10,3 30,3 20,2 20,4 green --temperatures 1.0 0.8

Per temperature: --texts texts of --tokens new tokens from --prompt, without the mark (seed 0) and with each
setting (LAYERS,CONTEXT of the tournament, LAYERS,CONTEXT,all to mark repeated contexts too, or `green` for the green-list mark at its default delta 1.5),
the same seeds. Reported per setting: the share with z > 4 (and with z above the `verify` threshold once it has
tried both schemes, Bonferroni), z's median and 5th percentile, z of the unmarked texts, and the perplexity cost of
the generated tokens under the model itself, measured as benchmarks/provenance.py measures it (marked against
unmarked, exp of the difference of mean cross-entropies) with a paired bootstrap 95% interval; and the expected
cost: the mean over every marked step of sum_x (p'(x) - p(x)) (-log q(x)), with p the sampling distribution,
p' the marked one, q the model's own at temperature 1: the same quantity with far less sampling noise. With
--python, also the share of texts whose first top-level statement parses (`genforge eval`'s parse rate). Human
text: z of every --tokens-token window (non-overlapping) of --human (tinyshakespeare, or python-stdlib: the
running Python's standard library), per setting. --key-spread-settings: those settings again under --keys other
keys (z and the expected cost per key: a fixed key's text is distributed as unmarked text only on average over
keys, since common contexts recur across texts).

Writes benchmarks/text_mark-<run name>.json (or --json).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_kind
from provenance import KEY

HERE = Path(__file__).resolve().parent
BONFERRONI_Z = 4.17  # the z whose one-sided p is half of z = 4's: `verify` scores both schemes


def make_mark(setting: str, key, vocab: int):
    from genforge.media.text_mark import TextMark, TournamentMark

    if setting == "green":
        return TextMark(key, vocab)
    layers, context, *every = setting.split(",")  # "20,3": masked repeats; "20,3,all": every position marked
    return TournamentMark(key, vocab, layers=int(layers), context=int(context), mask_repeats=not every)


class Recording:
    """A tournament mark that also adds up the expected cross-entropy change of each step it reweights."""

    def __init__(self, mark, temperature: float):
        self.mark, self.t = mark, temperature
        self.delta, self.steps = 0.0, 0

    def reweight(self, ids, probs):
        new = self.mark.reweight(ids, probs)
        if new is not None:
            p = np.asarray(probs, np.float64)
            with np.errstate(divide="ignore"):
                lq = self.t * np.log(p)  # the model's own log-probabilities, up to a constant
            keep = p > 0
            lq = lq - np.log(np.exp(lq[keep]).sum())
            self.delta += float(((new - p)[keep] * -lq[keep]).sum())
            self.steps += 1
        return new


def generate(model, prompt: str, n: int, tokens: int, temperature: float, mark, batch: int) -> list[str]:
    from genforge.text_jobs import joined

    out = []
    for start in range(0, n, batch):
        m = min(batch, n - start)
        jobs = model.jobs([prompt] * m, tokens, temperature, seed=start, mark=False)
        for job in jobs:
            job.mark = mark
        out += joined(model.run(jobs), m)
    return out


def nll_rows(model, tok, prompt: str, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per text: summed cross-entropy (nats) of its tokens under the model and their count, in windows of the
    block size stepped by half a block (benchmarks/provenance.py's `_nll`, kept per text)."""
    import torch

    rows = [tok.encode(prompt + t) for t in texts]
    length = min(map(len, rows))
    ids = torch.tensor([r[:length] for r in rows])
    block = getattr(getattr(model.net, "config", None), "block_size", None) or ids.size(1)
    half = max(1, block // 2)
    total, count = torch.zeros(len(rows), dtype=torch.float64), 0
    with torch.no_grad():
        for start in range(0, ids.size(1) - 1, half):
            out = model.net(ids[:, start:start + block])
            logits = (out[0] if isinstance(out, tuple) else out).float()
            targets = ids[:, start + 1:start + block + 1]
            lp = torch.log_softmax(logits[:, :targets.size(1)], -1).gather(-1, targets[..., None])[..., 0]
            first = 0 if start == 0 else half
            total -= lp[:, first:].double().sum(1)
            count += lp[:, first:].size(1)
            if start + block >= ids.size(1) - 1:
                break
    return total.numpy(), np.full(len(rows), count)


def ppl_cost(marked: tuple, plain: tuple, seed: int = 0) -> tuple[float, list[float]]:
    (tm, cm), (tp, cp) = marked, plain
    cost = math.exp(tm.sum() / cm.sum() - tp.sum() / cp.sum()) - 1
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(2000):
        i = rng.integers(0, len(tm), len(tm))
        boot.append(math.exp(tm[i].sum() / cm[i].sum() - tp[i].sum() / cp[i].sum()) - 1)
    return cost, [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]


def human_windows(name: str, tok, tokens: int, limit: int | None) -> list[list[int]]:
    from genforge.data.text import load_text_corpus

    text = load_text_corpus(name).text
    if limit is None:  # every window
        ids = tok.encode(text)
        return [ids[i:i + tokens] for i in range(0, len(ids) - tokens, tokens)]
    # `limit` windows from evenly spaced places (each slice encoded alone: a large corpus is slow to encode whole)
    span, windows = tokens * 12, []
    for i in range(limit):
        at = int(i * (len(text) - span) / limit)
        ids = tok.encode(text[at:at + span])[1:]  # the first token may be a cut piece
        if len(ids) >= tokens:
            windows.append(ids[:tokens])
    return windows


def summary(z: list[float]) -> dict:
    z = np.asarray(z)
    return {"share_z_over_4": round(float(np.mean(z > 4)), 4),
            "share_z_over_4_17": round(float(np.mean(z > BONFERRONI_Z)), 4),
            "z_median": round(float(np.median(z)), 2), "z_5th_percentile": round(float(np.percentile(z, 5)), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a language model's run directory")
    p.add_argument("--texts", type=int, default=200)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--prompt", default="\n")
    p.add_argument("--settings", nargs="*", default=["20,3", "green"])
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.8])
    p.add_argument("--human", default="tinyshakespeare", help="tinyshakespeare or python-stdlib")
    p.add_argument("--human-windows", type=int, default=None, help="at most this many windows (evenly spread)")
    p.add_argument("--python", action="store_true", help="also the parse rate of the texts (a Python-code model)")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--key-spread-settings", nargs="*", default=[], help="settings to repeat over --keys other keys")
    p.add_argument("--keys", type=int, default=8)
    p.add_argument("--json", default=None)
    args = p.parse_args()

    import genforge
    from genforge.evaluation.text import python_parse_rate
    from genforge.media.watermark import MarkKey

    t0 = time.perf_counter()
    model = genforge.load(args.run, precision="no", select="last")
    model.use_mark_key(False)
    tok = model.tokenizer
    key, wrong = MarkKey(KEY), MarkKey(b"another key, also not a secret, 32 bytes")
    path = Path(args.json or HERE / f"text_mark-{Path(args.run).name}.json")
    results = json.loads(path.read_text()) if path.exists() else {}
    results.update({"run": args.run, "tokens": args.tokens, "prompt": args.prompt})
    results.setdefault("rows", {})

    command = "python benchmarks/text_mark.py " + " ".join(sys.argv[1:])
    earlier = [c for c in results.get("meta", {}).get("commands", []) if c["command"] != command]

    def save():  # a later command (e.g. one more --key-spread-settings) adds its rows and its line here
        results["meta"] = {"commands": earlier + [{"command": command, "date": time.strftime("%Y-%m-%d"),
                                                   "cpu": cpu_kind(), "seconds": round(time.perf_counter() - t0, 1)}]}
        path.write_text(json.dumps(results, indent=2) + "\n")

    for temperature in args.temperatures:
        t = time.perf_counter()
        plain = generate(model, args.prompt, args.texts, args.tokens, temperature, None, args.batch)
        plain_nll = nll_rows(model, tok, args.prompt, plain)
        base = {"texts": args.texts, "perplexity": round(float(np.exp(plain_nll[0].sum() / plain_nll[1].sum())), 4),
                "seconds": round(time.perf_counter() - t, 1)}
        if args.python:
            base["parse_rate"] = python_parse_rate([args.prompt + s for s in plain])
        results["rows"][f"unmarked, temperature {temperature:g}"] = base
        print(json.dumps({"unmarked": temperature, **base}), flush=True)
        for setting in args.settings:
            t = time.perf_counter()
            mark = make_mark(setting, key, tok.vocab_size)
            rec = Recording(mark, temperature) if setting != "green" else mark
            marked = generate(model, args.prompt, args.texts, args.tokens, temperature, rec, args.batch)
            seconds = time.perf_counter() - t
            start = len(tok.encode(args.prompt))
            zm = [mark.score(tok.encode(args.prompt + s), start=start)["z"] for s in marked]
            zp = [mark.score(tok.encode(args.prompt + s), start=start)["z"] for s in plain]
            zw = [make_mark(setting, wrong, tok.vocab_size).score(tok.encode(args.prompt + s), start=start)["z"]
                  for s in marked[:50]]
            cost, ci = ppl_cost(nll_rows(model, tok, args.prompt, marked), plain_nll)
            row = {"setting": setting, "temperature": temperature, "texts": args.texts, **summary(zm),
                   "unmarked_share_z_over_4": round(float(np.mean(np.asarray(zp) > 4)), 4),
                   "unmarked_z_mean": round(float(np.mean(zp)), 3), "unmarked_z_sd": round(float(np.std(zp)), 3),
                   "wrong_key_z_max": round(float(max(zw)), 2),
                   "perplexity_cost": round(cost, 4), "perplexity_cost_95ci": [round(c, 4) for c in ci],
                   "tokens_scored_median": float(np.median([mark.score(tok.encode(args.prompt + s), start=start)
                                                            ["tokens_scored"] for s in marked[:50]])),
                   "seconds": round(seconds, 1)}
            if setting != "green" and rec.steps:
                row["expected_perplexity_cost"] = round(math.exp(rec.delta / rec.steps) - 1, 4)
                row["marked_steps_share"] = round(rec.steps / (args.texts * args.tokens), 4)
                by_weight = {}
                for last in (1.0, 0.5, 0.1, 0.0):  # the layer weights' slope (the g-values do not depend on it)
                    mark.weights = np.linspace(1.0, last, mark.layers)
                    zl = [mark.z_of(mark.gvalues(tok.encode(args.prompt + s), start)) for s in marked]
                    by_weight[f"{last:g}"] = summary(zl)
                mark.weights = np.linspace(1.0, mark.last_weight, mark.layers)
                row["by_last_weight"] = by_weight
            if args.python:
                row["parse_rate"] = python_parse_rate([args.prompt + s for s in marked])
            results["rows"][f"{setting}, temperature {temperature:g}"] = row
            print(json.dumps(row), flush=True)
            save()
    for setting in args.key_spread_settings:  # the same over other keys: how the cost and z vary with the key
        for temperature in args.temperatures:
            t, costs, shares, p5s = time.perf_counter(), [], [], []
            for k in range(args.keys):
                other = MarkKey(f"spread key {k:02d}: not a secret, 32+ bytes".encode())
                mark = make_mark(setting, other, tok.vocab_size)
                rec = Recording(mark, temperature)
                marked = generate(model, args.prompt, args.texts, args.tokens, temperature, rec, args.batch)
                start = len(tok.encode(args.prompt))
                z = [mark.score(tok.encode(args.prompt + s), start=start)["z"] for s in marked]
                costs.append(math.exp(rec.delta / rec.steps) - 1)
                shares.append(float(np.mean(np.asarray(z) > 4)))
                p5s.append(float(np.percentile(z, 5)))
            row = {"setting": setting, "temperature": temperature, "keys": args.keys, "texts_per_key": args.texts,
                   "expected_perplexity_cost_mean": round(float(np.mean(costs)), 4),
                   "expected_perplexity_cost_sd": round(float(np.std(costs)), 4),
                   "expected_perplexity_cost_range": [round(min(costs), 4), round(max(costs), 4)],
                   "share_z_over_4_min": round(min(shares), 4), "z_5th_percentile_min": round(min(p5s), 2),
                   "seconds": round(time.perf_counter() - t, 1)}
            results["rows"][f"{setting}, temperature {temperature:g}, {args.keys} keys"] = row
            print(json.dumps(row), flush=True)
            save()
    windows = human_windows(args.human, tok, args.tokens, args.human_windows)
    for setting in args.settings:
        mark = make_mark(setting, key, tok.vocab_size)
        z = np.asarray([mark.score(w)["z"] for w in windows])
        row = {"source": args.human, "windows": len(windows), "tokens": args.tokens,
               "false_positive_rate_z_over_4": round(float(np.mean(z > 4)), 5), "z_max": round(float(z.max()), 2),
               "z_mean": round(float(z.mean()), 3), "z_sd": round(float(z.std()), 3)}
        results["rows"][f"{setting}, human"] = row
        print(json.dumps({"setting": setting, **row}), flush=True)
        save()
    save()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
