"""WaveNet (van den Oord et al. 2016) over 8-bit mu-law ids, with fast generation (Paine et al. 2016).

Read top to bottom: config -> layer -> network (training forward, one generation step) -> generation loops.

The network maps mu-law ids x[0..T-1] to logits whose position t is the distribution of x[t+1]: an
embedding of the ids (a 1x1 causal convolution on their one-hot code), then `cycles` repetitions of
`layers_per_cycle` dilated causal convolutions (dilations 1, 2, ..., 2^(layers_per_cycle-1)), each
followed by the gated unit tanh(f) * sigmoid(g), a 1x1 residual path back into the stream and a 1x1 skip
path to the output; the summed skips go through ReLU-1x1-ReLU-1x1 to 256 logits. Global conditioning
adds a learnt vector per digit label and per speaker to every layer's gate pre-activations (section 2.5
of the paper), so one network speaks every digit in every voice.

Position conditioning (`position_buckets`, an addition to the paper): the clip is cut into that many equal
spans and each span adds its own learnt vector to the gates, like the labels do. A small receptive field
(64 ms for 2 cycles of 8 layers at 8 kHz) cannot tell the silence before a word from the silence after it;
knowing roughly where in the clip it is, the network speaks once, where the training words sit (the data
centres them), and stays quiet around it.

Generation starts from silence: before the first sample the network has "heard" silence forever (training
windows are padded on the left with silence the same way), so a clip starts the way training clips do.

Fast generation keeps, for every layer, a queue of its last (kernel_size - 1) * dilation inputs. A new
sample then costs one step per layer: a matrix product of [the queued inputs dilation steps back, the
current input] with the layer's weights, the gate, the residual product; the skips of all layers are one
product at the end. `step` is written over explicit queue tensors (each (B, (k-1)*d, C), shifted by one
each step), so the same function is exported (`WaveNetStep`) as one ONNX graph whose queues, packed into one
state tensor, go in and come out. `slow_generate` recomputes the full convolution over the receptive field
for every sample: the reference the tests and the speed benchmark compare with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from genforge.audio.mulaw import mulaw_encode
from genforge.errors import UserError


@dataclass
class WaveNetConfig:
    residual_channels: int = 64
    skip_channels: int = 128
    layers_per_cycle: int = 8
    cycles: int = 2
    kernel_size: int = 2
    quantization: int = 256  # mu-law channels: the softmax's size
    num_classes: int = 0  # global conditioning on the label (digit); 0 = none
    num_speakers: int = 0  # ... and on the speaker; 0 = none
    position_buckets: int = 0  # ... and on the position in the clip, in this many spans of `length`; 0 = none
    # not used by the network; kept with it so generation and export know what the ids mean
    sample_rate: int = 8000
    length: int = 8192  # samples of a generated clip by default
    classes: tuple[str, ...] = field(default_factory=tuple)
    speakers: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        for key in ("residual_channels", "skip_channels", "layers_per_cycle", "cycles", "quantization", "length"):
            if getattr(self, key) < 1:
                raise UserError(f"WaveNet {key} must be at least 1; got {getattr(self, key)}. Fix: set model.{key} >= 1.")
        if self.kernel_size < 2:
            raise UserError(f"WaveNet kernel_size must be at least 2 (a causal convolution needs a past tap); got "
                            f"{self.kernel_size}. Fix: set model.kernel_size=2.")

    @property
    def dilations(self) -> list[int]:
        return [2 ** i for i in range(self.layers_per_cycle)] * self.cycles

    @property
    def receptive_field(self) -> int:
        """Samples one output sees: its own input and (k - 1) * sum(dilations) before it."""
        return (self.kernel_size - 1) * sum(self.dilations) + 1


class ResidualLayer(nn.Module):
    """Dilated causal convolution -> gate -> residual 1x1 (absent in the last layer) and skip 1x1."""

    def __init__(self, c: WaveNetConfig, dilation: int, last: bool):
        super().__init__()
        C = c.residual_channels
        self.dilation = dilation
        self.conv = nn.Conv1d(C, 2 * C, c.kernel_size, dilation=dilation)  # filter and gate halves
        self.res = None if last else nn.Conv1d(C, C, 1)  # the last layer's would feed nothing
        self.skip = nn.Conv1d(C, c.skip_channels, 1)


class WaveNet(nn.Module):
    def __init__(self, config: WaveNetConfig):
        super().__init__()
        c = self.config = config
        C = c.residual_channels
        self.embed = nn.Embedding(c.quantization, C)
        dil = c.dilations
        self.layers = nn.ModuleList(ResidualLayer(c, d, i == len(dil) - 1) for i, d in enumerate(dil))
        # one vector per label / speaker for every layer's gate (n_layers * 2C), zero at the start
        self.label_embed = nn.Embedding(c.num_classes, len(dil) * 2 * C) if c.num_classes else None
        self.speaker_embed = nn.Embedding(c.num_speakers, len(dil) * 2 * C) if c.num_speakers else None
        self.position_embed = nn.Embedding(c.position_buckets, len(dil) * 2 * C) if c.position_buckets else None
        for e in (self.label_embed, self.speaker_embed, self.position_embed):
            if e is not None:
                nn.init.zeros_(e.weight)
        self.head1 = nn.Conv1d(c.skip_channels, c.skip_channels, 1)
        self.head2 = nn.Conv1d(c.skip_channels, c.quantization, 1)

    @property
    def receptive_field(self) -> int:
        return self.config.receptive_field

    @property
    def silence_id(self) -> int:
        """The id of 0.0, which the data's silence (and its padding) encodes to."""
        return int(mulaw_encode(0.0, self.config.quantization))

    def buckets(self, position: torch.Tensor) -> torch.Tensor:
        """The position span of clip positions (any shape; before the clip counts as its start, after it as its end)."""
        c = self.config
        return position.clamp(0, c.length - 1) * c.position_buckets // c.length

    def conditioning(self, labels: torch.Tensor | None, speakers: torch.Tensor | None) -> torch.Tensor | None:
        """Per-clip additions to each layer's gate pre-activations from its label and speaker, (B, n_layers, 2C),
        or None for an unconditional model."""
        c = self.config
        out = None
        for emb, idx, name, n in ((self.label_embed, labels, "labels", c.num_classes),
                                  (self.speaker_embed, speakers, "speakers", c.num_speakers)):
            if emb is None:
                continue
            if idx is None:
                raise UserError(f"This WaveNet is conditioned on {name} ({n} of them): give one per clip.")
            v = emb(idx)
            out = v if out is None else out + v
        return None if out is None else out.view(-1, len(self.layers), 2 * c.residual_channels)

    # -- training / reference: the whole sequence at once ------------------------------------------------------
    def forward(self, ids: torch.Tensor, labels: torch.Tensor | None = None, speakers: torch.Tensor | None = None,
                start: torch.Tensor | int = 0, pad: bool = True, last: int | None = None) -> torch.Tensor:
        """Logits (B, quantization, T') for ids (B, T); position t predicts sample t + 1.

        `start`: the clip position of ids[:, 0] (an int, or one per row), for position conditioning. pad=True:
        causal (left zero-padded) convolutions, T' = T. pad=False: valid convolutions only, so every output has
        its full receptive field, T' = T - receptive_field + 1 (what training scores). `last`: only the last
        `last` positions go through the skip paths and the head."""
        C, T = self.config.residual_channels, ids.shape[1]
        x = self.embed(ids).transpose(1, 2)  # (B, C, T)
        cond = self.conditioning(labels, speakers)
        spans = None
        if self.position_embed is not None:  # (B, T) span of each input position
            start = torch.as_tensor(start, device=ids.device).reshape(-1, 1)
            spans = self.buckets(start + torch.arange(T, device=ids.device)).expand(len(ids), -1)
        n_out = T if pad else T - self.receptive_field + 1
        if n_out < 1:
            raise UserError(f"WaveNet needs at least {self.receptive_field} samples without padding; got {T}.")
        n_out = min(n_out, last) if last else n_out
        skip = 0
        for i, layer in enumerate(self.layers):
            h = F.pad(x, ((layer.conv.kernel_size[0] - 1) * layer.dilation, 0)) if pad else x
            a = layer.conv(h)
            if cond is not None:
                a = a + cond[:, i, :, None]
            if spans is not None:  # this layer's slice of the position vectors, at the positions a covers
                w = self.position_embed.weight[:, i * 2 * C:(i + 1) * 2 * C]
                a = a + F.embedding(spans[:, -a.shape[-1]:], w).transpose(1, 2)
            z = torch.tanh(a[:, :C]) * torch.sigmoid(a[:, C:])
            skip = skip + layer.skip(z[..., -n_out:])
            if layer.res is not None:
                x = x[..., -z.shape[-1]:] + layer.res(z)
        return self.head2(F.relu(self.head1(F.relu(skip))))

    # -- fast generation: one sample per step ----------------------------------------------------------------
    def queue_shapes(self, batch: int) -> list[tuple[int, int, int]]:
        k, C = self.config.kernel_size, self.config.residual_channels
        return [(batch, (k - 1) * layer.dilation, C) for layer in self.layers]

    def step_weights(self) -> dict:
        """The weights in the shapes `step` multiplies by, gathered once per generation (reading them through the
        module tree costs more per sample than the arithmetic). Each layer's k taps become one (2C, k*C) matrix
        over [oldest tap, ..., current input]; the per-layer skip 1x1s become one matrix over all layers' gate
        outputs, so the skips cost one product per step instead of one per layer."""
        layers = []
        for layer in self.layers:
            w = layer.conv.weight  # (2C, C, k): tap j multiplies x[t - (k - 1 - j) * d]
            layers.append((w.permute(0, 2, 1).reshape(w.shape[0], -1).t().contiguous(), layer.conv.bias,
                           None if layer.res is None else layer.res.weight[:, :, 0].t().contiguous(),
                           None if layer.res is None else layer.res.bias))
        skip_w = torch.cat([layer.skip.weight[:, :, 0] for layer in self.layers], 1).t().contiguous()  # (n_layers*C, S)
        skip_b = torch.stack([layer.skip.bias for layer in self.layers]).sum(0)
        head = (self.head1.weight[:, :, 0].t().contiguous(), self.head1.bias,
                self.head2.weight[:, :, 0].t().contiguous(), self.head2.bias)
        return {"layers": layers, "skip": (skip_w, skip_b), "embed": self.embed.weight, "head": head}

    def gate_bias(self, weights: dict, labels, speakers, batch: int, position=None) -> list[torch.Tensor]:
        """Each layer's gate bias plus the clip's conditioning at `position` (B,), (B, 2C) per layer: computed once
        per clip, and again when the position enters a new span."""
        cond = self.conditioning(labels, speakers)
        if self.position_embed is not None:
            if position is None:
                raise UserError("This WaveNet is conditioned on the position in the clip: give the step's position.")
            p = self.position_embed(self.buckets(position)).view(-1, len(self.layers), 2 * self.config.residual_channels)
            cond = p if cond is None else cond + p
        biases = [b.expand(batch, -1) for _, b, _, _ in weights["layers"]]
        return biases if cond is None else [b + cond[:, i] for i, b in enumerate(biases)]

    def step(self, ids: torch.Tensor, bias: list[torch.Tensor], queues: list[torch.Tensor],
             weights: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, quantization) of the next sample after ids (B,), and the queues shifted by one.

        queues[i]: (B, (k-1)*d_i, C), layer i's inputs at t - (k-1)*d_i .. t - 1 (oldest first); its taps are
        every d_i-th entry from the oldest. `bias` from `gate_bias`."""
        C = self.config.residual_channels
        x = F.embedding(ids, weights["embed"])  # (B, C)
        zs, new = [], []
        for i, ((w, _, wr, br), q) in enumerate(zip(weights["layers"], queues)):
            d = self.layers[i].dilation
            taps = torch.cat([q[:, ::d].flatten(1), x], 1)  # (B, k*C): x[t - (k-1)d], ..., x[t - d], x[t]
            a = torch.addmm(bias[i], taps, w)
            zs.append(torch.tanh(a[:, :C]) * torch.sigmoid(a[:, C:]))
            new.append(torch.cat([q[:, 1:], x[:, None]], 1))
            if wr is not None:
                x = torch.addmm(br, zs[-1], wr) + x
        skip_w, skip_b = weights["skip"]
        h1w, h1b, h2w, h2b = weights["head"]
        s = F.relu(torch.addmm(skip_b, torch.cat(zs, 1), skip_w))
        return torch.addmm(h2b, F.relu(torch.addmm(h1b, s, h1w)), h2w), new

    def silence_queues(self, bias: list[torch.Tensor], weights: dict) -> list[torch.Tensor]:
        """The queues after an endless past of silence (what training windows see before a clip starts).

        Under a constant input every layer's input is constant too, so each queue holds one value repeated.
        One step with every queue filled with the current estimates makes layer i's input exact once layers
        0..i-1's are: n_layers steps give all of them (instead of receptive_field steps of silence)."""
        B, like = bias[0].shape[0], bias[0]
        silence = torch.full((B,), self.silence_id, dtype=torch.long, device=like.device)
        queues = [torch.zeros(s, dtype=like.dtype, device=like.device) for s in self.queue_shapes(B)]
        for _ in self.layers:
            _, new = self.step(silence, bias, queues, weights)
            queues = [q[:, -1:].expand_as(q).contiguous() for q in new]
        return queues


