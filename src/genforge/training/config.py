"""Run configuration: pydantic models, YAML presets and `--set a.b=c` overrides.

A config is the whole recipe of a run (data, model, optimisation). Unknown keys are rejected with the
valid ones listed, so a typo never silently trains the wrong thing.
"""

from __future__ import annotations

import difflib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from genforge.errors import UserError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class AugmentConfig(Strict):
    crop_padding: int = Field(0, ge=0, description="random crop after padding by this many pixels")
    rotation: float = Field(0.0, ge=0, le=180, description="max rotation in degrees")
    scale: float = Field(0.0, ge=0, lt=1, description="max relative zoom")
    hflip: bool = Field(False, description="random horizontal flips (off for digits)")


class AudioConfig(Strict):
    """How clips become training data: their rate and length, and the spectrogram the image families train on."""

    sample_rate: int = Field(8000, ge=1000, le=48000, description="audio: clips are resampled to this rate (Hz)")
    length: int = Field(8192, ge=512, description="audio: samples per clip after trimming silence (padded or cropped); "
                                                  "8192 at 8 kHz is 1.02 s")
    n_fft: int = Field(256, ge=16, description="audio, spectrogram route: STFT size; the image has n_fft/2 rows")
    hop: int = Field(64, ge=1, description="audio, spectrogram route: STFT hop; the image has length/hop columns")

    @field_validator("hop")
    @classmethod
    def _divides(cls, v, info):
        length = info.data.get("length")
        if length is not None and length % v:
            raise ValueError(f"data.audio.length ({length}) must be a multiple of data.audio.hop ({v})")
        return v


class MusicConfig(Strict):
    """Music corpora for the language models (genforge/data/music.py)."""

    transpose: int = Field(0, ge=0, le=6, description="events: add copies of each training piece transposed by "
                                                      "-N..+N semitones (pieces whose notes would leave the MIDI "
                                                      "range are skipped); the held-out pieces stay as written")


class VideoConfig(Strict):
    """Video clips: how Moving MNIST is generated, or how a folder of clips is cut to the model's shape.

    Defaults follow Srivastava et al. 2015 (64-px canvas, 28-px digits, 3.6 px/frame, reflection at the walls);
    genforge/data/video.py says why and what differs."""

    frames: int = Field(16, ge=2, le=64, description="video: frames per clip (folders: the first this many; "
                                                     "shorter clips are dropped and counted)")
    fps: float = Field(8.0, gt=0, le=120, description="video: playback rate of the clips, frames per second")
    digits: int = Field(1, ge=1, le=3, description="moving-mnist: digits per clip; labels are the digit (1), the "
                                                   "unordered pair 'a+b' (2, 55 classes), none for 3")
    canvas: int = Field(64, ge=32, le=256, description="moving-mnist: side of the square canvas in pixels (even; "
                                                       "the digits are 28 px)")
    size: int | None = Field(None, description="video: frame side the model sees, even, 16..canvas; moving-mnist "
                                               "area-downsamples the canvas, folders resize; None = canvas")
    motion: Literal["bounce", "stochastic"] = Field(
        "bounce", description="moving-mnist: bounce = constant velocity, a digit reaching a wall stops on it "
                              "and reflects (Srivastava et al. 2015); stochastic = a new random direction and "
                              "speed at each wall (Denton & Fergus 2018)")
    speed: list[float] = Field([3.6, 3.6], description="moving-mnist: [lo, hi] px/frame at canvas scale, one speed "
                                                      "drawn per clip; 3.6 is the original's 0.1 of the 36-px range")
    clips: int = Field(60000, ge=1, description="moving-mnist: clips in one epoch (clip i is fixed by its index)")

    @field_validator("canvas")
    @classmethod
    def _even_canvas(cls, v):
        if v % 2:
            raise ValueError("data.video.canvas must be even (H.264 needs even frame sizes)")
        return v

    @field_validator("size")
    @classmethod
    def _size_fits(cls, v, info):
        canvas = info.data.get("canvas")
        if v is not None and (v % 2 or v < 16 or (canvas is not None and v > canvas)):
            raise ValueError(f"data.video.size must be None or an even side from 16 to data.video.canvas "
                             f"({canvas})")
        return v

    @field_validator("speed")
    @classmethod
    def _speed_range(cls, v, info):
        if len(v) != 2:
            raise ValueError("data.video.speed must be [lo, hi] (two numbers, px/frame)")
        lo, hi = v
        if not 0 < lo <= hi:
            raise ValueError("data.video.speed [lo, hi] needs 0 < lo <= hi")
        canvas = info.data.get("canvas")
        if canvas is not None and hi > canvas - 28:
            raise ValueError(f"data.video.speed hi ({hi}) must be at most canvas-28 ({canvas - 28}) px/frame, "
                             "one crossing of the box per frame")
        return v


