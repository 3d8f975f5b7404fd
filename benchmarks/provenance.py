"""Issue 14's provenance benchmarks: does `verify` recognise every output, and what do the keyed marks cost and
survive?

    python benchmarks/provenance.py --image mnist-dcgan=RUN --image cifar10-dcgan-cpu=RUN ... --text RUN \
        --n 1000 --data-dir ../shared/data

Images, per run: n unmarked images (seed 0) and the same n marked (what `genforge sample` writes with a key);
metadata recognised by `verify`'s parser after writing PNG, JPEG and WebP; the mark's true-positive rate as
found, after stripping the metadata and re-encoding (JPEG 90/75/50, WebP 80), after a x2 display enlargement
(Lanczos and nearest) and after cropping 4 pixels off two sides; its false-positive rate on the n unmarked images
(as found and JPEG 75) and under a wrong key; PSNR of marked against unmarked; FID of marked, unmarked and a
second unmarked set (seed 1: the run-to-run noise the change is set against).

Text, for a language-model run: n texts of --tokens new tokens, each with and without the mark (same seeds):
the share with z > 4; z on every 200-character window of tiny Shakespeare (false positives); the cost in the
model's own perplexity of the generated tokens (marked against unmarked).

Writes benchmarks/provenance-<cpu kind>.json (or --json). Quality figures do not depend on load.
"""

from __future__ import annotations

import argparse
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
WRONG = b"another key, also not a secret, 32 bytes"


def _reencode(images, fmt, **opts):
    out = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, fmt, **opts)
        dec = np.asarray(Image.open(buf).convert("L" if img.shape[-1] == 1 else "RGB"))
        out.append(dec[..., None] if dec.ndim == 2 else dec)
    return out


def _resize(images, k, resample):
    out = []
    for img in images:
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        dec = np.asarray(pil.resize((pil.width * k, pil.height * k), resample))
        out.append(dec[..., None] if dec.ndim == 2 else dec)
    return out


def _rate(mark, images) -> float:
    return round(float(np.mean([mark.detect(img)["detected"] for img in images])), 4)


def image_rows(name: str, run: str, args) -> dict:
    import genforge
    from genforge.evaluation import evaluate_images, evaluator_domain, load_evaluator
    from genforge.media import decode, encode
    from genforge.media.provenance import SOURCE_TYPE, parse_xmp
    from genforge.media.watermark import ImageMark, MarkKey, psnr

    model = genforge.load(run, precision="no", select="last")
    model.use_mark_key(False)
    t = time.perf_counter()
    plain = model.generate(args.n, seed=0, **({"steps": args.steps} if "steps" in model.options() else {}))
    plain2 = model.generate(args.n, seed=1, **({"steps": args.steps} if "steps" in model.options() else {}))
    gen_s = time.perf_counter() - t
    mark, wrong = ImageMark(MarkKey(KEY)), ImageMark(MarkKey(WRONG))
    t = time.perf_counter()
    marked = mark.embed(plain)
    embed_ms = (time.perf_counter() - t) / args.n * 1e3
    record = model.record(0, n=args.n)
    found = {}
    for fmt in ("PNG", "JPEG", "WEBP"):
        ok = 0
        for i, img in enumerate(marked):
            meta = parse_xmp(decode(encode(img, fmt, record.with_(parameters={"index": i})))[1])
            ok += bool(meta and meta.get("digital_source_type") == SOURCE_TYPE and meta.get("model"))
        found[fmt] = ok / len(marked)
    t = time.perf_counter()
    tpr = {"as found": _rate(mark, marked)}
    detect_ms = (time.perf_counter() - t) / args.n * 1e3
    for label, attacked in [("JPEG 90", _reencode(marked, "JPEG", quality=90)),
                            ("JPEG 75", _reencode(marked, "JPEG", quality=75)),
                            ("JPEG 50", _reencode(marked, "JPEG", quality=50)),
                            ("written JPEG 100, then JPEG 75", _reencode(_reencode(marked, "JPEG", quality=100), "JPEG",
                                                                         quality=75)),
                            ("WebP 80", _reencode(marked, "WEBP", quality=80)),
                            ("x2 Lanczos", _resize(marked, 2, Image.LANCZOS)),
                            ("x2 nearest", _resize(marked, 2, Image.NEAREST)),
                            ("crop 4 px top-left", [img[4:, 4:] for img in marked])]:
        tpr[label] = _rate(mark, attacked)
        print(name, label, tpr[label], flush=True)
    fpr = {"unmarked as found": _rate(mark, plain), "unmarked JPEG 75": _rate(mark, _reencode(plain, "JPEG", quality=75)),
           "marked, wrong key": _rate(wrong, marked)}
    psnrs = [psnr(a, b) for a, b in zip(plain, marked)]
    evaluator = load_evaluator(evaluator_domain(model.meta["data"]["dataset"])[0], args.data_dir)
    fid = {}
    for label, imgs in (("unmarked", plain), ("marked", marked), ("unmarked, second seed", plain2)):
        fid[label] = round(float(evaluate_images(imgs, evaluator, reference="test", seed=0)["metrics"]["fid"]), 4)
    row = {"name": name, "run": run, "n": args.n, "metadata_recognised": found, "tpr": tpr, "fpr": fpr,
           "psnr_mean": round(float(np.mean(psnrs)), 2), "psnr_min": round(float(np.min(psnrs)), 2),
           "psnr_all": round(psnr(plain, marked), 2), "fid": fid, "embed_ms_per_image": round(embed_ms, 2),
           "detect_ms_per_image": round(detect_ms, 2), "generate_seconds": round(gen_s, 1)}
    print(json.dumps(row), flush=True)
    return row


