"""Next-token selection and the streaming generation loop shared by every language model.

`select_next` is a pure function of the logits. `generate` drives any model that offers
`generation_session(prompts, use_cache)`, returning an object with `.logits` (B, vocab) for each row's
next token and `.push(tokens)` to append one token per row (see GPTSession and RNNSession): the
loop, the stopping rules and the precision handling are written once for all model families.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator

import torch

from genforge.errors import UserError
from genforge.text_jobs import check_sampling_args


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Logits with every token outside the top-k / nucleus set to -inf (a new tensor).

    top_k keeps exactly the k largest (ties broken by index, never more than k). top_p keeps the
    smallest set of most likely tokens whose probability adds up to at least p, and always the top one.
    """
    if top_k is not None and top_k < logits.size(-1):
        values, indices = torch.topk(logits, top_k, dim=-1)
        logits = torch.full_like(logits, float("-inf")).scatter_(-1, indices, values)
    if top_p is not None and top_p < 1.0:
        probs, order = torch.softmax(logits, dim=-1).sort(dim=-1, descending=True)
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= top_p  # the tokens before this one already reach p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def select_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None,
                banned: torch.Tensor | None = None, reweight: Callable | None = None) -> torch.Tensor:
    """One token id per row of `logits` (B, vocab) -> (B,). Temperature 0 is greedy (argmax).

    `banned` ids (a 1-D tensor on the logits' device) are set to -inf first, so neither greedy decoding
    nor top-k / top-p ever picks them, however likely the model thinks they are. `reweight(row, probs)`: see
    `_reweighted` (not at temperature 0).
    """
    if banned is not None and len(banned):
        logits = logits.index_fill(-1, banned, float("-inf"))
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logits = filter_logits(logits, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    if reweight is not None:
        probs = _reweighted(probs, list(range(probs.size(0))), reweight)
    return sample_categorical(probs, generator)


def _reweighted(probs: torch.Tensor, rows: list[int], reweight: Callable) -> torch.Tensor:
    """`probs` (n, vocab), the final sampling distributions (after temperature, top-k and top-p) of batch rows
    `rows`, with each replaced by `reweight(row, p)` where that returns an array (the keyed text mark's
    distribution-preserving tournament): p and the result are float64 numpy arrays, computed exactly as the
    runtime's `_select` computes them, so both paths apply one transform."""
    out = None
    for i, b in enumerate(rows):
        p = probs[i].double()
        new = reweight(b, (p / p.sum()).cpu().numpy())
        if new is not None:
            out = probs.clone() if out is None else out
            out[i] = torch.as_tensor(new, dtype=probs.dtype, device=probs.device)
    return probs if out is None else out


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of `probs` (B, n), drawn by inverting the cumulative distribution at a uniform
    number in (0, total]: the index i with cdf[i-1] < u <= cdf[i], so a zero-probability index is never
    drawn. A third of torch.multinomial's time for one draw, which matters once per generated token."""
    cdf = probs.cumsum(dim=-1)
    u = (1.0 - torch.rand((probs.size(0), 1), generator=generator, device=probs.device)) * cdf[:, -1:]
    return (cdf < u).sum(dim=-1).clamp_(max=probs.size(-1) - 1)


def select_next_rows(logits: torch.Tensor, temperatures: list[float], top_ks: list[int | None],
                     top_ps: list[float | None], generators: list[torch.Generator | None],
                     banned: torch.Tensor | None = None, active: list[bool] | None = None,
                     reweight: Callable | None = None) -> list[int]:
    """`select_next` with each row's own temperature, top-k, top-p and random generator: one id per row
    (0 for rows not `active`, which draw nothing).

    Each active row draws exactly one uniform number from its own generator, in row order, so a row's
    tokens do not depend on which other rows share its batch: what lets a server merge requests
    without changing any request's result. Rows may share a generator (one request's several rows).
    `reweight(row, probs)`: see `_reweighted` (sampled rows only).
    """
    rows = logits.size(0)
    active = [True] * rows if active is None else active
    if banned is not None and len(banned):
        logits = logits.index_fill(-1, banned, float("-inf"))
    out = [0] * rows
    greedy = [b for b in range(rows) if active[b] and temperatures[b] == 0]
    if greedy:
        for b, t in zip(greedy, logits[greedy].argmax(dim=-1).tolist()):
            out[b] = t
    sampled = [b for b in range(rows) if active[b] and temperatures[b] != 0]
    if not sampled:
        return out
    draws = {b: torch.rand(1, generator=generators[b], device=generators[b].device if generators[b] is not None
                           else "cpu") for b in sampled}  # in row order, before any regrouping
    lg = logits[sampled].float()
    temps = [temperatures[b] for b in sampled]
    if any(t != 1.0 for t in temps):
        lg = lg / torch.tensor(temps, dtype=lg.dtype, device=lg.device).unsqueeze(1)
    groups: dict[tuple, list[int]] = {}
    for i, b in enumerate(sampled):
        groups.setdefault((top_ks[b], top_ps[b]), []).append(i)
    if len(groups) == 1:
        (k, p), = groups
        lg = filter_logits(lg, k, p)
    else:
        lg = torch.cat([filter_logits(lg[idx], k, p) for (k, p), idx in groups.items()])
        order = [i for idx in groups.values() for i in idx]
        sampled = [sampled[i] for i in order]
    probs = torch.softmax(lg, dim=-1)
    if reweight is not None:
        probs = _reweighted(probs, sampled, reweight)
    u = torch.cat([draws[b] for b in sampled]).to(probs.device)
    cdf = probs.cumsum(dim=-1)
    ids = (cdf < ((1.0 - u).unsqueeze(1) * cdf[:, -1:])).sum(dim=-1).clamp_(max=probs.size(-1) - 1).tolist()
    for b, t in zip(sampled, ids):
        out[b] = t
    return out


def generate(model, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             stop_ids: Iterable[int] = (), should_stop: Callable[[int, list[int]], bool] | None = None,
             use_cache: bool = True, dtype: torch.dtype | None = None,
             banned_ids: Iterable[int] = (), bias: Callable[[int, list[int]], object] | None = None,
             reweight: Callable[[int, list[int], object], object] | None = None) -> Iterator[list[int | None]]:
    """Continue each prompt (a batch; lengths may differ), yielding one list of new ids per step, one
    entry per row, so a caller can stream text as it is produced.

    A row ends when it samples an id in `stop_ids` (that id is not yielded) or when
    `should_stop(row, ids_so_far)` returns True after a yielded id (e.g. a stop string appeared in the
    decoded text); an ended row yields None. Ids in `banned_ids` are never sampled (e.g. a tokenizer's
    unknown id, which stands for no particular character). The generator returns when every row has ended or after
    `max_new_tokens` steps.

    `max_new_tokens`, `temperature`, `top_k`, `top_p` and `generator` may each be a list, one value per row
    (a server's batch of unrelated requests); rows then sample through `select_next_rows`, each drawing
    from its own generator, so a row's text does not depend on its batch. `use_cache=False` recomputes the whole context each step (the reference
    path). The model is put in eval mode while generating and restored afterwards.

    `dtype=torch.bfloat16` generates with a bfloat16 copy of the weights, cast once, under autocast
    (which keeps precision-sensitive ops such as softmax in float32). Per-step autocast over float32
    weights would recast every weight matrix for every token, which measured slower than float32. The
    copy lives as long as this generator; to sample many times, cast the model once yourself instead.
    bf16 pays off for large models, whose decoding reads all weights per token (GPT-2 small on CPU:
    ~1.5x); tiny models are faster in float32.

    `bias(row, ids)` -> a float array (vocab,) or None: added to that row's logits before sampling, with `ids`
    the row's prompt and generated ids so far (the earlier green-list text mark).
    `reweight(row, ids, probs)` -> a float64 array or None: replaces that row's final sampling distribution
    `probs` (float64 numpy, after temperature, top-k and top-p; not at temperature 0), with `ids` as for `bias`
    (the keyed text mark's tournament, `media.text_mark.TournamentMark.reweight`).
    """
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, (list, tuple)) for p in prompts):
        raise UserError("prompts must be a list of token-id lists, one per row. Fix: wrap a single prompt "
                        "as [ids].")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("Every prompt needs at least one token. Fix: start from a non-empty prompt "
                        "(e.g. a newline encoded with the model's tokenizer).")
    rows = _per_row(len(prompts), temperature, top_k, top_p, generator, max_new_tokens)
    for t, k, p in zip(*rows[:3]):  # here, not at the first next(): errors surface at the call
        check_sampling_args(t, k, p)
    return _generate(model, [list(p) for p in prompts], rows if rows[-1] is not None else None,
                     max_new_tokens, temperature, top_k, top_p, generator,
                     set(stop_ids), should_stop, use_cache, dtype, sorted(set(banned_ids)), bias, reweight)