class DataConfig(Strict):
    dataset: str = Field("mnist", description="images: mnist, fashion-mnist, cifar10, cifar10-jpeg, mnist-mini, folder:PATH; "
                                               "audio: fsdd, folder:PATH (of WAV/FLAC/MP3); video: moving-mnist, "
                                               "folder:PATH (of MP4/WebM/GIF/WebP/APNG clips); "
                                               "text: shakespeare, tinyshakespeare, python-stdlib, text:PATH, code:PATH; "
                                               "music (language models): folk-abc, folk-abc:COLLECTIONS, bach-chorales, "
                                               "folder:PATH (of .abc, or .mid/.musicxml with tokenizer=event)")
    image_size: int | None = Field(None, description="images: resize to this square side; None keeps the native size")
    channels: Literal[1, 3] | None = Field(None, description="images: 1 = grayscale, 3 = RGB; None keeps the native channels")
    augment: AugmentConfig = AugmentConfig()
    subset: int | None = Field(None, ge=1, description="images: train on this many images only, a random subset fixed by "
                                                      "train.seed (small-data experiments, e.g. 6000 = 10% of MNIST)")
    tokenizer: Literal["char", "byte", "bpe", "event"] = Field("char", description="text: vocabulary, learnt from the "
                                                               "training text; event: note-event words (music)")
    vocab_size: int | None = Field(None, ge=256, description="text: BPE vocabulary size (bpe only; default 2048)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="text: the last part of the corpus, held out for validation")
    audio: AudioConfig = AudioConfig()
    video: VideoConfig = VideoConfig()
    music: MusicConfig = MusicConfig()


class TrainConfig(Strict):
    batch_size: int = Field(64, ge=1, description="images per process per optimizer step (before accumulation)")
    grad_accum: int = Field(1, ge=1, description="micro-batches accumulated into one optimizer step")
    epochs: float | None = Field(5, gt=0, description="length of the run in passes over the data (ignored if max_steps is set)")
    max_steps: int | None = Field(None, ge=1, description="length of the run in optimizer steps")
    max_minutes: float | None = Field(None, gt=0, description="stop after this many minutes of training in this "
                                      "invocation, writing weights and a checkpoint as at the end (--resume continues)")
    budget_minutes: float | None = Field(None, gt=0, description="the whole run's wall-clock length: its step count is "
                                         "set from the step rate measured in its first steps (replacing max_steps and "
                                         "epochs), so learning-rate warm-up and decay end with the budget")
    lr: float = Field(2e-4, gt=0)
    lr_d: float | None = Field(None, gt=0, description="discriminator learning rate (defaults to lr)")
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto: time a few training steps in fp32 and in bf16 (fp16 too on GPUs) on this machine and use "
                           "the faster, fp32 on a near tie (cached per machine and model shape); no: fp32")
    channels_last: bool = True
    compile: bool = Field(False, description="torch.compile the networks (slow to start; pays off on long GPU runs)")
    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v):
        return "no" if v is False else v  # `mixed_precision: no` in YAML arrives as False

    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA of generator weights; 0 disables")
    seed: int = 0
    log_every: int = Field(10, ge=1)
    sample_every: int = Field(500, ge=1, description="steps between sample grids from fixed noise")
    eval_every: int | None = Field(None, ge=1, description="steps between in-training evaluations (FID for image models, "
                                                             "validation loss for language models); None = off")
    eval_samples: int = Field(2000, ge=100, description="samples per in-training evaluation (language models: this many "
                                                         "validation windows, evenly strided across the held-out split; "
                                                         "all of them when it holds fewer)")
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)