class WaveNetStep(nn.Module):
    """`WaveNet.step` as one module for ONNX export: (ids, [labels], [speakers], [position], state) -> out.

    The queues travel packed in one float tensor, state (B, sum of queue sizes): layer i's queue flattened,
    one layer after another. The output is ONE tensor (B, quantization + state size): the logits, then the
    new state; a runtime splits it at `quantization` (one output keeps the graph's interface that of every
    other family's: one array back per call). The gate biases are recomputed from the labels inside the
    graph (a gather per step), so a runtime passes only ids, the clip's labels, the position and the state."""

    def __init__(self, net: WaveNet):
        super().__init__()
        self.net = net

    def forward(self, ids, *rest):
        c, net = self.net.config, self.net
        rest = list(rest)
        labels = rest.pop(0) if c.num_classes else None
        speakers = rest.pop(0) if c.num_speakers else None
        position = rest.pop(0) if c.position_buckets else None
        state = rest.pop(0)
        weights = net.step_weights()
        bias = net.gate_bias(weights, labels, speakers, ids.shape[0], position)
        queues, offset = [], 0
        for _, n, C in net.queue_shapes(1):
            queues.append(state[:, offset:offset + n * C].reshape(-1, n, C))
            offset += n * C
        logits, new = net.step(ids, bias, queues, weights)
        return torch.cat([logits, *(q.flatten(1) for q in new)], 1)


