"""Language-model training objective: next-token cross-entropy for GPT, LSTM and GRU models.

Data: a text or code corpus (`data.dataset`), split into a training part and the last
`data.val_fraction` for validation. A tokenizer (`data.tokenizer`: char, byte or bpe) is learnt from the
training part on rank 0 at the start of a fresh run and saved as `tokenizer.json` in the run directory;
a resumed run (and every other rank) reads it from there. Token ids live in memory on the training
device; each micro-batch is `batch_size` random windows of `block_size + 1` tokens (nanoGPT style), drawn
with the step's generator, so resume is exact.

Optimisation: AdamW with weight decay on matrices only, linear warm-up then cosine decay to
`min_lr_ratio * lr` (a LambdaLR the loop checkpoints), gradient clipping, gradient accumulation with
`no_sync`, mixed precision from the loop. No EMA. The in-training evaluation (train.eval_every) is the
mean loss over `train.eval_samples` non-overlapping validation windows evenly strided across the whole
held-out split (`window_starts`), logged with its standard error; lower is better. It estimates what
`genforge eval` measures over every window of the split.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from genforge.data.dataset import evenly_spaced
from genforge.data.music import is_music_dataset, load_music_corpus
from genforge.data.text import SEPARATOR, load_text_corpus
from genforge.tokenizers import Tokenizer, load_tokenizer, train_tokenizer
from genforge.errors import UserError
from genforge.methods.base import Method, MethodConfig, OnnxGraph
from genforge.models.gpt import GPT, GPTConfig, GPTWithPast
from genforge.models.rnn_lm import RNNLM, RNNConfig, RNNWithState
from genforge.models.sampling import generate_ids
from genforge.optim import Muon
from genforge.precision import cpu_bf16_kernels

TOKENIZER_FILE = "tokenizer.json"
SAMPLE_TOKENS = 300  # tokens per sample file written during training


@dataclass(frozen=True)
class TextSpec:
    """What a language model needs to know about the data to size its networks."""

    vocab_size: int


class LMConfig(MethodConfig):
    architecture: Literal["gpt", "lstm", "gru"] = "gpt"
    block_size: int = Field(128, ge=1, description="tokens of context (GPT) / of each training window (all)")
    n_layer: int = Field(4, ge=1, description="Transformer blocks (gpt) or stacked RNN layers (lstm, gru)")
    n_head: int = Field(4, ge=1, description="gpt: attention heads")
    n_embd: int = Field(128, ge=1, description="gpt: width of the residual stream")
    bias: bool = Field(True, description="gpt: biases in Linear and LayerNorm layers")
    hidden: int = Field(256, ge=1, description="lstm/gru: hidden size (also the embedding size; tied weights)")
    dropout: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.1, ge=0, description="AdamW decay of weight matrices and embeddings (not biases, norms)")
    optimizer: Literal["adamw", "muon"] = Field("adamw", description="muon: Muon (orthogonalised momentum, its learning "
                                                "rate matched to AdamW's) for the blocks' weight matrices, AdamW for "
                                                "embeddings, biases and norms")
    grad_clip: float = Field(1.0, ge=0, description="clip the global gradient norm to this; 0 = off")
    warmup_steps: int = Field(100, ge=0, description="linear learning-rate warm-up")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decay ends at this fraction of train.lr")
    decay_steps: int | None = Field(None, ge=1, description="step where the cosine reaches its floor; None = the "
                                                            "run's length (extending a run then stretches the schedule)")


def fast_bf16_matmul() -> bool:
    """Whether Muon's orthogonalisation may run in bf16: on a GPU, or a CPU with oneDNN bf16 kernels."""
    return torch.cuda.is_available() or cpu_bf16_kernels()


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based): linear warm-up, then a
    cosine from 1 down to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if step >= total:
        return min_ratio
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + 0.5 * (1.0 - min_ratio) * (1.0 + math.cos(math.pi * progress))


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """The training text and the held-out validation text (the last `val_fraction`, as nanoGPT does)."""
    cut = int(len(text) * (1.0 - val_fraction))
    return text[:cut], text[cut:]


