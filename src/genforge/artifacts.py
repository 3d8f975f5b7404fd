"""A trained model as a directory: `config.json` + `model.safetensors` (+ `tokenizer.json` for text), and
`genforge.load(dir)`, which returns an ImageGenerator or a TextGenerator.

Loading reads JSON and safetensors only, never pickle, so opening someone else's model runs no code.
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from genforge import precision as prec
from genforge.data import from_model_range
from genforge.errors import UserError
from genforge.labels import label_index, label_indices
from genforge.marking import Marking
from genforge.text_jobs import TextJob, joined, run_jobs
from genforge.files import atomic_write_text, save_tensors
from genforge.methods import DataSpec, get_method

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
BEST_WEIGHTS_FILE = "model-best.safetensors"  # best in-training evaluation score, when evaluation was on


def write_config(run_dir: Path, meta: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")


def save_weights(run_dir: Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                 name: str = WEIGHTS_FILE) -> Path:
    return save_tensors(run_dir / name, state_dict, metadata)


def read_config(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise UserError(f"Run directory not found: {run_dir}. Pass the --out folder of a `genforge train` run.")
    if not path.exists():
        raise UserError(f"{run_dir} is not a genforge run: it has no {CONFIG_FILE}. Pass the --out folder of a `genforge train` run.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); the run directory is damaged.") from None


def _network_shapes(net: torch.nn.Module) -> list:
    return [[k, list(p.shape)] for k, p in net.named_parameters()]


class _Generator(Marking, ABC):
    """What image and text generators share: the precision generation runs in, chosen at load time.

    `auto` times one unit of generation (a batch of images, a short run of decode steps) in each
    precision this device runs fast and keeps the faster, fp32 on a near tie (genforge.precision);
    the verdict is cached per machine and model shape.
    """

    PROBE_BATCH: int = 1
    precision: prec.Verdict

    @abstractmethod
    def _generation_steps(self, names: list[str]) -> dict[str, Callable[[], object]]:
        """{precision: one unit of this generator's work in that precision}, for the probe."""

    def _use_precision(self, precision: str) -> None:
        family = self.meta.get("family", "?")
        sig = prec.signature(family, _network_shapes(self.net), self.PROBE_BATCH)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            self.precision = prec.decide(precision, self.device, f"generate {family} batch {self.PROBE_BATCH}", sig,
                                         self._generation_steps, budget_s=1.0)
        self.dtype = prec.autocast_dtype(self.precision.used)

    def _autocast(self, dtype: torch.dtype | None):
        return prec.autocast(self.device.type, dtype)

    def _weights_path(self) -> Path:
        return self.run_dir / self.weights_file


@dataclass
class ImageJob:
    """One request's images, ready to render: n, the family's options and what `draw` took from its seed."""

    n: int
    options: dict
    drawn: dict[str, torch.Tensor]
    calls: int = 0  # the network's forward passes these images cost, in images (what a server limits)


class ImageGenerator(_Generator):
    """A loaded image model: `generate(n, seed, labels)` -> uint8 (N, H, W, C)."""

    PROBE_BATCH = 64
    modality = "image"

    def __init__(self, run_dir: Path, meta: dict, net: torch.nn.Module, device: torch.device,
                 weights_file: str = WEIGHTS_FILE, precision: str = "no"):
        self.run_dir, self.meta, self.net, self.device = run_dir, meta, net, device
        self.weights_file = weights_file  # which weights were loaded: model.safetensors or model-best.safetensors
        data = meta["data"]
        self.spec = DataSpec(data["height"], data["width"], data["channels"], len(data.get("classes") or []))
        self.method = get_method(meta["family"])
        self.classes: list[str] = list(data.get("classes") or [])
        self.conditional: bool = bool(meta["model"].get("conditional", False))
        self._use_precision(precision)

    def _generation_steps(self, names):
        def step_in(dtype):
            def step():
                rng = torch.Generator().manual_seed(0)
                with torch.no_grad(), self._autocast(dtype):
                    self.method.sample(self.net, self.spec, self.PROBE_BATCH, None, rng, self.device)
            return step

        return {name: step_in(prec.autocast_dtype(name)) for name in names}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.spec.height, self.spec.width, self.spec.channels)

    def label_index(self, label: int | str) -> int:
        """A class index from an int or a class name ("7", "Sneaker")."""
        return label_index(self.classes, label)

    def options(self) -> dict[str, dict]:
        """This family's generation options beyond n / seed / labels, with this run's defaults:
        {name: {type, default, min, max, help[, choices]}}."""
        return {name: o.describe() for name, o in self._known_options().items()}

    def _known_options(self):
        return self.method.options_for(self.meta.get("model") or {})

    def _options(self, options: dict) -> dict:
        """The options checked against their ranges, the run's defaults filled in for those not given (so two
        requests that differ only in spelling a default out render together)."""
        known = self._known_options()
        unknown = [k for k in options if k not in known]
        if unknown:
            have = f"Its options: {', '.join(known)}." if known else "It takes no options beyond n, seed and labels."
            raise UserError(f"{', '.join(unknown)}: not an option of this {self.meta.get('family')} model. {have}")
        given = {k: known[k].check(k, v) for k, v in options.items() if v is not None}
        return {k: given.get(k, o.default) for k, o in known.items()}

    def _labels(self, labels, n: int) -> torch.Tensor | None:
        """One class index per image: from one label or a list; every class in turn when none is given."""
        if labels is None:
            return torch.arange(n) % self.spec.num_classes if self.conditional else None
        return torch.tensor(label_indices(self.classes, self.conditional, labels, n), dtype=torch.long)

    def _rng(self, seed: int | None) -> torch.Generator:
        return torch.Generator().manual_seed(int(seed) if seed is not None else int(torch.seed() % 2**63))

    @torch.no_grad()
    def generate(self, n: int, seed: int | None = None, labels=None, batch_size: int = 500, progress=None,
                 shard: tuple[int, int] = (0, 1), **options) -> np.ndarray:
        """n images as uint8 (N, H, W, C). `labels`: one label (int or class name) or one per image;
        `options`: the family's own (`options()`), e.g. temperature for a VAE, sampler and steps for diffusion;
        `progress(done, total)` is called after each network call of a multi-step sampler.

        `shard=(i, k)`: only the i-th of k consecutive parts of the n rows. Every part draws all n rows' noise
        (cheap) and renders its own, so the k parts joined are exactly the images of one process."""
        if n < 1:
            raise UserError(f"n must be at least 1, got {n}.")
        options = self._options(options)
        label_t = self._labels(labels, n)
        rng = self._rng(seed)
        part, parts = shard
        lo, hi = n * part // parts, n * (part + 1) // parts  # the rows this part renders
        out, batches = [], -(-(hi - lo) // batch_size) if hi > lo else 1
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            lab = label_t[start : start + m] if label_t is not None else None
            drawn = self.method.draw(self.net, self.spec, m, lab, rng, **options)
            a, z = max(lo, start), min(hi, start + m)
            if a >= z:
                continue
            drawn = {k: v[a - start : z - start] for k, v in drawn.items()}
            b = len(out)
            step = (lambda i, total, b=b: progress(b * total + i, batches * total)) if progress else None
            out.append(self._render([drawn], options, step)[0])
        return np.concatenate(out) if out else np.zeros((0, *self.image_shape), np.uint8)

    def generate_across_processes(self, n: int, **kwargs) -> np.ndarray | None:
        """`generate` split over the processes of `accelerate launch` (one each when not launched): each renders
        its part, the main process gets all n images, identical to one process's for the same seed; the others
        get None."""
        import os

        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return self.generate(n, **kwargs)
        from accelerate import PartialState
        from accelerate.utils import gather_object

        state = PartialState(cpu=self.device.type == "cpu")
        part = self.generate(n, shard=(state.process_index, state.num_processes), **kwargs)
        parts = gather_object([part])  # one array per process, in rank order
        return np.concatenate(parts) if state.is_main_process else None

    def job(self, n: int, seed: int | None = None, labels=None, **options) -> ImageJob:
        """A request for n images, checked and with its randomness drawn now: `run` renders many at once."""
        if n < 1:
            raise UserError(f"n must be at least 1, got {n}.")
        options = self._options(options)
        drawn = self.method.draw(self.net, self.spec, n, self._labels(labels, n), self._rng(seed), **options)
        return ImageJob(n, options, drawn, self.method.network_calls(self.net, n, **options))

    @torch.no_grad()
    def run(self, jobs: list[ImageJob]) -> list[np.ndarray]:
        """Render several jobs (with equal options) in one forward pass: each job's images are those
        `generate` gives for the same n, seed, labels and options, whatever shares the batch."""
        if not jobs:
            return []
        if any(job.options != jobs[0].options for job in jobs):
            raise UserError("Jobs rendered together must have the same options; render the others separately.")
        return self._render([job.drawn for job in jobs], jobs[0].options)

    def _marked(self, images: np.ndarray) -> np.ndarray:
        mark = self.image_mark
        return mark.embed(images) if mark is not None else images

    def _render(self, draws: list[dict], options: dict, progress=None) -> list[np.ndarray]:
        drawn = {k: torch.cat([d[k] for d in draws]) for k in draws[0]}
        with self._autocast(self.dtype):
            x = self.method.render(self.net, drawn, self.device, **options, **({"progress": progress} if progress else {}))
        images = self._marked(from_model_range(x.float()).cpu().numpy())
        sizes = [len(next(iter(d.values()))) for d in draws]
        return np.split(images, np.cumsum(sizes)[:-1])

    # -- latent space: VAEs (encode, decode, reconstruct) and any family with latents (interpolate) ------------
    def _model_input(self, images) -> torch.Tensor:
        """uint8 (N, H, W, C) (numpy or torch) of this model's shape, converted with a notice when it differs."""
        import warnings

        from genforge.data import preprocess, to_model_range

        x = torch.as_tensor(np.asarray(images))
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.dtype != torch.uint8 or x.shape[-1] not in (1, 3):
            raise UserError(f"Images must be uint8 (N, H, W, C) with 1 or 3 channels; got {x.dtype} {tuple(x.shape)}.")
        if tuple(x.shape[1:]) != self.image_shape:
            if x.shape[1] != x.shape[2] and self.spec.height == self.spec.width:
                raise UserError(f"Images of {x.shape[2]}x{x.shape[1]} are not square; this model takes "
                                f"{self.spec.width}x{self.spec.height}. Fix: crop them, or pass files (they are centre-cropped).")
            warnings.warn(f"converted images of shape {tuple(x.shape[1:])} to the model's {self.image_shape}")
            x = preprocess(x, self.spec.height, self.spec.channels)
        return to_model_range(x).to(self.device)

    @torch.no_grad()
    def encode(self, images, labels=None) -> np.ndarray:
        """Latents (posterior means) of images, uint8 (N, H, W, C) -> float32 (N, latent_dim)."""
        x = self._model_input(images)
        return self.method.encode(self.net, x, self._labels(labels, len(x))).float().cpu().numpy()

    @torch.no_grad()
    def decode(self, z, labels=None) -> np.ndarray:
        """Images from latents, float (N, latent_dim) -> uint8 (N, H, W, C)."""
        z = torch.as_tensor(np.asarray(z), dtype=torch.float32, device=self.device)
        if z.dim() == 1:
            z = z.unsqueeze(0)
        return from_model_range(self.method.decode(self.net, z, self._labels(labels, len(z))).float()).cpu().numpy()

    def reconstruct(self, images, labels=None) -> np.ndarray:
        """decode(encode(images)): what the model keeps of each image, uint8 (N, H, W, C)."""
        return self.decode(self.encode(images, labels), labels)

    @torch.no_grad()
    def interpolate(self, a, b, steps: int = 8, labels=None, **options) -> np.ndarray:
        """A walk from a to b in latent space, `steps` images (N, H, W, C) uint8, ends included.

        a, b: seeds (ints; the walk follows the great circle between the two Gaussian draws, where typical
        latents lie) or images (uint8 (H, W, C); encoded, then joined by a straight line)."""
        if steps < 2:
            raise UserError(f"An interpolation needs at least 2 steps, got {steps}.")
        options = self._options(options)
        ends = []
        for end in (a, b):
            if isinstance(end, (int, np.integer)):
                ends.append(self.method.latents(self.net, 1, self._rng(int(end)), self.device, **options)[0])
            else:
                ends.append(torch.as_tensor(self.encode(np.asarray(end)[None], labels))[0].to(self.device))
        shape = ends[0].shape  # a vector (GAN, VAE) or an image-shaped noise (diffusion)
        za, zb = ends[0].flatten(), ends[1].flatten()
        t = torch.linspace(0, 1, steps, device=self.device).unsqueeze(1)
        if all(isinstance(e, (int, np.integer)) for e in (a, b)):
            omega = torch.arccos(torch.clamp(torch.dot(za / za.norm(), zb / zb.norm()), -1, 1))
            if omega.abs() < 1e-4:
                z = (1 - t) * za + t * zb
            else:
                z = (torch.sin((1 - t) * omega) * za + torch.sin(t * omega) * zb) / torch.sin(omega)
        else:
            z = (1 - t) * za + t * zb
        z = z.view(steps, *shape)
        label = self._labels(labels if labels is not None else None, 1)
        lab = label.repeat(steps) if label is not None else None
        return self._marked(from_model_range(self.method.decode(self.net, z, lab).float()).cpu().numpy())

    def save_grid(self, images: np.ndarray, path: str | Path, nrow: int | None = None) -> Path:
        from genforge.visual import save_grid

        return save_grid(images, path, nrow)


class TextGenerator(_Generator):
    """A loaded language model: `generate(prompt, ...)` -> str (or a list for a list of prompts), `stream(...)`.

    A prompt longer than the model's context is cropped to its last block (and the window slides as text
    is generated), and characters outside a char vocabulary become the unknown id: never an error. The
    unknown id is never generated.
    """

    modality = "text"
    PROBE_TOKENS = 16  # one probe step: a one-token prompt continued by this many tokens, batch 1

    def __init__(self, run_dir: Path, meta: dict, net: torch.nn.Module, tokenizer, device: torch.device,
                 weights_file: str = WEIGHTS_FILE, precision: str = "no"):
        self.run_dir, self.meta, self.net, self.tokenizer, self.device = run_dir, meta, net, tokenizer, device
        self.weights_file = weights_file
        self._cast: dict[torch.dtype, torch.nn.Module] = {}  # low-precision copies of the weights, cast once
        self._use_precision(precision)
        self._cast = {k: v for k, v in self._cast.items() if k == self.dtype}  # keep only the chosen copy

    def _net_in(self, dtype: torch.dtype | None) -> torch.nn.Module:
        """The network with its weights in `dtype` (a copy cast once and kept), or the fp32 one."""
        if dtype is None or dtype == next(self.net.parameters()).dtype:
            return self.net
        if dtype not in self._cast:
            self._cast[dtype] = copy.deepcopy(self.net).to(dtype)
        return self._cast[dtype]

    def _generation_steps(self, names):
        from genforge.models.sampling import generate_ids

        def step_in(dtype):
            net = self._net_in(dtype)

            def step():
                generate_ids(net, [[0]], self.PROBE_TOKENS, temperature=1.0, generator=torch.Generator().manual_seed(0),
                             dtype=dtype)
            return step

        return {name: step_in(prec.autocast_dtype(name)) for name in names}

    def run(self, jobs: list[TextJob], use_cache: bool = True, dtype: torch.dtype | None = None
            ) -> Iterator[list[str | None]]:
        """Generate every job as one batch, yielding per step each job's new text ("" while a multi-byte
        character or a possible stop string is incomplete; None once the job has ended). No stop string,
        nor anything after it, is ever handed out. Jobs carry their own limits, sampling settings and
        generator, so a job's text is the same whatever else shares its batch (the server's batching);
        each job's token counts and finish reason are filled in as it runs (`text_jobs.run_jobs`)."""
        from genforge.models.sampling import generate

        for job in jobs:
            if job.rng is None:
                job.rng = torch.Generator().manual_seed(int(torch.seed() % 2**63))
        dtype = self.dtype if dtype is None else dtype

        def bias(b: int, ids: list[int]):
            mark = jobs[b].mark
            return None if mark is None else mark.bias(ids)

        def id_steps(ids, should_stop, banned):
            return generate(self._net_in(dtype), ids, [j.max_new_tokens for j in jobs], [j.temperature for j in jobs],
                            [j.top_k for j in jobs], [j.top_p for j in jobs], generator=[j.rng for j in jobs],
                            should_stop=should_stop, use_cache=use_cache, dtype=dtype, banned_ids=banned,
                            bias=bias if any(j.mark is not None for j in jobs) else None)

        yield from run_jobs(self.tokenizer, jobs, id_steps)

    def jobs(self, prompts: list[str], max_new_tokens: int = 200, temperature: float = 0.8, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None, stop: list[str] | str | None = None,
             mark: bool = True) -> list[TextJob]:
        """One job per prompt, sharing one generator seeded by `seed`: what `generate` runs, and what a
        server request becomes. `mark`: the keyed text mark, when a key is set (`use_mark_key`)."""
        rng = torch.Generator().manual_seed(int(seed) if seed is not None else int(torch.seed() % 2**63))
        text_mark = self.text_mark(self.tokenizer.vocab_size) if mark else None
        return [TextJob(p, max_new_tokens, temperature, top_k, top_p, stop, rng, mark=text_mark) for p in prompts]

    def generate(self, prompt: str | list[str], max_new_tokens: int = 200, temperature: float = 0.8,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop: list[str] | str | None = None, use_cache: bool = True,
                 dtype: torch.dtype | None = None, mark: bool = True) -> str | list[str]:
        """Continue `prompt` (or each prompt of a list, batched) by up to `max_new_tokens` tokens.

        temperature 0 is greedy; top_k / top_p filter the distribution; the same seed gives the same text.
        Generation of a row ends at the first of its `stop` strings, which is left out of the result.
        Returns only the new text, not the prompt. `mark=False`: no text mark even when a key is set.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise UserError("Give at least one prompt.")
        jobs = self.jobs(prompts, max_new_tokens, temperature, top_k, top_p, seed, stop, mark)
        texts = joined(self.run(jobs, use_cache, dtype), len(prompts))
        return texts[0] if isinstance(prompt, str) else texts

    def stream(self, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None, stop: list[str] | str | None = None,
               use_cache: bool = True, dtype: torch.dtype | None = None, mark: bool = True) -> Iterator[str]:
        """Like `generate` for one prompt, yielding text pieces as they are produced."""
        jobs = self.jobs([prompt], max_new_tokens, temperature, top_k, top_p, seed, stop, mark)
        for (piece,) in self.run(jobs, use_cache, dtype):
            if piece:
                yield piece


def load(run_dir: str | Path, device: str | torch.device | None = None,
         select: str | None = None, precision: str = "auto") -> ImageGenerator | TextGenerator:
    """Load a trained run directory for generation (safetensors only).

    `select`: "best" (the weights with the best in-training evaluation), "last", or None = best when the
    run kept one, else last. `precision`: "auto" (time generation in each precision this device runs
    fast and keep the faster; the verdict is cached per machine and model shape), "no" (fp32) or "bf16" /
    "fp16"; the choice and its figures are in the generator's `.precision`.
    """
    if precision not in prec.SETTINGS:
        raise UserError(f"precision must be one of {', '.join(prec.SETTINGS)}; got '{precision}'.")
    run_dir = Path(run_dir)
    meta = read_config(run_dir)
    if select not in (None, "best", "last"):
        raise UserError(f"select must be 'best' or 'last', got '{select}'.")
    if select == "best" and not (run_dir / BEST_WEIGHTS_FILE).exists():
        raise UserError(f"{run_dir} has no {BEST_WEIGHTS_FILE}: it was trained without in-training evaluation "
                        "(train.eval_every). Use --select last.")
    use_best = select == "best" or (select is None and (run_dir / BEST_WEIGHTS_FILE).exists())
    weights = run_dir / (BEST_WEIGHTS_FILE if use_best else WEIGHTS_FILE)
    if not weights.exists():
        raise UserError(f"{run_dir} has no {WEIGHTS_FILE} yet: the run has not finished. "
                        f"Resume it with `genforge train {run_dir / CONFIG_FILE} --out {run_dir} --resume`.")
    method = get_method(meta.get("family", "?"))
    spec = method.spec_from_meta(meta["data"])
    cfg = method.Config.model_validate(meta["model"])
    net = method.build_exported(cfg, spec)
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise UserError(f"Cannot read {weights}: {e}. The file is damaged; re-export it from the last checkpoint by resuming the run.") from None
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{weights} does not match the model in {CONFIG_FILE} (missing {missing[:3]}, unexpected {unexpected[:3]}).")
    dev = torch.device(device) if device else torch.device("cpu")
    net.to(dev).eval()
    if method.modality == "text":
        from genforge.tokenizers import load_tokenizer

        if not (run_dir / "tokenizer.json").exists():
            raise UserError(f"{run_dir} has no tokenizer.json, which a text model needs; the run directory is incomplete.")
        return TextGenerator(run_dir, meta, net, load_tokenizer(run_dir), dev, weights.name, precision)
    return ImageGenerator(run_dir, meta, net, dev, weights.name, precision)
