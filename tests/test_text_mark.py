"""The tournament text mark (issue 28): found in marked text and nowhere else, human text's z standard normal,
the sampled distribution unchanged on average over contexts, one transform in the torch and runtime samplers,
and texts made with the earlier green-list mark still verified."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
import torch

from genforge.media.text_mark import TextMark, TournamentMark
from genforge.media.watermark import MarkKey
from genforge.models.sampling import generate_ids, select_next_rows
from genforge.runtime.text import ExportedTextModel, _select
from genforge.runtime.text_engine import RowEngine
from genforge.text_jobs import TextJob, joined
from genforge.tokenizers import train_tokenizer
from genforge.verification import _verify_text

KEY = MarkKey(b"0123456789abcdef0123456789abcdef")
OTHER = MarkKey(b"fedcba9876543210fedcba9876543210")


@pytest.fixture(scope="module")
def shakespeare():
    text = (resources.files("genforge.data") / "embedded" / "shakespeare" / "input.txt").read_text()
    tok = train_tokenizer("char", text)
    ids = np.asarray(tok.encode(text))
    counts = np.ones((tok.vocab_size, tok.vocab_size))
    np.add.at(counts, (ids[:-1], ids[1:]), 1)
    logits = np.log(counts / counts.sum(1, keepdims=True)).astype(np.float32)  # a character bigram model
    return text, tok, ids, logits


def _sample(logits, start, n, mark, rng, temperature=1.0):
    """The bigram model sampled with numpy (the reference sampler: p, then the mark's reweighting, then a draw)."""
    out = list(start)
    for _ in range(n):
        p = np.exp((logits[out[-1]] - logits[out[-1]].max()) / temperature)
        p /= p.sum()
        if mark is not None:
            new = mark.reweight(out, p)
            p = p if new is None else new
        out.append(int(rng.choice(len(p), p=p)))
    return out


def test_marked_text_is_found_and_nothing_else_is(shakespeare):
    _, tok, ids, logits = shakespeare
    mark = TournamentMark(KEY, tok.vocab_size)
    rng = np.random.default_rng(0)
    start = [int(i) for i in ids[:3]]
    marked = [_sample(logits, start, 200, mark, rng) for _ in range(20)]
    unmarked = [_sample(logits, start, 200, None, rng) for _ in range(20)]
    assert min(mark.score(m, start=3)["z"] for m in marked) > 4
    assert max(mark.score(u, start=3)["z"] for u in unmarked) < 4
    other = TournamentMark(OTHER, tok.vocab_size)
    assert max(other.score(m, start=3)["z"] for m in marked) < 4
    assert max(TextMark(KEY, tok.vocab_size).score(m, start=3)["z"] for m in marked) < 4  # the other scheme
    short = mark.score(marked[0][:2])
    assert short["tokens_scored"] == 0 and not short["detected"] and mark.score([])["z"] == 0
    # the prompt is context only; a repeated (context, token) pair counts once
    assert mark.score(start * 50)["tokens_scored"] == 3
    assert mark.reweight(start[:2], np.full(tok.vocab_size, 1 / tok.vocab_size)) is None  # no context yet


def test_human_text_z_is_standard_normal(shakespeare):
    _, tok, ids, _ = shakespeare
    # Windows of one text share their common (context, token) pairs, whose g-values one key fixes: the z of
    # windows under one key are correlated, so the null law is checked over keys as well as windows.
    z = np.asarray([TournamentMark(MarkKey(f"key number {k:02d}, 16+ bytes".encode()), tok.vocab_size)
                    .score(ids[i:i + 200].tolist())["z"] for k in range(12) for i in range(k * 200, 200 * 600, 200 * 12)])
    assert abs(z.mean()) < 0.12 and 0.85 < z.std() < 1.15, (z.mean(), z.std())
    assert z.max() < 4.5


def test_the_mark_preserves_the_distribution_on_average_over_contexts():
    rng = np.random.default_rng(1)
    vocab = 40
    p = rng.dirichlet(np.full(vocab, 0.3))
    p[rng.permutation(vocab)[:10]] = 0  # a top-k / top-p cut: those stay impossible
    p /= p.sum()
    for mark in (TournamentMark(KEY, vocab), TournamentMark(KEY, vocab, layers=30, context=2)):
        contexts = [[int(t) for t in row] for row in rng.integers(0, 1000, (6000, mark.context))]
        marked = np.stack([mark.reweight(ctx, p) for ctx in contexts])
        np.testing.assert_allclose(marked.sum(1), 1, atol=1e-9)
        assert (marked[:, p == 0] == 0).all()
        # p' is nearly one-hot after 20 layers, so p'(x) varies over contexts by about sqrt(p(x) (1 - p(x)))
        se = np.sqrt(p * (1 - p) / len(contexts))
        assert (np.abs(marked.mean(0) - p) < 4.5 * se + 1e-4).all(), np.abs(marked.mean(0) - p) / (se + 1e-12)
        # each single context's distribution is far from p: the mark does move it
        assert np.median(np.abs(marked - p).sum(1)) > 0.3
        # tokens sampled one per context: their frequencies are p's (chi-square)
        draws = np.array([rng.choice(vocab, p=q) for q in marked])
        seen = np.bincount(draws, minlength=vocab)[p > 0]
        expected = p[p > 0] * len(draws)
        chi2 = float(((seen - expected) ** 2 / expected).sum())
        assert chi2 < 70, chi2  # 29 degrees of freedom: P(chi2 > 70) < 1e-4
    # a biased alternative (the green-list mark at delta 1.5) fails the same check
    green = TextMark(KEY, vocab)
    biased = []
    for ctx in contexts[:2000]:
        lg = np.log(np.maximum(p, 1e-300)) + green.bias(ctx)
        q = np.exp(lg - lg.max()) * (p > 0)
        biased.append(q / q.sum())
    greens = np.stack([green.green(tuple(ctx[-2:])) for ctx in contexts[:2000]])
    assert (np.stack(biased) * greens).sum(1).mean() > (p * greens).sum(1).mean() + 0.1


class _Bigram(torch.nn.Module):
    """A stand-in language model for `models/sampling.generate`: the bigram logits of each row's last token."""

    def __init__(self, logits):
        super().__init__()
        self.table = torch.nn.Parameter(torch.as_tensor(logits))

    def generation_session(self, prompts, use_cache=True):
        model = self

        class Session:
            def __init__(self):
                self.last = [p[-1] for p in prompts]

            @property
            def logits(self):
                return model.table[self.last]

            def push(self, tokens):
                self.last = list(tokens)
        return Session()


class _BigramRow:
    def __init__(self, logits, prompt):
        self.table, self.logits = logits, logits[prompt[-1]].copy()

    def push(self, token):
        self.logits = self.table[token].copy()


class _Fixed:
    """A stand-in numpy generator whose `random()` is always one number."""

    def __init__(self, u):
        self.u = u

    def random(self):
        return self.u


def _runtime_model(tok, logits):
    model = ExportedTextModel.__new__(ExportedTextModel)
    model.tokenizer, model.meta = tok, {}
    model.engine = lambda capacity: RowEngine(lambda prompt: _BigramRow(logits, prompt), capacity)
    return model


def test_torch_and_runtime_samplers_apply_one_transform(shakespeare):
    _, tok, _, logits = shakespeare
    mark = TournamentMark(KEY, tok.vocab_size)
    rng = np.random.default_rng(2)
    same = changed = 0
    for i in range(150):
        row = (logits[rng.integers(tok.vocab_size)] * rng.uniform(0.5, 2)).astype(np.float32)
        temperature, top_k, top_p = [(1.0, None, None), (0.8, None, None), (1.0, 20, 0.95)][i % 3]
        history = [int(t) for t in rng.integers(0, tok.vocab_size, 5)]
        g_torch, g_draw = torch.Generator().manual_seed(i), torch.Generator().manual_seed(i)
        draw = _Fixed(float(torch.rand(1, generator=g_draw)))  # the uniform number g_torch will draw

        def marked(p, history=history):
            return mark.reweight(history, p)
        t = select_next_rows(torch.as_tensor(row)[None], [temperature], [top_k], [top_p], [g_torch],
                             reweight=lambda b, p, marked=marked: marked(p))[0]
        r = _select(row, temperature, top_k, top_p, draw, marked)
        same += t == r
        changed += r != _select(row, temperature, top_k, top_p, draw)
    assert same >= 148 and changed >= 10, (same, changed)  # float32 CDFs may split a boundary once in a while

    # end to end: both generators' loops mark what they sample, and leave greedy decoding alone
    prompts = [tok.encode("ROMEO:")] * 8
    torch_ids = generate_ids(_Bigram(logits), prompts, 200, temperature=1.0, generator=torch.Generator().manual_seed(0),
                             reweight=lambda b, history, p: mark.reweight(history, p))
    assert min(mark.score(prompts[0] + t, start=len(prompts[0]))["z"] for t in torch_ids) > 4
    runtime = _runtime_model(tok, logits)
    jobs = [TextJob("ROMEO:", 200, 1.0, rng=np.random.default_rng(s), mark=mark) for s in range(8)]
    texts = joined(runtime.run(jobs), len(jobs))
    assert min(mark.score(tok.encode("ROMEO:" + t), start=len(prompts[0]))["z"] for t in texts) > 4
    greedy = [TextJob("ROMEO:", 50, 0.0, mark=m) for m in (mark, None)]
    runtime_greedy = joined(runtime.run(greedy), 2)
    assert runtime_greedy[0] == runtime_greedy[1] == tok.decode(generate_ids(_Bigram(logits), prompts[:1], 50,
                                                                             temperature=0)[0])


def test_verify_finds_both_schemes_and_names_the_one_that_matched(shakespeare, tmp_path):
    text, tok, ids, logits = shakespeare
    tok.save(tmp_path / "tokenizer.json")
    rng = np.random.default_rng(3)
    start = [int(i) for i in ids[:3]]
    new = tok.decode(_sample(logits, start, 250, TournamentMark(KEY, tok.vocab_size), rng))
    green = TextMark(KEY, tok.vocab_size)

    def old_sample(n):  # how texts were marked before: the green-list bias on the logits
        out = list(start)
        for _ in range(n):
            lg = logits[out[-1]] + green.bias(out)
            p = np.exp(lg - lg.max())
            out.append(int(rng.choice(len(p), p=p / p.sum())))
        return out
    old = tok.decode(old_sample(250))
    for sample, scheme in ((new, "text-tournament"), (old, "text-green-list")):
        report = _verify_text(sample, "text given", [KEY], tmp_path, None)
        found = report.marks[0]
        assert found["detected"] and found["scheme"] == scheme and report.verdict == 0, found
        assert set(found["schemes"]) == {"text-tournament", "text-green-list"} and any(scheme in n for n in report.notes)
        assert not _verify_text(sample, "text given", [OTHER], tmp_path, None).marks[0]["detected"]
        # a sidecar that names the scheme: only that one is scored
        named = _verify_text(sample, "t.txt", [KEY], tmp_path, {"mark_scheme": scheme}).marks[0]
        assert named["detected"] and "schemes" not in named and named["z"] == found["z"]
    human = text[7000:7300]
    assert not _verify_text(human, "text given", [KEY], tmp_path, None).marks[0]["detected"]
