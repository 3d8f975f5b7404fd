"""A GPT-2 style decoder-only Transformer language model, with a KV cache for fast sampling.

Read top to bottom: config -> KV cache -> attention -> MLP -> block -> GPT -> generation session.
Pre-LayerNorm blocks, causal self-attention through `F.scaled_dot_product_attention` (fused kernels
on CPU and GPU), a 4x GELU MLP, learned position embeddings, and an LM head that reuses the token
embedding matrix (weight tying; done with `F.linear` on `wte.weight` so the state dict holds the matrix
once and safetensors can save it). Init follows GPT-2: N(0, 0.02), residual projections scaled by
1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth.

Generation never fails on long outputs: the model sees at most `block_size` tokens, so when a row's
context would exceed that, its window slides to its last `block_size // 2` tokens (the KV cache is
recomputed from them in one forward), then grows again. Sliding by half a block keeps the cost of
recomputing rare; the no-cache path applies the same rule, so both give the same tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genforge.errors import UserError


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise UserError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head}). "
                            "Fix: change model.n_embd or model.n_head, e.g. n_embd=128, n_head=4.")
        for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, key) < 1:
                raise UserError(f"GPT {key} must be at least 1; got {getattr(self, key)}. Fix: set model.{key} >= 1.")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1); got {self.dropout}. Fix: set model.dropout, e.g. 0.1.")


class KVCache:
    """Keys and values of every past position, preallocated as (B, n_head, block_size, head_dim) per
    layer and written in place, so a decode step never reallocates or concatenates.

    Allocation waits for the first write so the cache takes the dtype the layers actually produce
    (bf16 under autocast, the parameter dtype otherwise). `rows(a, b)` is a view of some batch rows (a
    server's running batch uses the first B of its slots); it allocates in, and writes through to, the whole.
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, block_size: int, head_dim: int):
        self.shape = (batch_size, n_head, block_size, head_dim)
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.parent: tuple[KVCache, int, int] | None = None

    def _tensors(self, layer: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.parent is not None:
            whole, a, b = self.parent
            ck, cv = whole._tensors(layer, like)
            return ck[a:b], cv[a:b]
        if self.k[layer] is None:
            self.k[layer] = torch.zeros(self.shape, dtype=like.dtype, device=like.device)
            self.v[layer] = torch.zeros(self.shape, dtype=like.dtype, device=like.device)
        return self.k[layer], self.v[layer]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: int | torch.Tensor, end: int):
        """Write new keys/values at `pos` (an int for all rows, or a (B,) tensor of per-row positions
        for one new token each) and return the cached keys/values of positions [0, end)."""
        ck, cv = self._tensors(layer, k)
        if isinstance(pos, int):
            ck.narrow(2, pos, k.size(2)).copy_(k)
            cv.narrow(2, pos, v.size(2)).copy_(v)
        else:
            rows = torch.arange(k.size(0), device=k.device)
            ck[rows, :, pos] = k[:, :, 0]
            cv[rows, :, pos] = v[:, :, 0]
        return ck.narrow(2, 0, end), cv.narrow(2, 0, end)

    def rows(self, a: int, b: int) -> KVCache:
        """A view of batch rows [a, b); writing through it writes the shared cache."""
        if self.parent is not None:
            whole, start, _ = self.parent
            return whole.rows(start + a, start + b)
        view = KVCache(len(self.k), b - a, *self.shape[1:])
        view.parent = (self, a, b)
        return view

    def row(self, b: int) -> KVCache:
        return self.rows(b, b + 1)

    def move(self, src: int, dst: int) -> None:
        """Copy row `src`'s keys and values into row `dst` (a slot freed in a running batch)."""
        for t in (*self.k, *self.v):
            if t is not None:
                t[dst].copy_(t[src])


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, skipped outright when inactive: generation calls this dozens of times per token."""
    return F.dropout(x, p, True) if training and p > 0 else x


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0, pos: int | torch.Tensor = 0,
                end: int = 0, mask: torch.Tensor | None = None):
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, n_head, T, head_dim)
        if cache is not None:
            k, v = cache.update(layer, k, v, pos, end)
        # Causal with the fused kernel when queries and keys start together; a single new query may
        # see every cached key; anything else brings its own mask (see GPT._attention_mask).
        causal = mask is None and T > 1
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)
        return dropout(self.c_proj(y), self.dropout, self.training)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x):
        return dropout(self.c_proj(F.gelu(self.c_fc(x))), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None, layer=0, pos=0, end=0, mask=None):
        x = x + self.attn(self.ln_1(x), cache, layer, pos, end, mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings are left out by default, as in GPT-2's reporting."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def optim_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay matrices and embeddings, never biases or LayerNorm gains (decaying those
        only pulls the normalisation towards zero)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]

    def hidden(self, idx: torch.Tensor, kv_cache: KVCache | None = None, start_pos: int | torch.Tensor = 0):
        """Final (LayerNormed) hidden states (B, T, n_embd) for tokens at positions start_pos.., using
        and filling `kv_cache` if given. A (B,) tensor `start_pos` gives each row its own position
        (one new token per row, for batches whose rows have different lengths)."""
        B, T = idx.shape
        per_row = isinstance(start_pos, torch.Tensor)
        end = (int(start_pos.max()) + 1) if per_row else start_pos + T
        if end > self.config.block_size:
            raise UserError(f"Sequence of length {end} is longer than the model's block_size "
                            f"({self.config.block_size}). Fix: crop inputs to block_size tokens "
                            "(generation slides its window by itself).")
        # Positions: a slice of the table when every row is at the same place, else a per-row lookup.
        pos_emb = self.wpe(start_pos.view(B, 1)) if per_row else self.wpe.weight[start_pos:end]
        x = dropout(self.wte(idx) + pos_emb, self.config.dropout, self.training)
        mask = self._attention_mask(T, start_pos, end, idx.device) if kv_cache is not None else None
        for layer, block in enumerate(self.h):
            x = block(x, kv_cache, layer, start_pos, end, mask)
        return self.ln_f(x)

    @staticmethod
    def _attention_mask(T: int, start_pos: int | torch.Tensor, end: int, device) -> torch.Tensor | None:
        """None where SDPA needs no mask: a prefill from position 0 (plain causal) or one new token at
        the same position in every row (it sees all cached keys)."""
        keys = torch.arange(end, device=device)
        if isinstance(start_pos, torch.Tensor):  # per-row positions, one query each: keys up to its own
            return (keys.view(1, end) <= start_pos.view(-1, 1)).view(-1, 1, 1, end)
        if start_pos == 0 or T == 1:
            return None
        queries = torch.arange(start_pos, end, device=device)
        return keys.view(1, end) <= queries.view(T, 1)  # causal, aligned to the end of the keys

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                start_pos: int | torch.Tensor = 0):
        """Logits (B, T, vocab) and, with targets, the mean cross-entropy (targets of -1 are ignored)."""
        logits = F.linear(self.hidden(idx, kv_cache, start_pos), self.wte.weight)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def decode_weights(self) -> list[tuple]:
        """Each block's tensors in the order `decode_step` uses them, gathered once per generation:
        reading them through the module tree costs more per token than the arithmetic at batch 1."""
        return [(b.ln_1.weight, b.ln_1.bias, b.attn.c_attn.weight, b.attn.c_attn.bias, b.attn.c_proj.weight,
                 b.attn.c_proj.bias, b.ln_2.weight, b.ln_2.bias, b.mlp.c_fc.weight, b.mlp.c_fc.bias,
                 b.mlp.c_proj.weight, b.mlp.c_proj.bias) for b in self.h]

    def decode_step(self, idx: torch.Tensor, cache: KVCache, start_pos: int | torch.Tensor,
                    weights: list[tuple]) -> torch.Tensor:
        """Next-token logits (B, vocab) for one new token per row (idx (B, 1)) at `start_pos`, filling `cache`.

        The same arithmetic as `forward(idx, kv_cache=cache, start_pos=...)` in the same order (so the
        same numbers), written flat: at batch 1 a token of a small model is a few dozen tiny kernels,
        and the module calls, hooks and attribute look-ups around them took as long as the kernels.
        Eval mode only (no dropout).
        """
        B = idx.size(0)
        C, H = self.config.n_embd, self.config.n_head
        per_row = isinstance(start_pos, torch.Tensor)
        end = (int(start_pos.max()) + 1) if per_row else start_pos + 1
        if end > self.config.block_size:
            raise UserError(f"Sequence of length {end} is longer than the model's block_size ({self.config.block_size}).")
        # Rows as 2-D (B, C) activations: a linear layer on them is one matrix product, where a (B, 1, C)
        # input first goes through matmul's batch folding (same numbers, more dispatch).
        x = self.wte.weight[idx.view(B)] + self.wpe.weight[start_pos]  # (B, C): a row's own position, or one for all
        mask = self._attention_mask(1, start_pos, end, idx.device)
        shape = (C,)
        for layer, (g1, b1, wa, ba, wp, bp, g2, b2, wf, bf, wm, bm) in enumerate(weights):
            q, k, v = F.linear(F.layer_norm(x, shape, g1, b1), wa, ba).view(B, 3, H, 1, C // H).unbind(1)
            k, v = cache.update(layer, k, v, start_pos, end)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, 1, head_dim)
            x = x + F.linear(y.view(B, C), wp, bp)
            x = x + F.linear(F.gelu(F.linear(F.layer_norm(x, shape, g2, b2), wf, bf)), wm, bm)
        return F.linear(self.ln_f(x), self.wte.weight)

    def new_kv_cache(self, batch_size: int) -> KVCache:
        c = self.config
        return KVCache(c.n_layer, batch_size, c.n_head, c.block_size, c.n_embd // c.n_head)

    def generation_session(self, prompts: list[list[int]], use_cache: bool = True,
                           capacity: int | None = None) -> GPTSession:
        return GPTSession(self, prompts, use_cache, capacity)


class GPTWithPast(nn.Module):
    """The GPT with its KV cache as explicit inputs and outputs, in Hugging Face Optimum's layout: input_ids and
    position_ids (B, T), attention_mask (B, P + T: 1 a real position, 0 padding) and past_key_values.{i}.key /
    .value (B, n_head, P, head_dim) in; logits (B, T, vocab) and present.{i}.key / .value (B, n_head, P + T,
    head_dim) out. What `genforge export` writes for a runtime to step: P = 0 is the prefill, T = 1 a decode step.
    Rows of different lengths share a run left-padded: padded keys are masked and position_ids count each row's
    own positions. A padded position attends to itself alone: an empty softmax row would be NaN, and its keys
    would then carry the NaN into every later step of the row even where masked."""

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt

    def forward(self, input_ids, position_ids, attention_mask, *past):
        g = self.gpt
        x = g.wte(input_ids) + g.wpe(position_ids)
        B, T, C = x.shape
        P = past[0].shape[2]
        keys = torch.arange(P + T, device=x.device).view(1, -1)
        queries = (P + torch.arange(T, device=x.device)).view(-1, 1)
        real = attention_mask.bool().view(B, 1, 1, P + T)
        mask = (keys <= queries) & real | (keys == queries)  # (B, 1, T, P + T): causal, real keys, and itself
        presents = []
        for i, block in enumerate(g.h):
            attn = block.attn
            q, k, v = attn.c_attn(block.ln_1(x)).view(B, T, 3, attn.n_head, C // attn.n_head).permute(2, 0, 3, 1, 4)
            k, v = torch.cat([past[2 * i], k], 2), torch.cat([past[2 * i + 1], v], 2)
            presents += [k, v]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + attn.c_proj(y.transpose(1, 2).reshape(B, T, C))
            x = x + block.mlp(block.ln_2(x))
        return (F.linear(g.ln_f(x), g.wte.weight), *presents)


class GPTSession:
    """The state of one batched generation: each row's tokens, its window start and (with the cache)
    how many positions of its KV cache are filled. `logits` holds every row's next-token logits;
    `push(tokens)` appends one token per row and refreshes them. Rows may have different lengths:
    prompts are right-padded for the prefill and afterwards each row writes at its own position.

    With a `capacity`, rows also join (`add`, prefilled into the next free slots) and leave (`drop`) between
    steps: the KV cache is one padded block of `capacity` slots, the running rows always the first B of them
    (a leaving row's slot is refilled by moving the last row into it), so a decode step reads B rows and no
    paging is needed (docs/design-notes.md, "Serving at in-process speed").
    """

    def __init__(self, model: GPT, prompts: list[list[int]], use_cache: bool = True, capacity: int | None = None):
        if (not prompts and capacity is None) or any(len(p) == 0 for p in prompts):
            raise UserError("Every prompt needs at least one token. Fix: start from a non-empty prompt "
                            "(e.g. a newline encoded with the model's tokenizer).")
        self.model, self.use_cache = model, use_cache
        self.block = model.config.block_size
        self.keep = max(1, self.block // 2)
        self.device = model.wte.weight.device
        self.capacity = len(prompts) if capacity is None else capacity
        self.cache = model.new_kv_cache(self.capacity) if use_cache else None
        self.weights = model.decode_weights() if use_cache else None
        self.tokens: list[list[int]] = []
        self.start: list[int] = []
        self.filled: list[int] = []  # cached positions per row
        self.logits = torch.zeros((0, model.config.vocab_size), device=self.device)
        self.add(prompts)

    def add(self, prompts: list[list[int]]) -> None:
        """Rows joining the batch: appended after the running ones, their windows prefilled (one batch)."""
        if not prompts:
            return
        if any(len(p) == 0 for p in prompts):
            raise UserError("Every prompt needs at least one token.")
        first = len(self.tokens)
        if first + len(prompts) > self.capacity:
            raise UserError(f"{first + len(prompts)} rows do not fit a session of {self.capacity}.")
        self.tokens += [list(p) for p in prompts]
        self.start += [max(0, len(p) - self.block) for p in prompts]  # long prompts keep their last block
        self.filled += [0] * len(prompts)
        rows = range(first, len(self.tokens))
        cache = None if self.cache is None else self.cache.rows(first, len(self.tokens))
        new = self._forward_windows(rows, cache)
        self.logits = new if first == 0 else torch.cat([self.logits, new.to(self.logits.dtype)])

    def drop(self, rows: list[int]) -> list[int]:
        """Rows leaving the batch: each freed slot takes the batch's last row (its cache copied). Returns the
        new order as old row indices, so a caller can reorder what it keeps per row the same way."""
        order = list(range(len(self.tokens)))
        for b in sorted(set(rows), reverse=True):
            last = order.pop()
            if b != len(order):  # b is not the last slot: the last row moves into it
                order[b] = last
                if self.cache is not None:
                    self.cache.move(last, b)
        self.tokens = [self.tokens[i] for i in order]
        self.start = [self.start[i] for i in order]
        self.filled = [self.filled[i] for i in order]
        self.logits = self.logits[order]
        return order

    def _forward_windows(self, rows, cache: KVCache | None) -> torch.Tensor:
        """Run the whole window of each of `rows` (right-padded into one batch) and return the logits at each
        row's last token; with a cache (a view of those rows), the windows' keys/values are written from
        position 0."""
        windows = [self.tokens[b][self.start[b]:] for b in rows]
        lengths = [len(w) for w in windows]
        width = max(lengths)
        idx = torch.tensor([w + [0] * (width - len(w)) for w in windows], device=self.device)
        h = self.model.hidden(idx, cache, 0)  # padding sits after each row's tokens: causal keeps it unseen
        last = h[torch.arange(len(windows), device=self.device), torch.tensor(lengths, device=self.device) - 1]
        if cache is not None:
            for b, n in zip(rows, lengths):
                self.filled[b] = n
        return F.linear(last, self.model.wte.weight)

    def _slide(self, b: int) -> None:
        """Row b's next token would overflow the block: keep its last `keep` tokens as the window."""
        self.start[b] = len(self.tokens[b]) - self.keep

    def push(self, new_tokens: list[int]) -> torch.Tensor:
        for b, t in enumerate(new_tokens):
            self.tokens[b].append(t)
            if len(self.tokens[b]) - self.start[b] > self.block:
                self._slide(b)
        if not self.use_cache:
            self.logits = self._forward_windows(range(len(self.tokens)), None)
            return self.logits
        # Rows whose window slid get their cache recomputed from the window minus its newest token
        # (which the batched step below then feeds like every other row's).
        for b in range(len(self.tokens)):
            if self.filled[b] != len(self.tokens[b]) - 1 - self.start[b]:
                self._refill(b)
        pos = self.filled
        idx = torch.tensor(new_tokens, device=self.device).view(-1, 1)
        start = pos[0] if all(p == pos[0] for p in pos) else torch.tensor(pos, device=self.device)
        cache = self.cache if len(self.tokens) == self.capacity else self.cache.rows(0, len(self.tokens))
        self.logits = self.model.decode_step(idx, cache, start, self.weights)
        self.filled = [p + 1 for p in pos]
        return self.logits

    def _refill(self, b: int) -> None:
        window = self.tokens[b][self.start[b]:-1]
        if window:
            idx = torch.tensor([window], device=self.device)
            self.model.hidden(idx, self.cache.row(b), 0)
        self.filled[b] = len(window)
