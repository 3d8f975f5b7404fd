"""Scores of a language model for `genforge eval`: held-out loss, perplexity, bits per character or byte,
and for models of Python source the share of generated snippets that parse."""

from __future__ import annotations

import ast
import math
import re
import warnings

import torch

from genforge.data.text import load_text_corpus
from genforge.errors import UserError
from genforge.methods.lm import held_out_text, val_windows

SNIPPET_PROMPT = "def "  # what `genforge eval` asks a Python-code model to continue
SNIPPET_TOKENS = 512  # tokens generated per snippet: room for a typical function
SNIPPET_TEMPERATURE = 0.8  # the sampling default of `genforge sample`
DEFAULT_SNIPPETS = 50

# Where the first top-level statement of a snippet ends: a line at column 0 that is not blank, a comment,
# a closing bracket or a clause continuing a compound statement (else, elif, except, finally).
_NEXT_TOP_LEVEL = re.compile(r"\n(?![\s#)\]}]|(?:else|elif|except|finally)\b)(?=.)")


def trim_snippet(text: str) -> str:
    """The part of a generated Python snippet that `python_parse_rate` parses: its first top-level statement.

    The snippet is cut before the first later line that starts at column 0 with anything but a comment,
    a closing bracket or else/elif/except/finally: a new top-level statement starts there, so the
    prompted one (the function begun by SNIPPET_PROMPT) is complete, and what follows it is not judged.
    When no such line came before generation stopped, only the unfinished last line (the text after the
    last newline) is dropped; a statement still open there (a bracket, a block without a body) fails.
    """
    m = _NEXT_TOP_LEVEL.search(text)
    return text[:m.start() + 1] if m else text[:text.rfind("\n") + 1]


def python_parse_rate(snippets: list[str]) -> float:
    """Share of snippets whose `trim_snippet` part `ast.parse` accepts; an empty part (no complete line)
    counts as a failure, since nothing was written. NaN for no snippets."""
    if not snippets:
        return float("nan")
    ok = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarning for odd escapes etc.: still valid code
        for s in snippets:
            code = trim_snippet(s)
            if not code.strip():
                continue
            try:
                ast.parse(code)
            except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: NUL bytes
                continue
            ok += 1
    return ok / len(snippets)


def python_snippets(model, n: int, seed: int = 0, max_new_tokens: int = SNIPPET_TOKENS,
                    batch_size: int = 50) -> list[str]:
    """n snippets (prompt included) sampled from a loaded text model, SNIPPET_PROMPT continued at
    SNIPPET_TEMPERATURE; batches are seeded from `seed`, so the same seed gives the same snippets."""
    out = []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        texts = model.generate([SNIPPET_PROMPT] * m, max_new_tokens=max_new_tokens,
                               temperature=SNIPPET_TEMPERATURE, seed=seed + start)
        out += [SNIPPET_PROMPT + t for t in texts]
    return out


@torch.no_grad()
def text_metrics(model, data_dir=None, max_windows: int | None = None, batch_size: int = 32,
                 n_snippets: int | None = None, seed: int = 0) -> dict:
    """Validation loss, perplexity and bits per character/byte of a loaded text model (`genforge.load(run)`),
    and for a model of Python source also `python_parse_rate` over `n_snippets` (default 50) snippets.

    Uses the run's own held-out text (the last `val_fraction` of its corpus, re-read from `data_dir`; a music
    run's held-out tunes),
    its tokenizer, and every non-overlapping window of `block_size` tokens (or `max_windows` of them, evenly
    strided across the split, as the in-training estimate takes them). Bits per unit divide the summed
    negative log-likelihood (in bits) by the characters (char tokenizer) or UTF-8 bytes (byte, bpe) the
    target tokens stand for, so models with different tokenizers compare. A run is Python source when its
    data meta says `python_source` (runs from before that flag: when the re-read corpus is all .py files);
    the snippets are `python_snippets(model, n_snippets, seed)`, judged by `python_parse_rate`.
    """
    import torch.nn.functional as F

    data, net, tok = model.meta["data"], model.net, model.tokenizer
    block = model.meta["model"]["block_size"]
    python = data.get("python_source")
    if python is None:  # runs from before the flag: whether the re-read corpus is all .py files
        python = load_text_corpus(data["dataset"], data_dir).python
    if n_snippets is not None and not python:
        raise UserError(f"--n (n_snippets) sets how many code snippets to parse, but {data['dataset']} is not "
                        "Python source (only .py files are), so no snippets are generated. Fix: drop --n.")
    if n_snippets is not None and n_snippets < 1:
        raise UserError(f"--n (n_snippets) must be at least 1, got {n_snippets}.")
    val_text = held_out_text(data, data_dir)
    device = next(net.parameters()).device
    x, y = val_windows(tok.encode_tensor(val_text).to(device), block, max_windows)
    if len(x) == 0:
        raise UserError(f"The run's validation text is empty (val_fraction={data['val_fraction']}); nothing to score.")
    units = torch.tensor(tok.units_per_token(), dtype=torch.float64, device=device)
    was_training = net.training
    net.eval()
    nll = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for i in range(0, len(x), batch_size):
            logits = net(x[i:i + batch_size])[0].float()
            nll += F.cross_entropy(logits.flatten(0, 1), y[i:i + batch_size].flatten(), reduction="sum").double()
    finally:
        net.train(was_training)
    tokens, n_units = y.numel(), float(units[y].sum())
    loss = float(nll) / tokens
    metrics = {"val_loss": loss, "perplexity": math.exp(loss),
               f"bits_per_{tok.unit}": float(nll) / math.log(2) / n_units,
               "tokens": tokens, f"{tok.unit}s": int(n_units), "tokenizer": tok.kind}
    if python:
        snippets = python_snippets(model, n_snippets or DEFAULT_SNIPPETS, seed)
        metrics.update(python_parse_rate=python_parse_rate(snippets), python_snippets=len(snippets))
    return metrics
