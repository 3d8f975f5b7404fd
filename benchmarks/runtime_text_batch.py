"""Issue 29: the torch-free runtime's text generation, per-row stepping against one batched engine.

The runtime used to step every row alone (one onnxruntime run per row and token: `RowEngine`, still the path for
GPT exports made before the attention mask); now a batch shares one run per token (`GPTEngine`: rows of
different lengths left-padded, padding masked by the graph's `attention_mask`). Reported: tokens/s of the whole
`generate` path (sampling, stop strings and decoding included) at 1, 8 and 32 rows, `--tokens` new tokens each
(temperature 0.8, seed 0), for prompts of different lengths (what a server gets; the batched engine pads) and, for
the batched engine, prompts of one length (no padding: what one graph per batch shape would cost at best), and
whether both paths give the same greedy text.

    python benchmarks/runtime_text_batch.py --run RUN          # a char GPT run (exported into --work)
    python benchmarks/runtime_text_batch.py --export EXPORT    # or an export
    python benchmarks/runtime_text_batch.py                    # or the small Shakespeare preset, trained briefly
    python benchmarks/runtime_text_batch.py --quick            # smoke test: tiny sizes, a few tokens

The weights do not change the speed, so a briefly trained run measures as well as a finished one. Best of
`--repeats` timed runs after one untimed. Prints one JSON object and writes it to
benchmarks/runtime_text_batch-<cpu kind>.json (or `--out FILE`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_kind  # noqa: E402

HERE = Path(__file__).resolve().parent
TEXT = ("KING RICHARD III:\nNow is the winter of our discontent\nMade glorious summer by this sun of York;\n"
        "And all the clouds that lour'd upon our house\nIn the deep bosom of the ocean buried.\n")


def make_run(work: Path, steps: int, data_dir: str | None, quick: bool) -> Path:
    from genforge.methods import get_method
    from genforge.training import apply_overrides, read_raw, train, validate

    sets = ["model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.block_size=32"] if quick else []
    raw = apply_overrides(read_raw("shakespeare-char-gpt-small"), sets, get_method("lm").Config)
    raw["train"] = {**raw["train"], "max_steps": steps, "eval_every": None, "log_every": 10, "sample_every": 10**9,
                    "checkpoint_every": 10**9, "mixed_precision": "no", "batch_size": 8}
    return train(validate(raw), work / "run", data_dir=data_dir, progress=False).run_dir


def tokens_per_s(ex, engine, prompts: list[str], tokens: int, repeats: int) -> float:
    """New tokens per second of `generate` on these prompts, `engine(capacity)` making the engine."""
    from genforge.text_jobs import joined

    ex.engine = engine

    def once():
        jobs = ex.jobs(prompts, max_new_tokens=tokens, temperature=0.8, seed=0, mark=False)
        joined(ex.run(jobs), len(prompts))
        return sum(j.completion_tokens for j in jobs)

    once()
    best, made = float("inf"), 0
    for _ in range(repeats):
        t = time.perf_counter()
        made = once()
        best = min(best, time.perf_counter() - t)
    del ex.engine
    return round(made / best, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="a char GPT run directory (exported into --work)")
    ap.add_argument("--export", type=Path, help="an export of a GPT language model")
    ap.add_argument("--work", type=Path, help="where to export or train (default: a temporary directory)")
    ap.add_argument("--data-dir", help="for training the preset when neither --run nor --export is given")
    ap.add_argument("--steps", type=int, default=20, help="training steps of the preset (the speed does not care)")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per row")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its own)")
    ap.add_argument("--quick", action="store_true", help="smoke test: a tiny model, rows 1 and 4, 8 tokens")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.quick:
        a.rows, a.tokens, a.repeats, a.steps = [1, 4], 8, 1, 2

    from genforge.runtime import load
    from genforge.runtime.text_engine import GPTEngine, RowEngine

    def batched(capacity):
        return GPTEngine(ex.session, ex.family_config, capacity)

    def per_row(capacity):
        return RowEngine(ex._row, capacity)

    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        path = a.export
        if path is None:
            from genforge.export import export

            run = a.run or make_run(work, a.steps, a.data_dir, a.quick)
            path = export(run, work / "export", overwrite=True)
        ex = load(path, threads=a.threads)
        if not ex.gpt or "attention_mask" not in {i.name for i in ex.session.get_inputs()}:
            sys.exit(f"{path} is not a GPT export with an attention mask: export the run again with this genforge")
        c = ex.family_config
        result = {"machine": cpu_kind(), "export": str(path), "threads": a.threads, "new_tokens": a.tokens,
                  "repeats": a.repeats, "model": {k: c[k] for k in ("n_layer", "n_head", "head_dim", "block_size")},
                  "tokens_per_s": {}}
        for rows in a.rows:
            ragged = [TEXT[:8 + 5 * i % 40] for i in range(rows)]  # 8 to 43 characters
            equal = [TEXT[i % 20:i % 20 + 24] for i in range(rows)]
            result["tokens_per_s"][rows] = {
                "per_row": tokens_per_s(ex, per_row, ragged, a.tokens, a.repeats),
                "batched": tokens_per_s(ex, batched, ragged, a.tokens, a.repeats),
                "batched_equal_prompts": tokens_per_s(ex, batched, equal, a.tokens, a.repeats)}
            print(rows, result["tokens_per_s"][rows], file=sys.stderr, flush=True)
        greedy = {}
        prompts = [TEXT[:8 + 5 * i % 40] for i in range(max(a.rows))]
        for name, engine in (("per_row", per_row), ("batched", batched)):
            ex.engine = engine
            greedy[name] = ex.generate(prompts, max_new_tokens=a.tokens, temperature=0)
            del ex.engine
        result["greedy_text_equal"] = greedy["per_row"] == greedy["batched"]
    out = a.out or HERE / f"runtime_text_batch-{cpu_kind()}.json"
    text = json.dumps(result, indent=2)
    print(text)
    if not a.quick or a.out:
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