def _per_row(n: int, *values) -> list:
    """Each of temperature, top_k, top_p, generator, max_new_tokens as a list of n per-row values; the last
    entry of the result is None when every value was a single one (the vectorised path applies)."""
    lists = [v for v in values if isinstance(v, (list, tuple))]
    if any(len(v) != n for v in lists):
        raise UserError(f"Per-row sampling settings need one value per prompt ({n}); got lists of "
                        f"{sorted({len(v) for v in lists})}.")
    rows = [list(v) if isinstance(v, (list, tuple)) else [v] * n for v in values]
    return rows + [True if lists else None]


def _generate(model, prompts, per_row, max_new_tokens, temperature, top_k, top_p, generator, stop, should_stop,
              use_cache, dtype, banned_ids, bias=None, reweight=None):
    limits = per_row[4] if per_row else [max_new_tokens] * len(prompts)
    if max(limits) <= 0:
        return
    device_type = next(model.parameters()).device.type
    if dtype is not None and dtype != next(model.parameters()).dtype:
        model = copy.deepcopy(model).to(dtype)

    low_precision = dtype in (torch.bfloat16, torch.float16)

    def mode():
        # Entered around each step, never across a `yield`: inference/autocast state is thread-wide,
        # and the caller's code runs while this generator is suspended.
        if not low_precision:
            return torch.inference_mode()
        return _Both(torch.inference_mode(), torch.autocast(device_type, dtype=dtype))

    was_training = model.training
    model.eval()
    try:
        with mode():
            session = model.generation_session(prompts, use_cache=use_cache)
        vocab = session.logits.size(-1)
        if any(not 0 <= i < vocab for i in banned_ids) or len(banned_ids) >= vocab:
            raise UserError(f"banned_ids must be ids of the model's vocabulary (0..{vocab - 1}) and leave some "
                            f"unbanned; got {banned_ids}.")
        banned = torch.tensor(banned_ids, dtype=torch.long, device=session.logits.device)
        generated: list[list[int]] = [[] for _ in prompts]
        done = [limit <= 0 for limit in limits]
        total = max(limits)
        for step in range(total):
            logits = session.logits
            if bias is not None:
                logits = _biased(logits, [None if done[b] else bias(b, prompts[b] + generated[b])
                                          for b in range(len(prompts))])
            marks = None if reweight is None else (lambda b, p: reweight(b, prompts[b] + generated[b], p))
            with mode():
                if per_row:
                    next_ids = select_next_rows(logits, per_row[0], per_row[1], per_row[2], per_row[3],
                                                banned, [not d for d in done], reweight=marks)
                else:
                    next_ids = select_next(logits, temperature, top_k, top_p, generator, banned,
                                           reweight=marks).tolist()
            out: list[int | None] = []
            for b, t in enumerate(next_ids):
                if done[b] or t in stop:
                    done[b] = True
                    out.append(None)
                    continue
                generated[b].append(t)
                out.append(t)
                if (should_stop is not None and should_stop(b, generated[b])) or len(generated[b]) >= limits[b]:
                    done[b] = True
            if all(t is None for t in out):
                return
            yield out
            if all(done):
                return
            if step + 1 < total:
                with mode():
                    session.push(next_ids)
    finally:
        model.train(was_training)


def _biased(logits: torch.Tensor, rows: list) -> torch.Tensor:
    """logits (B, V) plus each row's bias (a float array of at most V entries, or None)."""
    if all(r is None for r in rows):
        return logits
    add = torch.zeros(logits.shape, dtype=torch.float32)
    for b, r in enumerate(rows):
        if r is not None:
            add[b, :len(r)] = torch.as_tensor(r, dtype=torch.float32)
    return logits.float() + add.to(logits.device)


def generate_ids(model, prompts: list[list[int]], max_new_tokens: int, **kwargs) -> list[list[int]]:
    """Run `generate` to the end and return each row's new ids (stop ids excluded)."""
    rows: list[list[int]] = [[] for _ in prompts]
    for step in generate(model, prompts, max_new_tokens, **kwargs):
        for row, t in zip(rows, step):
            if t is not None:
                row.append(t)
    return rows


class _Both:
    """Two context managers as one (cheaper per step than an ExitStack)."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def __enter__(self):
        self.first.__enter__()
        self.second.__enter__()

    def __exit__(self, *exc):
        self.second.__exit__(*exc)
        self.first.__exit__(*exc)
        return False


__all__ = ["select_next", "select_next_rows", "filter_logits", "generate", "generate_ids", "check_sampling_args"]
