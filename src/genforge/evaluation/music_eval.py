"""`genforge eval` of a music run: the language model's held-out bits per character (ABC) or nats per event, and
the music it composes against the real held-out pieces (music_metrics.py): validity, MGEval overlap areas with
the real train-vs-test floor, and memorization beside the real held-out pieces' own copy rate."""

from __future__ import annotations

import time

from genforge.data.music import load_music_corpus
from genforge.evaluation.music_metrics import music_report
from genforge.evaluation.text import text_metrics

DEFAULT_PIECES = 200
BATCH = 50  # pieces composed per batch (one KV cache each)


def compose_for_eval(model, n: int, seed: int, temperature: float = 1.0, progress: bool = False) -> tuple[list, dict]:
    """n pieces from the model's own start (no prompt), invalid ones kept: validity is what is measured."""
    from genforge.evaluation.evaluator import progress_bar

    pieces, counts = [], {"drawn": 0, "invalid": 0, "incomplete": 0, "reasons": {}}
    with progress_bar(progress, "composing", n) as advance:
        for start in range(0, n, BATCH):
            got, c = model.compose(None, min(BATCH, n - start), temperature=temperature, seed=seed + start,
                                   keep_invalid=True)
            pieces += got
            for k in ("drawn", "invalid", "incomplete"):
                counts[k] += c[k]
            for k, v in c["reasons"].items():
                counts["reasons"][k] = counts["reasons"].get(k, 0) + v
            advance(len(got), f"{sum(p.valid for p in pieces)} valid")
    return pieces, counts


def music_run_report(model, data_dir=None, n: int | None = None, seed: int = 0, progress: bool = False) -> dict:
    """The report `genforge eval` writes for a music run."""
    t = time.perf_counter()
    data = model.meta["data"]
    text = text_metrics(model, data_dir)
    t_text = time.perf_counter() - t
    corpus = load_music_corpus(data["dataset"], data["val_fraction"], data.get("tokenizer"))
    n = DEFAULT_PIECES if n is None else n
    t = time.perf_counter()
    pieces, counts = compose_for_eval(model, n, seed, progress=progress)
    t_compose = time.perf_counter() - t
    t = time.perf_counter()
    valid = sum(p.valid for p in pieces) / max(len(pieces), 1)
    metrics = {**text, "validity": valid, "complete": 1.0 - counts["incomplete"] / max(counts["drawn"], 1),
               "pieces": len(pieces)}
    try:
        music = music_report([p.text for p in pieces if p.complete], corpus.test, corpus.train, corpus.kind, n=n,
                             seed=seed)
    except ValueError as e:  # too few composed pieces parse to compare statistics: validity says it all
        music = {"error": str(e)}
    else:
        metrics.update({"validity_real_test": music["validity_real_test"], "overlap_mean": music["overlap"]["mean"],
                        "overlap_floor_mean": music["floor"]["mean"], "overlap_vs_floor": music["overlap_vs_floor"],
                        "copied_phrases": music["memorization"]["generated"],
                        "copied_phrases_real_test": music["memorization"]["real_test"]})
    return {
        "model": {"family": model.meta.get("family"), "name": model.meta.get("name"), "dataset": data["dataset"],
                  "step": model.meta.get("step"), "weights": model.weights_file},
        "seed": seed,
        "metrics": metrics,
        "details": {"music": music, "compose": counts, "licences": (data.get("music") or {}).get("licences", {})},
        "summary": (f"held-out {corpus.kind} of {data['dataset']} ({len(corpus.test)} pieces); {len(pieces)} pieces "
                    f"composed at temperature 1 from seed {seed}, none dropped"),
        "seconds": {"text": round(t_text, 2), "compose": round(t_compose, 2),
                    "music_metrics": round(time.perf_counter() - t, 2)},
    }
