"""The text mark's strength against its cost: for each delta, the share of marked texts with z > 4 and the
perplexity cost under the model itself (the sweep behind the default delta; see RESULTS.md, issue 14).

    python benchmarks/text_mark_delta.py --run RUN --texts 100 --deltas 0.75 1.0 1.25 1.5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import KEY, _nll  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a language model's run directory")
    p.add_argument("--texts", type=int, default=100)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--deltas", type=float, nargs="+", default=[0.75, 1.0, 1.25, 1.5])
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.8])
    args = p.parse_args()

    import genforge
    from genforge.media import text_mark as TM, watermark as W

    model = genforge.load(args.run, precision="no", select="last")
    tok, key = model.tokenizer, W.MarkKey(KEY)
    for temp in args.temperatures:
        model.use_mark_key(False)
        plain = model.generate(["\n"] * args.texts, max_new_tokens=args.tokens, temperature=temp, seed=1)
        base = _nll(model, tok, plain)
        for delta in args.deltas:
            mark = TM.TextMark(key, tok.vocab_size, delta=delta)
            model.text_mark = lambda vocab, m=mark: m  # this delta instead of the default
            model.use_mark_key(key)
            marked = model.generate(["\n"] * args.texts, max_new_tokens=args.tokens, temperature=temp, seed=1)
            z = np.array([mark.score(tok.encode("\n" + t), start=1)["z"] for t in marked])
            print(json.dumps({"temperature": temp, "delta": delta, "share_z_over_4": float(np.mean(z > 4)),
                              "z5": float(np.percentile(z, 5)), "z_median": float(np.median(z)),
                              "perplexity_cost": round(float(np.exp(_nll(model, tok, marked) - base) - 1), 4)}),
                  flush=True)


if __name__ == "__main__":
    main()