# -- sampling --------------------------------------------------------------------------------------------------
def select_ids(logits: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
    """One id per row from logits (B, Q) and one uniform number per row u (B,): the inverse CDF of
    softmax(logits / temperature); the argmax at temperature 0. runtime/wavenet.py does the same in numpy."""
    if temperature == 0:
        return logits.argmax(-1)
    cdf = torch.softmax(logits.float() / temperature, -1).cumsum(-1)
    return (cdf < u[:, None] * cdf[:, -1:]).sum(-1).clamp_max(logits.shape[-1] - 1)


def span_starts(config: WaveNetConfig, length: int) -> set[int]:
    """The steps at which the position conditioning changes (step t reads position t - 1)."""
    if not config.position_buckets:
        return set()
    nb, n = config.position_buckets, config.length
    spans = [min(max(p, 0), n - 1) * nb // n for p in range(-1, length - 1)]  # as WaveNet.buckets
    return {t for t in range(1, length) if spans[t] != spans[t - 1]}


@torch.no_grad()
def fast_generate(net: WaveNet, u: torch.Tensor, labels: torch.Tensor | None = None,
                  speakers: torch.Tensor | None = None, temperature: float = 1.0, progress=None) -> torch.Tensor:
    """Ids (B, L) for uniforms u (B, L) (one per sample drawn), with the per-layer queues: one step per sample.
    Step t reads sample t - 1 (silence before the clip) at clip position t - 1 and draws sample t."""
    B, L = u.shape
    weights = net.step_weights()
    positioned = net.config.position_buckets > 0

    def bias_at(position: int):
        pos = torch.full((B,), position, dtype=torch.long, device=u.device) if positioned else None
        return net.gate_bias(weights, labels, speakers, B, pos)

    bias = bias_at(-1)
    queues = net.silence_queues(bias, weights)
    changes = span_starts(net.config, L)
    ids = torch.full((B,), net.silence_id, dtype=torch.long, device=u.device)
    out = torch.empty(B, L, dtype=torch.long, device=u.device)
    for t in range(L):
        if t in changes:
            bias = bias_at(t - 1)
        logits, queues = net.step(ids, bias, queues, weights)
        ids = select_ids(logits, u[:, t], temperature)
        out[:, t] = ids
        if progress is not None and ((t + 1) % 1024 == 0 or t + 1 == L):
            progress(t + 1, L)
    return out


@torch.no_grad()
def slow_generate(net: WaveNet, u: torch.Tensor, labels: torch.Tensor | None = None,
                  speakers: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    """The naive reference: every sample recomputes the whole network over the last receptive_field ids
    (silence before the clip), as a plain convolution. Same draws, same ids as `fast_generate`."""
    B, L = u.shape
    R = net.receptive_field
    seq = torch.full((B, R + L), net.silence_id, dtype=torch.long, device=u.device)
    for t in range(L):
        logits = net(seq[:, t:t + R], labels, speakers, start=t - R, pad=False)[:, :, -1]
        seq[:, R + t] = select_ids(logits, u[:, t], temperature)
    return seq[:, R:]