def window_starts(n_tokens: int, block: int, max_windows: int | None = None) -> torch.Tensor:
    """Token offsets of the validation windows: the grid of non-overlapping `block`-token windows over the
    split, or, when it holds more than `max_windows`, that many of them evenly strided from the first to the
    last (`evenly_spaced`). Strided rather than random: deterministic (the same on every rank, every
    evaluation and after resume, with no generator to save), and a systematic sample that covers the
    beginning, the middle and the end of the split in proportion (the opening of Shakespeare's held-out text
    is easier than the rest: its first 11% scored 0.12 nats below the whole)."""
    return evenly_spaced(max(0, (n_tokens - 1) // block), max_windows) * block


def val_windows(val_ids: torch.Tensor, block: int, max_windows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) windows at `window_starts` (all of the split's non-overlapping windows by default); one
    shorter window when the validation text is shorter than a block."""
    starts = window_starts(len(val_ids), block, max_windows)
    if len(starts) == 0:
        if len(val_ids) < 2:
            return val_ids.new_zeros(0, 1), val_ids.new_zeros(0, 1)
        return val_ids[None, :-1], val_ids[None, 1:]
    offsets = starts[:, None] + torch.arange(block + 1)
    w = val_ids[offsets.to(val_ids.device)]
    return w[:, :-1], w[:, 1:]


def standard_error(window_losses: torch.Tensor, population: int) -> float:
    """Standard error of the mean of `window_losses` as an estimate of the mean over all `population` windows
    of the split: the sample's spread over sqrt(n), with the finite-population correction (0 when every
    window was scored). Treats the strided windows as a simple random sample, which overstates the error of a
    systematic sample when the loss drifts along the text, so the stated error is on the safe side."""
    n = len(window_losses)
    if n < 2 or n >= population:
        return 0.0
    sd = float(window_losses.double().std())
    return sd / math.sqrt(n) * math.sqrt((population - n) / (population - 1))


class TextData:
    """Token ids of the training and validation text, on the training device."""

    unit = "tokens"

    def __init__(self, tokenizer: Tokenizer, train_ids: torch.Tensor, val_ids: torch.Tensor, block: int, batch: int,
                 accum: int, world: int, max_val_windows: int, meta: dict):
        self.tokenizer, self.train_ids, self.val_ids = tokenizer, train_ids, val_ids
        self.block, self.batch, self.accum = block, batch, accum
        self.spec = TextSpec(tokenizer.vocab_size)
        self.meta = meta
        self.items_per_step = batch * block * accum * world
        self.steps_per_epoch = max(1, len(train_ids) // self.items_per_step)
        self.val_x, self.val_y = val_windows(val_ids, block, max_val_windows)
        self.val_population = max(1, (len(val_ids) - 1) // block)  # windows in the whole split

    def micro_batches(self, step: int, rng: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(inputs, targets)] of shape (batch, block) for each accumulation micro-batch: random windows."""
        n_starts = len(self.train_ids) - self.block
        span = torch.arange(self.block + 1)
        out = []
        for _ in range(self.accum):
            starts = torch.randint(n_starts, (self.batch,), generator=rng)
            w = self.train_ids[(starts[:, None] + span).to(self.train_ids.device, non_blocking=True)]
            out.append((w[:, :-1], w[:, 1:]))
        return out

    def sample_prompt(self) -> list[int]:
        """A newline where the vocabulary has one (nanoGPT's default start), else the first training token. Music:
        the start of a tune (ABC) or the first piece's first word (events)."""
        music = self.meta.get("music")
        if music is not None:
            ids = self.tokenizer.encode("X:1\n") if music["kind"] == "abc" else []
            return ids if ids and self.tokenizer.unk_id not in ids else self.train_ids[:1].tolist()
        ids = self.tokenizer.encode("\n")
        if ids and self.tokenizer.unk_id not in ids:
            return ids
        return self.train_ids[:1].tolist()


def _corpus_texts(d, data_dir) -> tuple[str, str, dict, dict]:
    """(training text, held-out text, the corpus report, what else the run records about its data). Music corpora
    are split by tune (data/music.py); other text by position (`split_text`)."""
    if is_music_dataset(d.dataset, d.tokenizer):
        corpus = load_music_corpus(d.dataset, d.val_fraction, d.tokenizer)
        if (corpus.kind == "events") != (d.tokenizer == "event"):
            fix = "data.tokenizer=event" if corpus.kind == "events" else "data.tokenizer=char (or bpe)"
            raise UserError(f"{d.dataset} is {'note-event' if corpus.kind == 'events' else 'ABC'} text, which "
                            f"data.tokenizer={d.tokenizer} does not fit. Fix: set {fix}.")
        if not corpus.test and d.val_fraction > 0:
            raise UserError(f"{d.dataset} has too few pieces to hold any out ({len(corpus.train)}). Fix: add "
                            "pieces, or set data.val_fraction=0 and drop train.eval_every.")
        train = list(corpus.train)
        if d.music.transpose and corpus.kind == "events":
            from genforge.music.events import transpose_events
            shifted = [transpose_events(p, k) for k in range(-d.music.transpose, d.music.transpose + 1) if k
                       for p in corpus.train]
            train += [p for p in shifted if p is not None]
        # every piece ends with the separator, so the model learns to end a piece with a blank line
        join = lambda pieces: "".join(p + SEPARATOR for p in pieces)  # noqa: E731
        music = {**corpus.meta(), "transpose": d.music.transpose, "train_pieces_augmented": len(train)}
        return join(train), join(corpus.test), corpus.report, {"music": music, "python_source": False}
    if d.tokenizer == "event":
        raise UserError(f"data.tokenizer=event reads note-event music, and {d.dataset} is not a music dataset. "
                        "Fix: use char, byte or bpe, or a music dataset (bach-chorales, folder:PATH of MIDI files).")
    corpus = load_text_corpus(d.dataset, data_dir)
    train_text, val_text = split_text(corpus.text, d.val_fraction)
    return train_text, val_text, corpus.report, {"python_source": corpus.python}


def held_out_text(data_meta: dict, data_dir=None) -> str:
    """A run's held-out text, re-read as training read it (`data_meta`: the run's config.json "data"): the test
    tunes of a music corpus, else the last val_fraction of the corpus."""
    if data_meta.get("music"):
        corpus = load_music_corpus(data_meta["dataset"], data_meta["val_fraction"], data_meta.get("tokenizer"))
        return "".join(p + SEPARATOR for p in corpus.test)
    return split_text(load_text_corpus(data_meta["dataset"], data_dir).text, data_meta["val_fraction"])[1]


class LMMethod(Method):
    family = "lm"
    Config = LMConfig
    modality = "text"
    exported = "model"
    uses_ema = False
    self_evaluates = True

    @classmethod
    def prepare_data(cls, cfg, data_dir, run_dir, resume, accelerator) -> TextData:
        d, tcfg, mcfg = cfg.data, cfg.train, LMConfig.model_validate(cfg.model)
        if d.vocab_size is not None and d.tokenizer != "bpe":
            raise UserError(f"data.vocab_size applies to the bpe tokenizer only; this run uses data.tokenizer={d.tokenizer}. "
                            "Fix: drop data.vocab_size, or set data.tokenizer=bpe.")
        run_dir = Path(run_dir)
        tok_path = run_dir / TOKENIZER_FILE
        with accelerator.main_process_first():  # rank 0 learns and saves the tokenizer; the others read it
            train_text, val_text, report, extra = _corpus_texts(d, data_dir)
            if resume or not accelerator.is_main_process:
                tokenizer = load_tokenizer(tok_path)
            else:
                tokenizer = train_tokenizer(d.tokenizer, train_text, d.vocab_size)
                run_dir.mkdir(parents=True, exist_ok=True)
                tmp = tok_path.with_name(f".{TOKENIZER_FILE}.tmp")
                tokenizer.save(tmp)
                tmp.replace(tok_path)
        device = accelerator.device
        train_ids = tokenizer.encode_tensor(train_text).to(device)
        val_ids = tokenizer.encode_tensor(val_text).to(device)
        if len(train_ids) <= mcfg.block_size + 1:
            raise UserError(f"The training text has {len(train_ids)} tokens, not more than model.block_size "
                            f"({mcfg.block_size}) + 1. Fix: lower model.block_size or use a larger corpus.")
        if tcfg.eval_every and len(val_ids) < 2:
            raise UserError(f"The validation text has {len(val_ids)} tokens: nothing to evaluate. "
                            "Fix: raise data.val_fraction (e.g. 0.1), or drop train.eval_every.")
        meta = {"dataset": d.dataset, "tokenizer": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                "unit": tokenizer.unit, "val_fraction": d.val_fraction,
                "train_tokens": len(train_ids), "val_tokens": len(val_ids), "corpus": report, **extra}
        return TextData(tokenizer, train_ids, val_ids, mcfg.block_size, tcfg.batch_size, tcfg.grad_accum,
                        accelerator.num_processes, tcfg.eval_samples, meta)

    @classmethod
    def spec_from_meta(cls, data_meta: dict) -> TextSpec:
        return TextSpec(int(data_meta["vocab_size"]))

    @classmethod
    def build_exported(cls, cfg: LMConfig, spec: TextSpec) -> torch.nn.Module:
        if cfg.architecture == "gpt":
            return GPT(GPTConfig(vocab_size=spec.vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                                 n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias))
        return RNNLM(RNNConfig(vocab_size=spec.vocab_size, cell=cfg.architecture, n_layer=cfg.n_layer,
                               hidden=cfg.hidden, dropout=cfg.dropout))

    @classmethod
    def onnx_graphs(cls, net) -> dict[str, OnnxGraph]:
        """GPT: one decoder graph with its KV cache in and out (Optimum's layout; past length 0 is the prefill).
        RNN: one graph with the recurrent state in and out. int8 for the GPT: dynamic (int8 weights, activations
        quantized on the fly), the usual choice for language models, whose activations vary too much to
        calibrate once."""
        ids = torch.zeros(2, 3, dtype=torch.long)
        if isinstance(net, GPT):
            c = net.config
            past = {f"past_key_values.{i}.{kv}": torch.zeros(2, c.n_head, 4, c.n_embd // c.n_head)
                    for i in range(c.n_layer) for kv in ("key", "value")}
            inputs = {"input_ids": ids, "position_ids": torch.arange(4, 7).expand(2, 3),
                      "attention_mask": torch.ones(2, 7, dtype=torch.long), **past}
            dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "position_ids": {0: "batch", 1: "sequence"},
                       "attention_mask": {0: "batch", 1: "past_sequence"}, **{k: {0: "batch", 2: "past"} for k in past}}
            outputs = ["logits", *(f"present.{i}.{kv}" for i in range(c.n_layer) for kv in ("key", "value"))]
            return {"decoder": OnnxGraph(GPTWithPast(net), inputs, outputs, dynamic, may_be_empty=("past",), int8="dynamic")}
        c = net.config
        state = {"h": torch.zeros(c.n_layer, 2, c.hidden)}
        if c.cell == "lstm":
            state["c"] = torch.zeros(c.n_layer, 2, c.hidden)
        dynamic = {"input_ids": {0: "batch", 1: "sequence"}, **{k: {1: "batch"} for k in state}}
        # no int8 for the RNN: onnxruntime's dynamic quantization leaves the LSTM op in fp32 and the head is tied
        # to the embedding, so nothing shrank or sped up (benchmarks/RESULTS.md)
        return {"rnn": OnnxGraph(RNNWithState(net), {"input_ids": ids, **state}, ["logits", *(f"{k}_out" for k in state)],
                                 dynamic, int8=None)}

    @classmethod
    def runtime_config(cls, net) -> dict:
        c = net.config
        if isinstance(net, GPT):
            return {"architecture": "gpt", "n_layer": c.n_layer, "n_head": c.n_head, "head_dim": c.n_embd // c.n_head,
                    "block_size": c.block_size, "vocab_size": c.vocab_size}
        return {"architecture": c.cell, "n_layer": c.n_layer, "hidden": c.hidden, "vocab_size": c.vocab_size}

    def setup(self, train_cfg) -> None:
        cfg = self.cfg
        net = self.build_exported(cfg, self.spec)
        groups = net.optim_groups(cfg.weight_decay)
        self.optimizers = {}
        if cfg.optimizer == "muon":  # the blocks' weight matrices to Muon; embeddings (and the tied head) stay on AdamW
            embeddings = {id(m.weight) for m in net.modules() if isinstance(m, torch.nn.Embedding)}
            hidden = [p for p in groups[0]["params"] if p.dim() == 2 and id(p) not in embeddings]
            groups[0]["params"] = [p for p in groups[0]["params"] if p.dim() != 2 or id(p) in embeddings]
            self.optimizers["muon"] = Muon(hidden, lr=train_cfg.lr, weight_decay=cfg.weight_decay,
                                           ns_dtype=torch.bfloat16 if fast_bf16_matmul() else torch.float32)
        self.optimizers["model"] = torch.optim.AdamW(groups, lr=train_cfg.lr, betas=(train_cfg.beta1, train_cfg.beta2),
                                                     fused=True)
        # the run's length is read at each step: a budgeted run (train.budget_minutes) sets it after its first steps
        self.schedulers = {k: torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, cfg.warmup_steps, cfg.decay_steps or self.total_steps or 1, cfg.min_lr_ratio))
            for k, opt in self.optimizers.items()}
        self.networks = {"model": net}

    def training_step(self, accelerator, micro_batches, rng):
        net = self.networks["model"]
        # Dropout draws from the global generator: seed it from the step's generator, so the masks are a
        # function of (seed, step, rank) like every other random choice.
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=rng)))
        k = len(micro_batches)
        losses = []
        for i, (x, y) in enumerate(micro_batches):
            with accelerator.no_sync(net) if i < k - 1 else nullcontext():  # all-reduce on the last only
                loss = net(x, y)[1]
                accelerator.backward(loss / k)
            losses.append(loss.detach())
        if self.cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(net.parameters(), self.cfg.grad_clip)
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        for schedule in self.schedulers.values():
            schedule.step()
        return {"loss": torch.stack(losses).mean().float()}

    @classmethod
    def write_samples(cls, net, data: TextData, path, seed, accelerator) -> Path:
        prompt = data.sample_prompt()
        unk = data.tokenizer.unk_id
        ids = generate_ids(net, [prompt], SAMPLE_TOKENS, temperature=0.8,
                           generator=torch.Generator().manual_seed(seed), banned_ids=[] if unk is None else [unk])[0]
        out = Path(path).with_suffix(".txt")
        out.write_text(data.tokenizer.decode(prompt + ids), encoding="utf-8")
        return out

    @classmethod
    def validation_score(cls, net, data: TextData, accelerator) -> dict[str, float]:
        losses = window_losses(net, data.val_x, data.val_y, data.batch, accelerator.autocast)
        loss = float(losses.double().mean()) if len(losses) else float("nan")
        return {"eval_score": loss, "val_loss": loss, "val_loss_se": standard_error(losses, data.val_population),
                "val_windows": len(losses), "val_windows_of": data.val_population}


@torch.no_grad()
def window_losses(net, x: torch.Tensor, y: torch.Tensor, batch_size: int, autocast=nullcontext) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) of `net` on each window (x[i], y[i]), in eval mode; fp32."""
    import torch.nn.functional as F

    was_training = net.training
    net.eval()
    out = []
    try:
        for i in range(0, len(x), batch_size):
            with autocast():
                logits = net(x[i:i + batch_size])[0]
            nll = F.cross_entropy(logits.float().flatten(0, 1), y[i:i + batch_size].flatten(), reduction="none")
            out.append(nll.view(len(logits), -1).mean(1))
    finally:
        net.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)