class Config(Strict):
    name: str = "run"
    description: str = ""
    family: str = Field("gan", description="model family: gan, vae, lm (see genforge.methods.METHODS)")
    data: DataConfig = DataConfig()
    model: dict[str, Any] = Field(default_factory=dict, description="family-specific; validated by the method")
    train: TrainConfig = TrainConfig()


    @field_validator("family")
    @classmethod
    def _known_family(cls, v):
        from genforge.methods import METHODS

        if v not in METHODS:
            raise ValueError(f"unknown model family '{v}'; known: {', '.join(METHODS)}")
        return v


def presets_dir() -> Path:
    return Path(str(resources.files("genforge") / "configs"))


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description."""
    out = {}
    for path in sorted(presets_dir().glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        out[path.stem] = str(raw.get("description", "")).strip().splitlines()[0] if raw.get("description") else ""
    return out


def read_raw(preset_or_path: str) -> dict[str, Any]:
    """A preset name or a YAML/JSON file path -> the raw dict (not yet validated)."""
    path = Path(preset_or_path)
    if not (path.suffix in (".yaml", ".yml", ".json") or path.exists()):
        path = presets_dir() / f"{preset_or_path}.yaml"
        if not path.exists():
            names = sorted(list_presets())
            close = difflib.get_close_matches(preset_or_path, names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UserError(
                f"Unknown preset '{preset_or_path}'.{hint} Available presets: {', '.join(names)}; "
                "or pass the path of a YAML config file."
            )
    if not path.exists():
        raise UserError(f"Config file not found: {path}. Pass a preset name (see `genforge presets`) or an existing YAML file.")
    try:
        raw = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise UserError(f"Cannot parse config file {path}: {e}") from None
    if not isinstance(raw, dict):
        raise UserError(f"Config file {path} must hold a mapping (key: value), not {type(raw).__name__}.")
    return raw


def _fields_of(model: type[BaseModel] | None, path: list[str]) -> type[BaseModel] | None:
    """The pydantic model class found at `path` inside `model`, or None when the path leads into a free dict."""
    for key in path:
        if model is None:
            return None
        field = model.model_fields.get(key)
        if field is None:
            return None
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model


def apply_overrides(raw: dict[str, Any], overrides: list[str], model_schema: type[BaseModel] | None = None) -> dict[str, Any]:
    """Apply `a.b=c` strings; values parse as YAML (so 2e-4, true, null, [1,2] work). Unknown keys fail here."""
    raw = json.loads(json.dumps(raw))  # deep copy
    for item in overrides:
        if "=" not in item:
            raise UserError(f"Bad override '{item}': use KEY=VALUE, e.g. --set train.lr=2e-4")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise UserError(f"Bad override key '{key}': use dotted names such as train.lr")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, bool) and value.strip().lower() not in ("true", "false"):
            parsed = value.strip()  # YAML 1.1 reads no/yes/on/off as booleans; keep the word
        schema: type[BaseModel] | None = Config
        node = raw
        for depth, part in enumerate(parts):
            if schema is None and depth == 1 and parts[0] == "model":
                schema = model_schema
            if schema is not None and part not in schema.model_fields:
                where = ".".join(parts[:depth]) or "the top level"
                raise UserError(
                    f"Unknown config key '{'.'.join(parts[: depth + 1])}'. Valid keys at {where}: "
                    f"{', '.join(schema.model_fields)}."
                )
            if depth == len(parts) - 1:
                node[part] = parsed
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise UserError(f"Cannot set '{key}': '{part}' is a value, not a section.")
                schema = _fields_of(schema, [part]) if schema is not None else None
    return raw


def format_validation_error(err: ValidationError, schema: type[BaseModel], prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        full = f"{prefix}{loc}"
        if e["type"] == "extra_forbidden":
            parent = _fields_of(schema, [str(p) for p in e["loc"][:-1]])
            valid = ", ".join(parent.model_fields) if parent is not None else ""
            lines.append(f"Unknown config key '{full}'." + (f" Valid keys here: {valid}." if valid else ""))
        else:
            lines.append(f"Bad value for '{full}': {e['msg']} (got {e.get('input')!r}).")
    return " ".join(lines)


def validate(raw: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise UserError(format_validation_error(e, Config)) from None
