"""Text language models: GPT / RNN forward passes and generation paths (KV cache, state carrying, batching,
stop rules, reproducibility), and tiny models overfitting a tiny corpus. Tokenizers, corpora and sampling rules
are in test_text.py.

Equality tests between generation paths (KV cache vs recompute, batched vs alone) run the models in
float64: the paths add the same numbers in a different order, and float64 keeps greedy argmax
decisions from flipping on a rounding difference, so a failure means a real bug.
"""

from __future__ import annotations

import copy

import pytest
import torch

from genforge.data.text import load_text_corpus
from genforge.tokenizers import train_tokenizer
from genforge.errors import UserError
from genforge.models.gpt import GPT, GPTConfig
from genforge.models.rnn_lm import RNNLM, RNNConfig
from genforge.models.sampling import generate, generate_ids


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread


# ---------------------------------------------------------------- models and generation

def overfit(model, ids: torch.Tensor, block: int, steps: int, lr: float) -> float:
    """Full-batch Adam on every window of `ids`; returns the last loss."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x = torch.stack([ids[s:s + block] for s in range(len(ids) - block)])
    y = torch.stack([ids[s + 1:s + 1 + block] for s in range(len(ids) - block)])
    for _ in range(steps):
        loss = model(x, y)[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


# A random token sequence: a model that has partly learnt it gives varied, context-dependent greedy
# output (a random-init model tends to repeat one token, which would make equality tests toothless).
RANDOM_IDS = torch.randint(0, 13, (100,), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def gpt() -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=32))
    overfit(model, RANDOM_IDS, 16, steps=40, lr=1e-2)
    return model.double().eval()


@pytest.fixture(scope="module", params=["lstm", "gru"])
def rnn(request) -> RNNLM:
    torch.manual_seed(0)
    model = RNNLM(RNNConfig(vocab_size=13, cell=request.param, n_layer=2, hidden=32))
    overfit(model, RANDOM_IDS, 16, steps=40, lr=1e-2)
    return model.double().eval()


def sliding_reference(model: GPT, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding written independently with plain forward calls and the documented rule:
    the window holds at most block_size tokens; when it would overflow it restarts from the last
    block_size // 2."""
    block = model.config.block_size
    tokens, start, out = list(prompt), max(0, len(prompt) - block), []
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([tokens[start:]]))
            t = int(logits[0, -1].argmax())
            out.append(t)
            tokens.append(t)
            if len(tokens) - start > block:
                start = len(tokens) - block // 2
    return out


@pytest.mark.parametrize("prompt_len, n", [(5, 10), (5, 40), (30, 25)])  # in block / crossing it / long prompt
def test_gpt_kv_cache_equals_recompute(gpt, prompt_len, n):
    model = gpt
    prompt = [(3 * i + 1) % 13 for i in range(prompt_len)]
    with_cache = generate_ids(model, [prompt], n, temperature=0)[0]
    without = generate_ids(model, [prompt], n, temperature=0, use_cache=False)[0]
    assert len(with_cache) == n and len(set(with_cache)) > 3  # a non-trivial sequence
    assert with_cache == without == sliding_reference(model, prompt, n)


@pytest.mark.parametrize("use_cache", [True, False])
def test_gpt_batched_ragged_prompts_equal_single_runs(gpt, use_cache):
    model = gpt
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]
    batched = generate_ids(model, prompts, 30, temperature=0, use_cache=use_cache)  # every row slides
    alone = [generate_ids(model, [p], 30, temperature=0, use_cache=use_cache)[0] for p in prompts]
    assert batched == alone


def test_rnn_state_carrying_equals_recompute_and_batches(rnn):
    model = rnn
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]
    batched = generate_ids(model, prompts, 20, temperature=0)
    alone = [generate_ids(model, [p], 20, temperature=0)[0] for p in prompts]
    recomputed = generate_ids(model, prompts, 20, temperature=0, use_cache=False)
    assert batched == alone == recomputed
    assert len(set(batched[0])) > 3


def test_stop_ids_and_stop_callback_end_rows(gpt):
    model = gpt
    ref = generate_ids(model, [[1, 2]], 20, temperature=0)[0]
    i = next(i for i in range(2, 20) if ref[i] not in ref[:i])  # first fresh token after a few steps
    assert generate_ids(model, [[1, 2]], 20, temperature=0, stop_ids=[ref[i]])[0] == ref[:i]

    steps = list(generate(model, [[1, 2], [3]], 10, temperature=0, should_stop=lambda row, ids: row == 0 and len(ids) == 4))
    assert [s[0] for s in steps[:4]] == ref[:4] and all(s[0] is None for s in steps[4:])
    assert len(steps) == 10 and all(s[1] is not None for s in steps)  # the other row carried on


def test_sampling_is_reproducible_and_restores_mode(gpt):
    model = copy.deepcopy(gpt).train()
    run = lambda seed: generate_ids(model, [[1]], 20, top_k=5, top_p=0.9, temperature=0.8,
                                    generator=torch.Generator().manual_seed(seed))
    assert run(7) == run(7)
    assert model.training  # generate switched to eval internally and back


def test_bf16_generation_runs(gpt):
    model = copy.deepcopy(gpt).float()
    out = generate_ids(model, [[1, 2], [3]], 20, dtype=torch.bfloat16)
    assert [len(r) for r in out] == [20, 20] and all(0 <= t < 13 for r in out for t in r)
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is not converted


def test_gpt_forward_optim_groups_and_block_limit():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16))
    idx = torch.randint(0, 11, (3, 8))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 8, 11) and loss.item() == pytest.approx(torch.log(torch.tensor(11.0)).item(), abs=0.3)
    groups = model.optim_groups(0.1)
    decay, no_decay = ({id(p) for p in g["params"]} for g in groups)
    assert decay.isdisjoint(no_decay) and decay | no_decay == {id(p) for p in model.parameters()}
    assert id(model.wte.weight) in decay and id(model.ln_f.weight) in no_decay
    assert "lm_head.weight" not in model.state_dict()  # tied: the embedding matrix is stored once
    with pytest.raises(UserError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(UserError, match="multiple"):
        GPTConfig(vocab_size=11, n_embd=10, n_head=4)
    with pytest.raises(UserError, match="tie"):
        RNNConfig(vocab_size=11, hidden=32, n_embd=16)


TINY = load_text_corpus("shakespeare").text[:200]


def test_tiny_gpt_overfits_tiny_corpus():
    tok = train_tokenizer("char", TINY)
    ids = tok.encode_tensor(TINY)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=64))
    assert overfit(model, ids, 32, steps=100, lr=3e-3) < 0.3  # from ~ln(vocab) = 3.5
    # and it reproduces the memorised text greedily
    out = generate_ids(model, [ids[:20].tolist()], 20, temperature=0)[0]
    assert tok.decode(out) == TINY[20:40]


def test_tiny_lstm_overfits_tiny_corpus():
    tok = train_tokenizer("char", TINY)
    ids = tok.encode_tensor(TINY)
    torch.manual_seed(0)
    model = RNNLM(RNNConfig(vocab_size=tok.vocab_size, cell="lstm", n_layer=1, hidden=128))
    assert overfit(model, ids, 32, steps=60, lr=1e-2) < 0.3
