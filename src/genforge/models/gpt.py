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
    (bf16 under autocast, the parameter dtype otherwise).
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, block_size: int, head_dim: int):
        self.shape = (batch_size, n_head, block_size, head_dim)
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: int | torch.Tensor, end: int):
        """Write new keys/values at `pos` (an int for all rows, or a (B,) tensor of per-row positions
        for one new token each) and return the cached keys/values of positions [0, end)."""
        if self.k[layer] is None:
            self.k[layer] = torch.zeros(self.shape, dtype=k.dtype, device=k.device)
            self.v[layer] = torch.zeros(self.shape, dtype=v.dtype, device=v.device)
        ck, cv = self.k[layer], self.v[layer]
        if isinstance(pos, int):
            ck.narrow(2, pos, k.size(2)).copy_(k)
            cv.narrow(2, pos, v.size(2)).copy_(v)
        else:
            rows = torch.arange(k.size(0), device=k.device)
            ck[rows, :, pos] = k[:, :, 0]
            cv[rows, :, pos] = v[:, :, 0]
        return ck.narrow(2, 0, end), cv.narrow(2, 0, end)

    def row(self, b: int) -> KVCache:
        """A view of one batch row; writing through it writes the shared cache."""
        view = KVCache(len(self.k), 1, *self.shape[1:])
        view.k = [None if t is None else t[b:b + 1] for t in self.k]
        view.v = [None if t is None else t[b:b + 1] for t in self.v]
        return view


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

    def generation_session(self, prompts: list[list[int]], use_cache: bool = True) -> GPTSession:
        return GPTSession(self, prompts, use_cache)


class GPTWithPast(nn.Module):
    """The GPT with its KV cache as explicit inputs and outputs, in Hugging Face Optimum's layout: input_ids and
    position_ids (B, T) and past_key_values.{i}.key / .value (B, n_head, P, head_dim) in; logits (B, T, vocab)
    and present.{i}.key / .value (B, n_head, P + T, head_dim) out. What `genforge export` writes for a runtime
    to step: P = 0 is the prefill, T = 1 a decode step. Every row has the same past length."""

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt

    def forward(self, input_ids, position_ids, *past):
        g = self.gpt
        x = g.wte(input_ids) + g.wpe(position_ids)
        B, T, C = x.shape
        P = past[0].shape[2]
        keys = torch.arange(P + T, device=x.device)
        mask = keys.view(1, -1) <= (P + torch.arange(T, device=x.device)).view(-1, 1)  # causal, after the past
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
    """

    def __init__(self, model: GPT, prompts: list[list[int]], use_cache: bool = True):
        if not prompts or any(len(p) == 0 for p in prompts):
            raise UserError("Every prompt needs at least one token. Fix: start from a non-empty prompt "
                            "(e.g. a newline encoded with the model's tokenizer).")
        self.model, self.use_cache = model, use_cache
        self.block = model.config.block_size
        self.keep = max(1, self.block // 2)
        self.device = model.wte.weight.device
        self.tokens = [list(p) for p in prompts]
        self.start = [max(0, len(p) - self.block) for p in prompts]  # long prompts keep their last block
        self.cache = model.new_kv_cache(len(prompts)) if use_cache else None
        self.weights = model.decode_weights() if use_cache else None
        self.filled = [0] * len(prompts)  # cached positions per row
        self.logits = self._forward_windows(self.cache)

    def _forward_windows(self, cache: KVCache | None) -> torch.Tensor:
        """Run every row's whole window (right-padded into one batch) and return the logits at each
        row's last token; with a cache, the windows' keys/values are written from position 0."""
        windows = [tokens[start:] for tokens, start in zip(self.tokens, self.start)]
        lengths = [len(w) for w in windows]
        width = max(lengths)
        idx = torch.tensor([w + [0] * (width - len(w)) for w in windows], device=self.device)
        h = self.model.hidden(idx, cache, 0)  # padding sits after each row's tokens: causal keeps it unseen
        last = h[torch.arange(len(windows), device=self.device), torch.tensor(lengths, device=self.device) - 1]
        if cache is not None:
            self.filled = lengths
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
            self.logits = self._forward_windows(None)
            return self.logits
        # Rows whose window slid get their cache recomputed from the window minus its newest token
        # (which the batched step below then feeds like every other row's).
        for b in range(len(self.tokens)):
            if self.filled[b] != len(self.tokens[b]) - 1 - self.start[b]:
                self._refill(b)
        pos = self.filled
        idx = torch.tensor(new_tokens, device=self.device).view(-1, 1)
        start = pos[0] if all(p == pos[0] for p in pos) else torch.tensor(pos, device=self.device)
        self.logits = self.model.decode_step(idx, self.cache, start, self.weights)
        self.filled = [p + 1 for p in pos]
        return self.logits

    def _refill(self, b: int) -> None:
        window = self.tokens[b][self.start[b]:-1]
        if window:
            idx = torch.tensor([window], device=self.device)
            self.model.hidden(idx, self.cache.row(b), 0)
        self.filled[b] = len(window)
