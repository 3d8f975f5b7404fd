"""Issue 13's aims for exported image models, measured in one run on one machine (run it on an idle box):

- cold start: process start to the first image, `genforge.runtime` on the export against `genforge.load` on
  the run (median of --repeats fresh processes each);
- install footprint: the files the runtime's dependencies install (onnxruntime, numpy, Pillow and what they
  require) against torch's (torch, numpy, Pillow and what they require), from the installed RECORDs;
- generation speed: images/s of the torch path (fp32), the fp32 export and the int8 export, same batch;
- int8's quality cost: FID (and precision/recall) of the fp32 and int8 exports' samples, same seed.

    python benchmarks/export_speed.py --run RUN [--run RUN2 ...] --data-dir ../shared/data --work /tmp/x

Writes benchmarks/export_speed-<cpu kind>.json (or --json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_kind  # noqa: E402

HERE = Path(__file__).resolve().parent


def closure(dist: str, seen: set | None = None) -> set[str]:
    """A distribution and everything it requires (markers evaluated for this interpreter, extras left out)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen = set() if seen is None else seen
    name = canonicalize_name(dist)
    if name in seen:
        return seen
    seen.add(name)
    for text in metadata.distribution(dist).requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            try:
                closure(req.name, seen)
            except metadata.PackageNotFoundError:
                pass
    return seen


def install_mb(dists: set[str]) -> float:
    """Bytes on disk of the files the distributions installed (their RECORDs), in MB."""
    from importlib import metadata

    total = 0
    for d in dists:
        for f in metadata.distribution(d).files or []:
            path = Path(f.locate())
            if path.is_file():
                total += path.stat().st_size
    return round(total / 1e6, 1)


def cold_start(code: str, repeats: int) -> float:
    """Median seconds of a fresh interpreter running `code` (which ends after the first image)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def rate(fn, n: int, repeats: int = 3) -> float:
    fn(min(n, 8))  # warm-up (allocations, lazy initialisation)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn(n)
        best = min(best, time.perf_counter() - t)
    return n / best


def bits_per_token(step, ids: list[int], block: int, windows: int) -> float:
    """Mean next-token cross-entropy (bits) over `windows` evenly spaced windows of `block` + 1 validation ids;
    step(window) -> logits (T, vocab) for the window's tokens."""
    import numpy as np

    starts = np.linspace(0, len(ids) - block - 2, windows).astype(int)
    total, count = 0.0, 0
    for s in starts:
        window = ids[s:s + block + 1]
        logits = step(window[:-1]).astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        total -= logp[np.arange(block), window[1:]].sum()
        count += block
    return total / count / np.log(2)


