"""A recurrent (LSTM or GRU) language model: embedding -> stacked RNN -> linear head.

The char-rnn baseline: no context limit and constant cost per generated token, since the hidden
state carries the whole past. `forward` takes and returns that state, so training can run truncated
backprop through time and generation continues a prompt one token at a time. When the embedding and
hidden sizes match, the head can reuse the embedding matrix (weight tying, Press & Wolf 2017), which
saves vocab x hidden parameters and usually helps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from genforge.errors import UserError

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


@dataclass
class RNNConfig:
    vocab_size: int
    cell: str = "lstm"  # "lstm" or "gru"
    n_layer: int = 2
    hidden: int = 256
    n_embd: int | None = None  # embedding size; None means the same as hidden
    dropout: float = 0.0
    tie_weights: bool = True

    def __post_init__(self):
        if self.cell not in CELLS:
            raise UserError(f"Unknown RNN cell {self.cell!r}. Fix: set model.cell to 'lstm' or 'gru'.")
        if self.n_embd is None:
            self.n_embd = self.hidden
        for key in ("vocab_size", "n_layer", "hidden", "n_embd"):
            if getattr(self, key) < 1:
                raise UserError(f"RNN {key} must be at least 1; got {getattr(self, key)}. Fix: set model.{key} >= 1.")
        if self.tie_weights and self.n_embd != self.hidden:
            raise UserError(f"Tied weights need n_embd == hidden (got {self.n_embd} and {self.hidden}). "
                            "Fix: set model.n_embd equal to model.hidden, or model.tie_weights=false.")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1); got {self.dropout}. Fix: set model.dropout, e.g. 0.2.")


class RNNLM(nn.Module):
    def __init__(self, cfg: RNNConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.rnn = CELLS[cfg.cell](cfg.n_embd, cfg.hidden, cfg.n_layer, batch_first=True,
                                   dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.head = None if cfg.tie_weights else nn.Linear(cfg.hidden, cfg.vocab_size)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def optim_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay the weight matrices, not the biases."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.drop(h)
        return F.linear(h, self.embed.weight) if self.head is None else self.head(h)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, state=None):
        """Logits (B, T, vocab), the mean cross-entropy when targets are given (-1 is ignored), and
        the new recurrent state (an (h, c) pair for LSTM, h for GRU) to pass to the next call."""
        out, state = self.rnn(self.drop(self.embed(idx)), state)
        logits = self.logits(out)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss, state

    def run_ragged(self, sequences: list[list[int]]):
        """Last-token logits and final states for rows of different lengths, as if each ran alone."""
        device = self.embed.weight.device
        lengths = [len(s) for s in sequences]
        idx = torch.tensor([s + [0] * (max(lengths) - len(s)) for s in sequences], device=device)
        x = self.drop(self.embed(idx))
        if all(n == lengths[0] for n in lengths):
            out, state = self.rnn(x)
            return self.logits(out[:, -1]), state
        packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True)
        last = out[torch.arange(len(sequences), device=device), torch.tensor(lengths, device=device) - 1]
        return self.logits(last), state

    def generation_session(self, prompts: list[list[int]], use_cache: bool = True,
                           capacity: int | None = None) -> RNNSession:
        return RNNSession(self, prompts, use_cache, capacity)


class RNNWithState(nn.Module):
    """The RNN LM with its recurrent state as explicit inputs and outputs, for export: input_ids (B, T) and
    h (n_layer, B, hidden) [and c for an LSTM] in; logits (B, T, vocab) and the new h [and c] out."""

    def __init__(self, model: RNNLM):
        super().__init__()
        self.model = model

    def forward(self, input_ids, h, c=None):
        out, state = self.model.rnn(self.model.embed(input_ids), (h, c) if c is not None else h)
        logits = self.model.logits(out)
        return (logits, *state) if isinstance(state, tuple) else (logits, state)


class RNNSession:
    """One batched generation. With `use_cache` the recurrent state is carried (one step per token);
    without, every step reruns each row's whole history, which is only useful as a reference. With a
    `capacity`, rows join (`add`) and leave (`drop`) between steps, as `gpt.GPTSession`'s do."""

    def __init__(self, model: RNNLM, prompts: list[list[int]], use_cache: bool = True, capacity: int | None = None):
        if (not prompts and capacity is None) or any(len(p) == 0 for p in prompts):
            raise UserError("Every prompt needs at least one token. Fix: start from a non-empty prompt "
                            "(e.g. a newline encoded with the model's tokenizer).")
        self.model, self.use_cache = model, use_cache
        self.capacity = len(prompts) if capacity is None else capacity
        self.device = model.embed.weight.device
        self.tokens: list[list[int]] = []
        self.logits, self.state = None, None
        self.add(prompts)

    def add(self, prompts: list[list[int]]) -> None:
        if not prompts:
            return
        if any(len(p) == 0 for p in prompts):
            raise UserError("Every prompt needs at least one token.")
        if len(self.tokens) + len(prompts) > self.capacity:
            raise UserError(f"{len(self.tokens) + len(prompts)} rows do not fit a session of {self.capacity}.")
        self.tokens += [list(p) for p in prompts]
        logits, state = self.model.run_ragged([list(p) for p in prompts])
        if self.logits is None or len(self.logits) == 0:
            self.logits, self.state = logits, state
            return
        self.logits = torch.cat([self.logits, logits.to(self.logits.dtype)])
        if isinstance(state, tuple):
            self.state = tuple(torch.cat([a, b.to(a.dtype)], 1) for a, b in zip(self.state, state))
        else:
            self.state = torch.cat([self.state, state.to(self.state.dtype)], 1)

    def drop(self, rows: list[int]) -> list[int]:
        """Rows leaving the batch (the last row moves into each freed slot); returns the new order as old
        row indices."""
        order = list(range(len(self.tokens)))
        for b in sorted(set(rows), reverse=True):
            last = order.pop()
            if b != len(order):
                order[b] = last
        self.tokens = [self.tokens[i] for i in order]
        self.logits = self.logits[order]
        index = torch.tensor(order, dtype=torch.long, device=self.device)
        if isinstance(self.state, tuple):
            self.state = tuple(s.index_select(1, index) for s in self.state)
        else:
            self.state = self.state.index_select(1, index)
        return order

    def push(self, new_tokens: list[int]) -> torch.Tensor:
        for row, t in zip(self.tokens, new_tokens):
            row.append(t)
        if not self.use_cache:
            self.logits, self.state = self.model.run_ragged(self.tokens)
            return self.logits
        idx = torch.tensor(new_tokens, device=self.device).view(-1, 1)
        out, self.state = self.model.rnn(self.model.embed(idx), self.state)
        self.logits = self.model.logits(out[:, -1])
        return self.logits