def text_rows(run: str, args) -> dict:
    import genforge
    from genforge.media.text_mark import TextMark
    from genforge.media.watermark import MarkKey

    model = genforge.load(run, precision="no", select="last")
    tok = model.tokenizer
    key = MarkKey(KEY)
    model.use_mark_key(key)
    mark = TextMark(key, tok.vocab_size)
    rows = {}
    for temperature in args.temperatures:
        marked = model.generate(["\n"] * args.n_text, max_new_tokens=args.tokens, temperature=temperature, seed=0)
        plain = model.generate(["\n"] * args.n_text, max_new_tokens=args.tokens, temperature=temperature, seed=0,
                               mark=False)
        zm = [mark.score(tok.encode("\n" + t), start=1)["z"] for t in marked]
        zp = [mark.score(tok.encode("\n" + t), start=1)["z"] for t in plain]
        nll = {label: _nll(model, tok, texts) for label, texts in (("marked", marked), ("unmarked", plain))}
        rows[f"temperature {temperature:g}"] = {
            "texts": args.n_text, "tokens": args.tokens,
            "share_z_over_4_marked": round(float(np.mean(np.asarray(zm) > 4)), 4),
            "z_marked_median": float(np.median(zm)), "z_marked_5th_percentile": float(np.percentile(zm, 5)),
            "share_z_over_4_unmarked": round(float(np.mean(np.asarray(zp) > 4)), 4),
            "perplexity_marked": round(float(np.exp(nll["marked"])), 4),
            "perplexity_unmarked": round(float(np.exp(nll["unmarked"])), 4),
            "perplexity_cost": round(float(np.exp(nll["marked"] - nll["unmarked"]) - 1), 4)}
        print(json.dumps(rows[f"temperature {temperature:g}"]), flush=True)
    human = Path(args.data_dir) / "tinyshakespeare" / "input.txt"
    text = human.read_text()
    windows = [text[i:i + 200] for i in range(0, len(text) - 200, 200)]
    zh = np.asarray([mark.score(tok.encode(w))["z"] for w in windows])
    rows["human"] = {"source": str(human), "windows": len(windows), "chars": 200,
                     "false_positive_rate_z_over_4": round(float(np.mean(zh > 4)), 5),
                     "z_max": float(zh.max()), "z_mean": round(float(zh.mean()), 3), "z_std": round(float(zh.std()), 3)}
    print(json.dumps(rows["human"]), flush=True)
    return {"run": run, "mark": {"gamma": mark.gamma, "delta": mark.delta, "context": mark.context}, **rows}


def _nll(model, tok, texts: list[str]) -> float:
    """Mean cross-entropy (nats/token) of the texts under the model itself, in windows of its block size
    stepped by half a block (each token predicted once, from at least half a block of context after the first)."""
    import torch

    rows = [tok.encode("\n" + t) for t in texts]
    ids = torch.tensor([r[:min(map(len, rows))] for r in rows])  # equal lengths (no stop strings: nearly so)
    block = getattr(getattr(model.net, "config", None), "block_size", None) or ids.size(1)
    half = max(1, block // 2)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, ids.size(1) - 1, half):
            out = model.net(ids[:, start:start + block])
            logits = (out[0] if isinstance(out, tuple) else out).float()
            targets = ids[:, start + 1:start + block + 1]
            lp = torch.log_softmax(logits[:, :targets.size(1)], -1).gather(-1, targets[..., None])[..., 0]
            first = 0 if start == 0 else half
            total -= float(lp[:, first:].sum())
            count += lp[:, first:].numel()
            if start + block >= ids.size(1) - 1:
                break
    return total / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", action="append", default=[], help="NAME=RUN_DIR of an image model (repeatable)")
    p.add_argument("--text", default=None, help="RUN_DIR of a language model")
    p.add_argument("--n", type=int, default=1000, help="images per run (marked and unmarked each)")
    p.add_argument("--steps", type=int, default=10, help="diffusion models: sampler steps")
    p.add_argument("--n-text", type=int, default=200, help="texts per temperature")
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.8])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    path = Path(args.json or HERE / f"provenance-{cpu_kind()}.json")
    results = json.loads(path.read_text()) if path.exists() else {}
    t = time.perf_counter()
    for spec in args.image:
        name, run = spec.split("=", 1)
        results.setdefault("images", {})[name] = image_rows(name, run, args)
        path.write_text(json.dumps(results, indent=2) + "\n")
    if args.text:
        results["text"] = text_rows(args.text, args)
    results["meta"] = {"command": "python benchmarks/provenance.py " + " ".join(sys.argv[1:]),
                       "date": time.strftime("%Y-%m-%d"), "cpu": cpu_kind(), "seconds": round(time.perf_counter() - t, 1)}
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