def text_row(run: Path, work: Path, a) -> dict:
    """A language model: cold start to the first token, greedy tokens/s (torch's KV cache, fp32 and int8
    exports, batch 1), and int8's cost in validation bits per token and in greedy text."""
    import numpy as np
    import torch

    import genforge
    from genforge.data.text import load_text_corpus
    from genforge.export import export
    from genforge.methods.lm import split_text
    from genforge.runtime import load as load_export

    name = run.name
    t = time.perf_counter()
    fp32 = export(run, work / f"{name}-fp32", overwrite=True)
    export_s = time.perf_counter() - t
    int8 = export(run, work / f"{name}-int8", overwrite=True, int8=True)
    model, ex32, ex8 = genforge.load(run, precision="no"), load_export(fp32), load_export(int8)
    row = {"run": str(run), "family": "lm", "architecture": ex32.family_config["architecture"],
           "export_seconds": round(export_s, 1),
           "size_mb": {k: round(sum(f.stat().st_size for f in d.iterdir() if f.suffix == ".onnx") / 1e6, 2)
                       for k, d in (("fp32", fp32), ("int8", int8))}}
    first = "m.generate('\\n', max_new_tokens=1, temperature=0)"
    row["cold_start_s"] = {
        "torch": round(cold_start(f"import genforge; m = genforge.load({str(run)!r}, precision='no'); {first}", a.repeats), 3),
        "runtime": round(cold_start(f"import genforge.runtime as rt; m = rt.load({str(fp32)!r}); {first}", a.repeats), 3)}
    row["cold_start_ratio"] = round(row["cold_start_s"]["runtime"] / row["cold_start_s"]["torch"], 3)
    tokens = a.tokens
    row["tokens_per_sec"] = {
        tag: round(rate(lambda n, m=m: m.generate("ROMEO:", max_new_tokens=n, temperature=0), tokens), 1)
        for tag, m in (("torch_kv_cache_fp32", model), ("export_fp32", ex32), ("export_int8", ex8))}
    greedy = [m.generate("ROMEO:", max_new_tokens=200, temperature=0) for m in (model, ex32, ex8)]
    row["greedy_200"] = {"export_fp32_equals_torch": greedy[1] == greedy[0],
                         "int8_chars_equal_to_fp32": sum(x == y for x, y in zip(greedy[1], greedy[2]))}
    meta = model.meta["data"]
    _, val = split_text(load_text_corpus(meta["dataset"], a.data_dir).text, meta["val_fraction"])
    ids = model.tokenizer.encode(val)
    block = ex32.family_config.get("block_size", 256)

    def onnx_step(m):
        def step(window):
            if m.gpt:
                names = [i.name for i in m.session.get_inputs() if i.name.startswith("past_key_values")]
                c = m.family_config
                past = {k: np.zeros((1, c["n_head"], 0, c["head_dim"]), np.float32) for k in names}
                if any(i.name == "attention_mask" for i in m.session.get_inputs()):  # exports since issue 29
                    past["attention_mask"] = np.ones((1, len(window)), np.int64)
                return m.session.run(None, {"input_ids": np.array([window]), "position_ids": np.arange(len(window))[None],
                                            **past})[0][0]
            c = m.family_config
            state = {k: np.zeros((c["n_layer"], 1, c["hidden"]), np.float32)
                     for k in (["h", "c"] if c["architecture"] == "lstm" else ["h"])}
            return m.session.run(None, {"input_ids": np.array([window]), **state})[0][0]
        return step

    def torch_step(window):
        with torch.no_grad():
            return model.net(torch.tensor([window]))[0][0].numpy()

    row["val_bits_per_token"] = {tag: round(bits_per_token(step, ids, block, a.windows), 4) for tag, step in
                                 (("torch", torch_step), ("export_fp32", onnx_step(ex32)), ("export_int8", onnx_step(ex8)))}
    row["int8_loss_change"] = round(row["val_bits_per_token"]["export_int8"] / row["val_bits_per_token"]["export_fp32"] - 1, 4)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="an image run directory (repeatable)")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--work", default="/tmp/genforge-export-bench")
    p.add_argument("--n", type=int, default=256, help="images per speed measurement")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--fid-n", type=int, default=5000, help="samples per FID (fp32 and int8 exports)")
    p.add_argument("--fid-n-diffusion", type=int, default=1000, help="samples per FID for diffusion models")
    p.add_argument("--repeats", type=int, default=5, help="fresh processes per cold-start figure")
    p.add_argument("--tokens", type=int, default=200, help="greedy tokens per speed measurement (text)")
    p.add_argument("--windows", type=int, default=50, help="validation windows of block_size tokens (text)")
    p.add_argument("--json", default=None)
    a = p.parse_args()

    import genforge
    from genforge.evaluation import evaluate_images, load_evaluator
    from genforge.export import export
    from genforge.runtime import load as load_export

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    report = {"command": "python benchmarks/export_speed.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
              "cpu": cpu_kind(), "models": []}
    # each path in all: genforge needs numpy and Pillow either way, so both sides count them
    torch_deps = closure("torch") | closure("numpy") | closure("pillow")
    runtime_deps = closure("onnxruntime") | closure("numpy") | closure("pillow")
    fp = report["footprint_mb"] = {"torch": install_mb(torch_deps), "runtime": install_mb(runtime_deps),
                                   "torch_dists": sorted(torch_deps), "runtime_dists": sorted(runtime_deps)}
    fp["runtime_over_torch"] = round(fp["runtime"] / fp["torch"], 3)
    print(json.dumps({"footprint_mb": fp}), flush=True)
    for run in map(Path, a.run):
        if genforge.load(run, precision="no").modality == "text":
            row = text_row(run, work, a)
            report["models"].append(row)
            print(json.dumps(row), flush=True)
            continue
        name = run.name
        t = time.perf_counter()
        fp32 = export(run, work / f"{name}-fp32", overwrite=True)
        export_s = time.perf_counter() - t
        t = time.perf_counter()
        int8 = export(run, work / f"{name}-int8", overwrite=True, int8=True)
        int8_s = time.perf_counter() - t
        torch_model = genforge.load(run, precision="no")
        ex32, ex8 = load_export(fp32), load_export(int8)
        row = {"run": str(run), "family": ex32.config["family"], "export_seconds": round(export_s, 1),
               "int8_export_seconds": round(int8_s, 1),
               "size_mb": {k: round(sum(f.stat().st_size for f in d.iterdir() if f.suffix in (".onnx", ".ort")) / 1e6, 2)
                           for k, d in (("fp32", fp32), ("int8", int8))}}
        first = "m.generate(1, seed=0)"
        row["cold_start_s"] = {
            "torch": round(cold_start(f"import genforge; m = genforge.load({str(run)!r}, precision='no'); {first}", a.repeats), 3),
            "runtime": round(cold_start(f"import genforge.runtime as rt; m = rt.load({str(fp32)!r}); {first}", a.repeats), 3)}
        row["cold_start_ratio"] = round(row["cold_start_s"]["runtime"] / row["cold_start_s"]["torch"], 3)
        speed_n = a.batch if row["family"] == "diffusion" else a.n  # one batch: 20 network calls per image
        row["images_per_sec"] = {
            "torch_fp32": round(rate(lambda n: torch_model.generate(n, seed=1, batch_size=a.batch), speed_n), 1),
            "export_fp32": round(rate(lambda n: ex32.generate(n, seed=1, batch_size=a.batch), speed_n), 1),
            "export_int8": round(rate(lambda n: ex8.generate(n, seed=1, batch_size=a.batch), speed_n), 1)}
        print(json.dumps(row), flush=True)
        dataset = torch_model.meta["data"]["dataset"]
        evaluator = load_evaluator(dataset, a.data_dir)
        fid_n = a.fid_n_diffusion if row["family"] == "diffusion" else a.fid_n  # 20 network calls per image
        labels = [i % len(ex32.classes) for i in range(fid_n)] if ex32.conditional else None
        quality = {}
        for tag, m in (("fp32", ex32), ("int8", ex8)):
            images = m.generate(fid_n, seed=0, labels=labels, batch_size=500)
            metrics = evaluate_images(images, evaluator, labels=labels, seed=0)["metrics"]
            quality[tag] = {k: round(float(metrics[k]), 4) for k in ("fid", "precision", "recall") if metrics.get(k) is not None}
        quality["n"] = fid_n
        quality["fid_change"] = round(quality["int8"]["fid"] / quality["fp32"]["fid"] - 1, 4)
        row["quality"] = quality
        report["models"].append(row)
        print(json.dumps({"run": str(run), "quality": quality}), flush=True)
    path = Path(a.json or HERE / f"export_speed-{cpu_kind()}.json")
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
