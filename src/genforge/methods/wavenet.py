"""WaveNet training objective: next-sample cross-entropy over 8-bit mu-law ids, conditioned on digit and speaker.

Data: an audio dataset (`data.dataset`: fsdd or folder:PATH) read by `genforge.data.audio` at `data.audio`'s
rate and length (clips trimmed of silence and centred), mu-law encoded, and padded on the left with
receptive_field samples of silence, the past that generation starts from. Ids live in memory on the training
device as uint8. A micro-batch is `batch_size` random windows of receptive_field + `window` samples, each
with its clip's digit, speaker and clip position, drawn with the step's generator (so resume is exact): the
loss is the cross-entropy of the last `window` samples only, the ones whose predictions see a full receptive
field. Windows are drawn uniformly over the (clip, start) pairs whose scored samples overlap the clip's
sound: the long silences around a word are seen at its edges, not trained on for their own sake.

Optimisation: Adam, linear warm-up then cosine decay to `min_lr_ratio` (methods/lm.py's schedule), gradient
clipping, the loop's EMA of the weights for generation.

In-training evaluation (train.eval_every): the held-out negative log-likelihood in bits per sample, over
`train.eval_samples` windows evenly strided across the FSDD test split (folder datasets: every k-th clip is
held out, `data.val_fraction` of them). Each window scores `window` consecutive samples with a full receptive
field before them; only samples inside the clip's sound count (from the first to the last sample whose id is
not silence), so the zero padding around a word, which costs almost nothing to predict, does not flatter
the figure.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from genforge.audio.mulaw import mulaw_decode, mulaw_encode
from genforge.data.dataset import evenly_spaced
from genforge.errors import UserError
from genforge.methods.base import Method, MethodConfig, OnnxGraph, SampleOption
from genforge.methods.lm import lr_factor, standard_error
from genforge.models.wavenet import WaveNet, WaveNetConfig, WaveNetStep, fast_generate

QUANTIZATION = 256  # 8-bit mu-law


@dataclass(frozen=True)
class WaveSpec:
    """What a WaveNet needs to know about the data: its labels, voices, rate and clip length."""

    classes: tuple[str, ...]
    speakers: tuple[str, ...]
    sample_rate: int
    length: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class WaveNetMethodConfig(MethodConfig):
    residual_channels: int = Field(64, ge=1, description="channels of the residual stream (and of each gate)")
    skip_channels: int = Field(128, ge=1, description="channels of the skip paths and the output head")
    layers_per_cycle: int = Field(8, ge=1, le=16, description="dilated layers per cycle: dilations 1, 2, ..., 2^(n-1)")
    cycles: int = Field(2, ge=1, description="repetitions of the dilation cycle")
    kernel_size: int = Field(2, ge=2, le=8, description="taps of each dilated causal convolution")
    conditional: bool = Field(True, description="condition on the label (the digit) when the data has classes")
    speaker_conditional: bool = Field(True, description="condition on the speaker when the data names speakers")
    position_buckets: int = Field(32, ge=0, description="condition on the position in the clip, in this many spans "
                                  "(0: off); lets a short receptive field tell the silence before a word from the "
                                  "silence after it")
    window: int = Field(1024, ge=1, description="samples scored per training window; each window also holds the "
                        "receptive_field samples of context before them")
    grad_clip: float = Field(1.0, ge=0, description="clip the global gradient norm to this; 0 = off")
    warmup_steps: int = Field(200, ge=0, description="linear learning-rate warm-up")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decay ends at this fraction of train.lr")
    decay_steps: int | None = Field(None, ge=1, description="step where the cosine reaches its floor; None = the run's length")


def _sound_spans(ids: np.ndarray, silence: int) -> tuple[np.ndarray, np.ndarray]:
    """[first, last + 1) of the samples that are not silence, per clip; (0, 0) for an all-silent clip."""
    sound = ids != silence
    has = sound.any(1)
    first = np.where(has, sound.argmax(1), 0)
    end = np.where(has, ids.shape[1] - sound[:, ::-1].argmax(1), 0)
    return first.astype(np.int64), end.astype(np.int64)


def _padded_ids(clips: np.ndarray, context: int, device) -> torch.Tensor:
    """(N, context + L) uint8 mu-law ids: `context` samples of silence, then the clip."""
    ids = mulaw_encode(clips, QUANTIZATION).astype(np.uint8)
    silence = np.full((len(ids), context), mulaw_encode(0.0, QUANTIZATION), np.uint8)
    return torch.from_numpy(np.concatenate([silence, ids], 1)).to(device)


class AudioWindows:
    """Mu-law ids of the training clips on the training device, cut into random scored windows; and the
    held-out windows `validation_score` scores."""

    unit = "samples"

    def __init__(self, ids: torch.Tensor, labels: torch.Tensor, speakers: torch.Tensor | None, spans, context: int,
                 window: int, batch: int, accum: int, world: int, spec: WaveSpec, meta: dict, val: dict | None):
        self.ids, self.labels, self.speakers = ids, labels, speakers
        self.context, self.window, self.batch, self.accum = context, window, batch, accum
        self.spec, self.meta, self.val = spec, meta, val
        first, end = spans
        length = ids.shape[1] - context
        # window starts s (clip coordinates of the first scored sample) whose scored samples s..s+window-1 overlap
        # the sound [first, end) and stay inside the clip
        lo = np.maximum(0, first - window + 1)
        hi = np.minimum(end - 1, length - window)
        counts = np.where(end > first, np.maximum(hi - lo + 1, 0), 0)
        if counts.sum() == 0:
            raise UserError("Every training clip is silent: there is nothing to learn. Fix: check the recordings.")
        self.lo = torch.from_numpy(lo)
        self.cum = torch.from_numpy(np.cumsum(counts))
        self.counts = torch.from_numpy(counts)
        self.items_per_step = batch * window * accum * world
        self.steps_per_epoch = max(1, int((end - first).clip(0).sum()) // self.items_per_step)
        self.span = torch.arange(context + window, device=ids.device)

    def micro_batches(self, step: int, rng: torch.Generator) -> list[tuple]:
        """[(inputs (B, context + window - 1), targets (B, window), labels, speakers, clip position of inputs[:, 0])]."""
        out = []
        for _ in range(self.accum):
            r = torch.randint(int(self.cum[-1]), (self.batch,), generator=rng)
            clip = torch.searchsorted(self.cum, r, right=True)
            start = self.lo[clip] + r - (self.cum[clip] - self.counts[clip])  # scored samples' first, clip coords
            dev = self.ids.device
            w = self.ids[clip.to(dev)[:, None], start.to(dev)[:, None] + self.span].long()  # padded coords: +context
            out.append((w[:, :-1], w[:, self.context:], self.labels[clip.to(dev)],
                        None if self.speakers is None else self.speakers[clip.to(dev)], (start - self.context).to(dev)))
        return out


def _validation_windows(clips: np.ndarray, labels, speakers, context: int, window: int, max_windows: int,
                        device) -> dict:
    """The held-out windows: every clip's sound [first, end) cut into consecutive `window`-sample blocks (the last
    block of a clip slides back to stay inside it, and masks what the block before it scored), evenly strided
    down to `max_windows`. Ids on `device`; the mask says which scored samples count."""
    ids = _padded_ids(clips, context, "cpu")
    first, end = _sound_spans(ids[:, context:].numpy(), int(mulaw_encode(0.0, QUANTIZATION)))
    length = clips.shape[1]
    rows, starts, masks = [], [], []
    for i in range(len(clips)):
        for p in range(int(first[i]), int(end[i]), window):
            s = min(p, length - window)
            pos = s + np.arange(window)
            rows.append(i)
            starts.append(s)
            masks.append((pos >= p) & (pos < end[i]))
    if not rows:
        raise UserError("Every held-out clip is silent: there is nothing to score. Fix: check the recordings, or "
                        "drop train.eval_every.")
    pick = evenly_spaced(len(rows), max_windows).numpy()
    rows_t = torch.tensor(np.asarray(rows, np.int64)[pick])
    start_t = torch.tensor(np.asarray(starts, np.int64)[pick])
    w = ids[rows_t[:, None], start_t[:, None] + torch.arange(context + window)]
    return {"ids": w.to(device), "mask": torch.from_numpy(np.stack(masks)[pick]).to(device),
            "labels": torch.as_tensor(labels)[rows_t].to(device),
            "speakers": None if speakers is None else torch.as_tensor(speakers)[rows_t].to(device),
            "start": (start_t - context).to(device), "population": len(rows)}


class WaveNetMethod(Method):
    family = "wavenet"
    Config = WaveNetMethodConfig
    modality = "audio"
    exported = "model"
    self_evaluates = True
    sample_options = {
        "temperature": SampleOption(float, 1.0, 0.0, 2.0, "divides the logits before sampling each sample; 0 = the "
                                                          "most likely id every time (usually silence)"),
    }
    probe_draw = {"length": 512}  # the precision probe times 512 steps, not a whole 8,192-sample clip

    # -- data --------------------------------------------------------------------------------------------------
    @staticmethod
    def _net_config(cfg: WaveNetMethodConfig, spec: WaveSpec) -> WaveNetConfig:
        return WaveNetConfig(
            residual_channels=cfg.residual_channels, skip_channels=cfg.skip_channels,
            layers_per_cycle=cfg.layers_per_cycle, cycles=cfg.cycles, kernel_size=cfg.kernel_size,
            quantization=QUANTIZATION, num_classes=len(spec.classes) if cfg.conditional else 0,
            num_speakers=len(spec.speakers) if cfg.speaker_conditional else 0, position_buckets=cfg.position_buckets,
            sample_rate=spec.sample_rate, length=spec.length, classes=tuple(spec.classes), speakers=tuple(spec.speakers))

    @classmethod
    def prepare_data(cls, cfg, data_dir, run_dir, resume, accelerator) -> AudioWindows:
        from genforge.data.audio import is_audio_dataset, load_audio_dataset

        d, tcfg, mcfg = cfg.data, cfg.train, cls.Config.model_validate(cfg.model)
        if not is_audio_dataset(d.dataset):
            raise UserError(f"WaveNet trains on audio; '{d.dataset}' is not an audio dataset. Fix: set data.dataset "
                            "to fsdd or folder:PATH of WAV/FLAC/MP3 recordings.")
        rate, length = int(d.audio.sample_rate), int(d.audio.length)
        if mcfg.window > length:
            raise UserError(f"model.window ({mcfg.window}) is longer than a clip (data.audio.length = {length}). "
                            "Fix: lower model.window, e.g. 1024.")
        with accelerator.main_process_first():
            train = load_audio_dataset(d.dataset, data_dir, split="train", sample_rate=rate, length=length)
            test = None
            if tcfg.eval_every and not d.dataset.strip().startswith("folder:"):
                test = load_audio_dataset(d.dataset, data_dir, split="test", sample_rate=rate, length=length)
        clips = train.clips
        labels = train.labels if train.labels is not None else np.zeros(len(clips), np.int64)
        speakers = train.speakers
        held_out, k = None, 0
        if tcfg.eval_every and test is None:  # a folder has no test split: hold every k-th clip out
            k = max(2, round(1 / d.val_fraction)) if d.val_fraction > 0 else 0
            if not k or len(clips) < 2:
                raise UserError("train.eval_every needs held-out clips, and a folder dataset has no test split: "
                                "raise data.val_fraction (e.g. 0.1) and give at least 2 clips, or drop train.eval_every.")
            held_out = np.arange(len(clips)) % k == k - 1
            val_clips, val_labels = clips[held_out], labels[held_out]
            val_speakers = None if speakers is None else speakers[held_out]
            clips, labels = clips[~held_out], labels[~held_out]
            speakers = None if speakers is None else speakers[~held_out]
        elif test is not None:
            val_clips, val_labels, val_speakers = test.clips, test.labels, test.speakers
        spec = WaveSpec(tuple(train.classes), tuple(train.speaker_names), rate, length)
        context = cls._net_config(mcfg, spec).receptive_field
        device = accelerator.device
        ids = _padded_ids(clips, context, device)
        spans = _sound_spans(ids[:, context:].cpu().numpy(), int(mulaw_encode(0.0, QUANTIZATION)))
        val = None
        if tcfg.eval_every:
            val = _validation_windows(val_clips, val_labels, val_speakers, context, mcfg.window, tcfg.eval_samples,
                                      device)
        meta = {"dataset": d.dataset, "codec": {"kind": "mulaw", "channels": QUANTIZATION, "sample_rate": rate,
                                                "length": length},
                "classes": list(train.classes), "speakers": list(train.speaker_names), "license": train.license,
                "sample_rate": rate, "length": length, "train_clips": len(clips),
                "val_clips": 0 if val is None else len(val_clips), "report": train.report,
                **({"held_out": f"one clip in {k} of the folder"} if held_out is not None else {})}
        return AudioWindows(ids, torch.as_tensor(labels).to(device),
                            None if speakers is None else torch.as_tensor(speakers).to(device), spans, context,
                            mcfg.window, tcfg.batch_size, tcfg.grad_accum, accelerator.num_processes, spec, meta, val)

    @classmethod
    def spec_from_meta(cls, data_meta: dict) -> WaveSpec:
        codec = data_meta.get("codec") or {}
        return WaveSpec(tuple(data_meta.get("classes") or ()), tuple(data_meta.get("speakers") or ()),
                        int(codec.get("sample_rate", data_meta.get("sample_rate", 8000))),
                        int(codec.get("length", data_meta.get("length", 8192))))

    # -- training ----------------------------------------------------------------------------------------------
    @classmethod
    def build_exported(cls, cfg: WaveNetMethodConfig, spec: WaveSpec) -> WaveNet:
        return WaveNet(cls._net_config(cfg, spec))

    def setup(self, train_cfg) -> None:
        cfg = self.cfg
        net = self.build_exported(cfg, self.spec)
        self.optimizers = {"model": torch.optim.Adam(net.parameters(), lr=train_cfg.lr,
                                                     betas=(train_cfg.beta1, train_cfg.beta2), fused=True)}
        self.schedulers = {"model": torch.optim.lr_scheduler.LambdaLR(
            self.optimizers["model"],
            lambda step: lr_factor(step, cfg.warmup_steps, cfg.decay_steps or self.total_steps or 1, cfg.min_lr_ratio))}
        self.networks = {"model": net}

    def training_step(self, accelerator, micro_batches, rng):
        net, opt = self.networks["model"], self.optimizers["model"]
        k = len(micro_batches)
        losses = []
        for i, (x, y, labels, speakers, start) in enumerate(micro_batches):
            with accelerator.no_sync(net) if i < k - 1 else nullcontext():  # all-reduce on the last only
                logits = net(x, labels, speakers, start=start, pad=False)
                loss = F.cross_entropy(logits.float(), y)
                accelerator.backward(loss / k)
            losses.append(loss.detach())
        if self.cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(net.parameters(), self.cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.schedulers["model"].step()
        return {"loss": torch.stack(losses).mean().float()}

    @classmethod
    @torch.no_grad()
    def validation_score(cls, net, data: AudioWindows, accelerator) -> dict[str, float]:
        """Held-out NLL per sample of sound: eval_score in bits (lower is better), val_loss in nats."""
        v = data.val
        was_training = net.training
        net.eval()
        sums, counts = [], []
        try:
            for i in range(0, len(v["ids"]), data.batch):
                w = v["ids"][i:i + data.batch].long()
                lab = v["labels"][i:i + data.batch]
                spk = None if v["speakers"] is None else v["speakers"][i:i + data.batch]
                with accelerator.autocast():
                    logits = net(w[:, :-1], lab, spk, start=v["start"][i:i + data.batch], pad=False)
                nll = F.cross_entropy(logits.float(), w[:, data.context:], reduction="none")
                m = v["mask"][i:i + data.batch]
                sums.append((nll * m).sum(1))
                counts.append(m.sum(1))
        finally:
            net.train(was_training)
        s, c = torch.cat(sums).double(), torch.cat(counts).double()
        nats = float(s.sum() / c.sum()) if len(s) and c.sum() > 0 else float("nan")
        per_window = s / c.clamp_min(1)
        se = standard_error(per_window, v["population"])
        return {"eval_score": nats / math.log(2), "val_bits_per_sample": nats / math.log(2), "val_loss": nats,
                "val_loss_se": se, "val_windows": len(s), "val_windows_of": v["population"], "val_samples": int(c.sum())}

    # -- generation --------------------------------------------------------------------------------------------
    # In two halves, so that a server can merge requests: `draw` takes everything random about n clips from the
    # request's generator (one uniform number per sample, and the speakers when none is asked for), `render`
    # runs the fast loop for the rows of one or many draws at once. A clip never depends on its batch.
    @classmethod
    def draw(cls, net, spec, n, labels, rng, speakers=None, length=None, **options) -> dict[str, torch.Tensor]:
        c = net.config
        drawn = {}
        if c.num_classes:
            drawn["labels"] = (torch.arange(n) % c.num_classes if labels is None else torch.as_tensor(labels)).long()
        if c.num_speakers:
            drawn["speakers"] = (torch.randint(c.num_speakers, (n,), generator=rng) if speakers is None
                                 else torch.as_tensor(speakers).long().expand(n).clone())
        drawn["u"] = torch.rand(n, int(length or c.length), generator=rng)
        return drawn

    @classmethod
    def render(cls, net, drawn, device, temperature: float = 1.0, progress=None, **options) -> torch.Tensor:
        """Waveforms (N, L) float32 in [-1, 1] (on the CPU) from `draw`'s rows."""
        labels, speakers = drawn.get("labels"), drawn.get("speakers")
        ids = fast_generate(net, drawn["u"].to(device), None if labels is None else labels.to(device),
                            None if speakers is None else speakers.to(device), float(temperature), progress)
        return torch.from_numpy(mulaw_decode(ids.cpu().numpy(), net.config.quantization))

    @classmethod
    def generate(cls, net, n, labels, speakers, rng, device, temperature: float = 1.0, length=None) -> torch.Tensor:
        """n clips as float32 (N, L) in [-1, 1]: `labels` / `speakers` (n,) index tensors or None (every label
        in turn; speakers drawn from `rng`), `length` samples (default: the training clips')."""
        return cls.render(net, cls.draw(net, None, n, labels, rng, speakers, length), device, temperature)

    @classmethod
    def sample(cls, net, spec, n, labels, rng, device, **options) -> torch.Tensor:
        return cls.render(net, cls.draw(net, spec, n, labels, rng, **options), device, **options)

    @classmethod
    def network_calls(cls, net, n: int, labels=None, **options) -> int:
        return n

    @classmethod
    def write_samples(cls, net, data: AudioWindows, path, seed, accelerator) -> Path:
        """One clip per class (one per speaker, for unlabelled data), as WAVs in the folder `path`, and their
        spectrograms as `path`.png (low frequencies at the bottom). Returns the PNG's path."""
        c = net.config
        n = c.num_classes or c.num_speakers or 4
        was_training = net.training
        net.eval()
        try:
            clips = cls.generate(net, n, None, None, torch.Generator().manual_seed(seed), accelerator.device).numpy()
        finally:
            net.train(was_training)
        names = list(c.classes) if c.num_classes else [f"{i:03d}" for i in range(n)]
        _write_wavs(clips, c.sample_rate, Path(path), names)
        return _save_spectrograms(clips, c.sample_rate, Path(path).with_suffix(".png"))

    # -- export ------------------------------------------------------------------------------------------------
    @classmethod
    def onnx_graphs(cls, net) -> dict[str, OnnxGraph]:
        """One step graph: (ids, [labels], [speakers], [position], state) -> logits and new state in one tensor
        (see models/wavenet.WaveNetStep). No int8: not measured for a loop that feeds its own outputs back."""
        c = net.config
        inputs = {"ids": torch.zeros(2, dtype=torch.long)}
        for name, on in (("labels", c.num_classes), ("speakers", c.num_speakers), ("position", c.position_buckets)):
            if on:
                inputs[name] = torch.zeros(2, dtype=torch.long)
        inputs["state"] = torch.zeros(2, cls.state_size(net))
        return {"step": OnnxGraph(WaveNetStep(net), inputs, ["logits_state"], int8=None)}

    @staticmethod
    def state_size(net) -> int:
        return sum(n * C for _, n, C in net.queue_shapes(1))

    @classmethod
    def runtime_config(cls, net) -> dict:
        c = net.config
        return {"quantization": c.quantization, "residual_channels": c.residual_channels,
                "skip_channels": c.skip_channels, "kernel_size": c.kernel_size, "dilations": c.dilations,
                "receptive_field": c.receptive_field, "queue_lengths": [n for _, n, _ in net.queue_shapes(1)],
                "state_size": cls.state_size(net), "silence_id": net.silence_id, "num_classes": c.num_classes,
                "num_speakers": c.num_speakers, "position_buckets": c.position_buckets, "sample_rate": c.sample_rate,
                "length": c.length, "classes": list(c.classes), "speakers": list(c.speakers)}


def _write_wavs(clips: np.ndarray, sample_rate: int, folder: Path, names: list[str]) -> None:
    """One 16-bit WAV per clip, named after its class, through media/ (which writes every generated file)."""
    from genforge.media.audio import write_audio

    folder.mkdir(parents=True, exist_ok=True)
    for clip, name in zip(clips, names):
        write_audio(clip, sample_rate, str(folder / f"{name}.wav"))


def _save_spectrograms(clips: np.ndarray, sample_rate: int, path: Path) -> Path:
    """A grid of log-magnitude spectrograms, one per clip, low frequencies at the bottom, 80 dB of range each."""
    from genforge.audio.codec import SpectrogramCodec
    from genforge.media.audio import save_spectrogram_grid

    codec = SpectrogramCodec(sample_rate=sample_rate, n_fft=256, hop=64, frames=clips.shape[1] // 64)
    db = codec.log_magnitude(clips[:, :codec.length]) * (20 / math.log(10))
    top = db.max(axis=(1, 2), keepdims=True)
    return save_spectrogram_grid(np.clip((db - top + 80.0) / 40.0 - 1.0, -1.0, 1.0), path, nrow=min(5, len(clips)))
