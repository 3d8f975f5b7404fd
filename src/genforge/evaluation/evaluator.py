"""Evaluator networks: small CNN classifiers that genforge trains itself on the real data.

Why not Inception-v3: its weights must be downloaded, it was trained on ImageNet photos (28x28 digits
are far outside its domain) and it costs ~6 GFLOP per image. A classifier trained on the dataset
itself is offline, in-domain and ~1000x cheaper; its penultimate layer gives the features for
FID/KID/precision/recall and its logits the class predictions. The standard Inception FID stays
available as an option (`features.InceptionExtractor`).

An evaluator is stored like a model artifact, as `config.json` + `model.safetensors` (loading never
unpickles), in `<root>/<dataset>-v1/`, where root is `$GENFORGE_EVALUATORS` or else
`<data_dir>/evaluators`. It is trained with a fixed seed; its id carries the first 8 hex digits of
the weights' sha256, so metrics computed with different weights (another machine, another device)
are never mistaken for comparable ones.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from genforge import precision as prec
from genforge.data import Augment, augment_batch, from_model_range, load_image_dataset, resolve_data_dir, to_model_range
from genforge.data.registry import EMBEDDED_MNIST_MINI, parse_name
from genforge.errors import UserError
from genforge.evaluation.stored import read_evaluator
from genforge.evaluation.feature_cache import store_reference  # the test features are a free reference cache
from genforge.files import sha256_file

VERSION = "v1"
ROOT_ENV = "GENFORGE_EVALUATORS"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as genforge.data converts RGB to grayscale


@dataclass(frozen=True)
class Recipe:
    """Architecture and training schedule of one dataset's evaluator.

    widths: channels of each stage; a stage is `convs_per_stage` conv-BN-ReLU layers then a 2x max pool.
    stem: channels of one conv-BN-ReLU at full resolution before the first stage (0: none).
    residual: indices of the stages whose pooled output also passes a residual block (x + two
    conv-BN-ReLU at that width): depth where it is cheap, the ResNet-9 layout that trains in few epochs.
    The flattened last stage goes through Linear -> BN -> ReLU to `feature_dim` features (the
    penultimate layer), then Linear to the class logits.

    Training: `optimizer` ("adamw", or "sgd" with Nesterov momentum) under a one-cycle schedule that
    warms up for the `warmup` share of the steps to max_lr and then anneals ("cos" or "linear") to
    ~0; cross-entropy with `label_smoothing`; random crops after `crop_padding` black pixels and flips.
    """

    widths: tuple[int, ...]
    convs_per_stage: int
    feature_dim: int
    epochs: float
    batch_size: int
    max_lr: float
    weight_decay: float = 0.0
    crop_padding: int = 0
    hflip: bool = False
    stem: int = 0
    residual: tuple[int, ...] = ()
    optimizer: str = "adamw"
    warmup: float = 0.2
    anneal: str = "cos"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd") or self.anneal not in ("cos", "linear"):
            raise ValueError(f"recipe: optimizer must be adamw or sgd and anneal cos or linear, got "
                             f"{self.optimizer!r}, {self.anneal!r}")
        if any(not 0 <= i < len(self.widths) for i in self.residual):
            raise ValueError(f"recipe: residual stages {self.residual} outside 0..{len(self.widths) - 1}")

    def arch(self) -> dict:
        """What `_build` needs to rebuild the network; stored in the evaluator's config.json."""
        return {"widths": list(self.widths), "convs_per_stage": self.convs_per_stage,
                "feature_dim": self.feature_dim, "stem": self.stem, "residual": list(self.residual)}


# MNIST: 2 epochs give 99.37% test accuracy; 12.5 s on 2 idle CPU cores with bf16 autocast (AVX512-BF16),
# ~2 minutes when other work shares the cores. Fashion-MNIST and CIFAR-10 get wider nets, more epochs and
# crop augmentation (GPU-sized jobs); flips only where the data is mirror-symmetric.
RECIPES: dict[str, Recipe] = {
    "mnist": Recipe(widths=(32, 64), convs_per_stage=1, feature_dim=128, epochs=2, batch_size=128, max_lr=3e-3),
    "fashion-mnist": Recipe(widths=(32, 64), convs_per_stage=2, feature_dim=128, epochs=12, batch_size=128,
                            max_lr=3e-3, weight_decay=0.05, crop_padding=2),
    "cifar10": Recipe(widths=(64, 128, 256), convs_per_stage=2, feature_dim=256, epochs=30, batch_size=256,
                      max_lr=4e-3, weight_decay=0.05, crop_padding=4, hflip=True),
    # A third party's JPEG-75 copy of CIFAR-10: other pixels than cifar10, so its own evaluator. Sized for a
    # 2-core CPU, aiming at >= 85% test accuracy: the ResNet-9 layout (residual blocks, SGD-Nesterov, one-cycle
    # with linear warm-up and decay, label smoothing 0.2, crop + flip) at 3/8 of its width, without its 32x32
    # prep conv (full-resolution layers run at about half the FLOP rate on a CPU), a residual block per stage.
    # 110 MFLOP per image forward, a third of the cifar10 net. Measured: 10 epochs reach 85.24% test accuracy in
    # 43 minutes on 2 AVX2 EPYC cores in fp32 (partly shared with other jobs; benchmarks/RESULTS.md).
    "cifar10-jpeg": Recipe(widths=(48, 96, 192), convs_per_stage=1, residual=(0, 1, 2), feature_dim=256, epochs=10,
                           batch_size=256, optimizer="sgd", max_lr=0.2, weight_decay=5e-4, warmup=0.25,
                           anneal="linear", label_smoothing=0.2, crop_padding=4, hflip=True),
}
EVALUATOR_DATASETS: tuple[str, ...] = tuple(RECIPES)
# Datasets whose images come from another dataset's domain: they share its evaluator. The value is
# (evaluator dataset, split of it that holds the images this dataset trains on).
SHARED_DOMAIN = {EMBEDDED_MNIST_MINI: ("mnist", "test")}


def available_text() -> str:
    return f"{', '.join(EVALUATOR_DATASETS)} ({EMBEDDED_MNIST_MINI} uses the mnist one)"


def evaluator_domain(dataset: str) -> tuple[str, str]:
    """(evaluator dataset, split holding the training images) for a dataset name as written in a run."""
    try:
        kind, key = parse_name(dataset)
    except UserError:
        kind, key = "unknown", dataset
    if key in SHARED_DOMAIN:
        return SHARED_DOMAIN[key]
    if kind == "standard" and key in RECIPES:
        return key, "train"
    what = "a folder of images" if kind == "folder" else f"'{dataset}'"
    raise UserError(f"No evaluator for {what}: genforge's metrics need a classifier trained on the same data, "
                    f"and it has them for {available_text()}.")


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class Residual(nn.Module):
    """x + branch(x): a block that adds depth without making the signal path longer to train through."""

    def __init__(self, branch: nn.Sequential):
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class EvaluatorNet(nn.Module):
    """The classifier; `features` is its penultimate layer. See Recipe for the layout."""

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int, widths: tuple[int, ...],
                 convs_per_stage: int, feature_dim: int, stem: int = 0, residual: tuple[int, ...] = ()):
        super().__init__()
        # One flat Sequential, with Residual modules where asked: the parameter names of the plain
        # layout stay those of the evaluators stored before stems and residual blocks existed.
        layers: list[nn.Module] = []
        ch = in_channels
        if stem:
            layers += _conv_bn_relu(ch, stem)
            ch = stem
        for i, w in enumerate(widths):
            for _ in range(convs_per_stage):
                layers += _conv_bn_relu(ch, w)
                ch = w
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
            if i in residual:
                layers.append(Residual(nn.Sequential(*_conv_bn_relu(w, w), *_conv_bn_relu(w, w))))
        self.body = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(ch * height * width, feature_dim, bias=False),
                                   nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # Flatten needs the NCHW order the Linear was trained on; the conv body runs channels-last.
        return self.embed(self.body(x).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _fold_batchnorm(seq: nn.Sequential) -> nn.Sequential:
    """A copy of an eval-mode Sequential with each Conv2d+BatchNorm2d pair folded into one conv."""
    out: list[nn.Module] = []
    mods = list(seq)
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Conv2d) and i + 1 < len(mods) and isinstance(mods[i + 1], nn.BatchNorm2d):
            out.append(fuse_conv_bn_eval(m, mods[i + 1]))
            i += 2
            continue
        out.append(Residual(_fold_batchnorm(m.branch)) if isinstance(m, Residual) else m)
        i += 1
    return nn.Sequential(*out)


class _FusedEvaluator(nn.Module):
    """Inference copy with every BatchNorm folded into the layer before it: same outputs, ~20% faster on CPU."""

    def __init__(self, net: EvaluatorNet):
        super().__init__()
        net = net.eval()
        self.body = _fold_batchnorm(net.body)
        _, linear, bn, _ = net.embed
        self.embed = fuse_linear_bn_eval(linear, bn)
        self.head = net.head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = F.relu(self.embed(self.body(x).contiguous().flatten(1)))
        return f, self.head(f)


def _training_precision(net: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float) -> str:
    """fp32 or bf16 for the evaluator's training, by timing its step in both (genforge.precision): the
    faster depends on the processor, not on a flag. The probe trains a copy and restores the RNG."""
    dev = x.device
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        probe = copy.deepcopy(net)
        opt = torch.optim.AdamW(probe.parameters(), lr=lr)

        def step_in(dtype):
            def step():
                with prec.autocast(dev.type, dtype):
                    loss = F.cross_entropy(probe(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                float(loss)
            return step

        sig = prec.signature([list(p.shape) for p in net.parameters()], list(x.shape))
        verdict = prec.decide("auto", dev, "train evaluator", sig,
                              lambda names: {n: step_in(prec.autocast_dtype(n)) for n in names})
    return verdict.used


def default_device(device: str | torch.device | None = None) -> torch.device:
    """`device`, else this process's GPU (cuda:LOCAL_RANK under `accelerate launch`, so that sharded sampling
    and evaluation put one process on each GPU), else the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def evaluators_root(data_dir: str | Path | None = None, root: str | Path | None = None) -> Path:
    """Where evaluators are cached: `root`, else $GENFORGE_EVALUATORS, else <data_dir>/evaluators."""
    if root is None and os.environ.get(ROOT_ENV, "").strip():
        root = os.environ[ROOT_ENV].strip()
    if root is not None:
        return Path(root).expanduser().resolve()
    beside_data = resolve_data_dir(data_dir) / "evaluators"
    parent = beside_data.parent
    writable = parent.is_dir() and os.access(parent, os.W_OK) and parent.stat().st_mode & 0o222  # root ignores modes
    if beside_data.exists() or writable or not parent.exists():
        return beside_data
    # a read-only data folder (a shared mount): keep evaluators in the user's cache instead
    return Path("~/.cache/genforge/evaluators").expanduser()


def evaluator_name(dataset: str) -> str:
    return f"{dataset}-{VERSION}"


def as_uint8_nhwc(images) -> torch.Tensor:
    """uint8 (N, H, W, C) numpy/tensor as is; float (N, C, H, W) in [-1, 1] (a method's output) quantised
    like a saved image, so the evaluator sees exactly what a user would save."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"expected images as a 4-d array, got {type(images).__name__} "
                         f"{tuple(getattr(images, 'shape', ()))}")
    if images.is_floating_point():
        return from_model_range(images)
    if images.dtype != torch.uint8 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 (N, H, W, C) with C in (1, 3) or float (N, C, H, W) in [-1, 1], got "
                         f"{images.dtype} {tuple(images.shape)}")
    return images


def to_input(x: torch.Tensor, height: int, width: int, channels: int) -> torch.Tensor:
    """float NCHW in [-1, 1] of any size / channel count -> the evaluator's input size and channels."""
    if x.shape[1] == 3 and channels == 1:
        x = (x * torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != channels:
        raise ValueError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return x.contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str, total: int):
    """A rich progress bar on stderr, or a no-op; yields `advance(k, info=None)` (None keeps the info text)."""
    if not enabled:
        yield lambda k=1, info=None: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn(f"[bold]{description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("<"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                  console=Console(stderr=True), refresh_per_second=4) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(k: int = 1, info: str | None = None) -> None:
            if info is None:
                bar.update(task, advance=k)
            else:
                bar.update(task, advance=k, info=info)

        yield advance


@dataclass
class Evaluator:
    """A loaded evaluator: `extract(images)` -> (features, logits), plus what it was trained on."""

    dataset: str
    directory: Path
    config: dict
    net: nn.Module  # _FusedEvaluator
    device: torch.device
    data_dir: Path
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def id(self) -> str:
        return f"{evaluator_name(self.dataset)}-{self.config['weights_sha256'][:8]}"

    @property
    def classes(self) -> list[str]:
        return list(self.config["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.config["classes"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        h, w, c = self.config["image_shape"]
        return int(h), int(w), int(c)

    @property
    def feature_dim(self) -> int:
        return int(self.config["arch"]["feature_dim"])

    @property
    def test_accuracy(self) -> float:
        return float(self.config["test_accuracy"])

    @torch.no_grad()
    def extract(self, images, batch_size: int = 500, progress: bool = False,
                description: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
        """Features (N, feature_dim) and class logits (N, classes), float32 on the CPU.

        images: uint8 (N, H, W, C) (numpy or tensor) or float (N, C, H, W) in [-1, 1]; any size and
        1 or 3 channels (resized and converted to the evaluator's input). Runs in fp32 so features do
        not depend on whether the hardware has bf16 units.
        """
        images = as_uint8_nhwc(images)
        h, w, c = self.image_shape
        feats, logits = [], []
        with progress_bar(progress, description, len(images)) as advance:
            for start in range(0, len(images), batch_size):
                x = to_model_range(images[start:start + batch_size].to(self.device))
                f, lg = self.net(to_input(x, h, w, c))
                feats.append(f.float().cpu())
                logits.append(lg.float().cpu())
                advance(len(x))
        if not feats:
            return torch.zeros(0, self.feature_dim), torch.zeros(0, self.num_classes)
        return torch.cat(feats), torch.cat(logits)


def _build(config: dict) -> EvaluatorNet:
    a = config["arch"]
    h, w, c = config["image_shape"]
    # stem / residual are absent from evaluators stored before they existed: those are plain nets
    return EvaluatorNet(c, h, w, len(config["classes"]), tuple(a["widths"]), a["convs_per_stage"], a["feature_dim"],
                        a.get("stem", 0), tuple(a.get("residual", ())))


def _optimizer(recipe: Recipe, params) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.max_lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(params, lr=recipe.max_lr, weight_decay=recipe.weight_decay)


def _open(directory: Path, dataset: str, data_dir: Path, device: torch.device) -> Evaluator:
    fix = f"Fix: delete {directory} and run `genforge evaluator train {dataset}`."
    config, net = read_evaluator(directory, _build, fix)
    if config.get("dataset") != dataset:
        raise UserError(f"{directory} holds an evaluator for '{config.get('dataset')}', not '{dataset}'. {fix}")
    net = _FusedEvaluator(net).to(device).eval().to(memory_format=torch.channels_last).requires_grad_(False)
    return Evaluator(dataset, directory, config, net, device, data_dir)


def load_evaluator(dataset: str, data_dir: str | Path | None = None, *, root: str | Path | None = None,
                   device: str | torch.device | None = None, train_if_missing: bool = True,
                   progress: bool = False) -> Evaluator:
    """The evaluator for `dataset` (a run's dataset name; mnist-mini maps to mnist), trained on first use."""
    domain, _ = evaluator_domain(dataset)
    data_dir = resolve_data_dir(data_dir)
    directory = evaluators_root(data_dir, root) / evaluator_name(domain)
    dev = default_device(device)
    if not (directory / WEIGHTS_FILE).exists():
        if not train_if_missing:
            raise UserError(f"No {domain} evaluator in {directory.parent}. Fix: run `genforge evaluator train {domain}`.")
        return train_evaluator(domain, data_dir, root=root, device=dev, progress=progress)
    return _open(directory, domain, data_dir, dev)


def train_evaluator(dataset: str, data_dir: str | Path | None = None, *, root: str | Path | None = None,
                    epochs: float | None = None, max_steps: int | None = None, train_subset: int | None = None,
                    seed: int = 0, device: str | torch.device | None = None, progress: bool = False,
                    force: bool = False) -> Evaluator:
    """Train `dataset`'s evaluator with a fixed seed and store it in the cache; returns it loaded.

    epochs / max_steps / train_subset shorten training (tests, quick checks); the stored config says
    what was done and the test accuracy reached, and the weights hash makes the id differ.
    The folder is written under a temporary name and renamed, so a killed run leaves no half evaluator.
    """
    domain, _ = evaluator_domain(dataset)
    recipe = RECIPES[domain]
    if (epochs is not None and not epochs > 0) or (max_steps is not None and max_steps < 1):
        raise UserError("epochs must be > 0 and max_steps >= 1.")
    data_dir = resolve_data_dir(data_dir)
    root_dir = evaluators_root(data_dir, root)
    target = root_dir / evaluator_name(domain)
    dev = default_device(device)
    if target.exists() and not force:
        return _open(target, domain, data_dir, dev)
    train_set = load_image_dataset(domain, data_dir, "train")
    test_set = load_image_dataset(domain, data_dir, "test")
    try:
        root_dir.mkdir(parents=True, exist_ok=True)
        tmp = root_dir / f".tmp-{evaluator_name(domain)}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise UserError(f"Cannot write the evaluator cache in {root_dir} ({e.strerror}). "
                        f"Fix: set ${ROOT_ENV} to a writable folder.") from None

    images, labels = train_set.images, train_set.labels
    if train_subset is not None:  # a seeded random subset: a dataset stored class by class has one class up front
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:train_subset]
        images, labels = images[keep], labels[keep]
    n, h, w, c = images.shape
    if n < recipe.batch_size:
        raise UserError(f"train_subset={n} is smaller than one batch ({recipe.batch_size} images).")
    torch.manual_seed(seed)
    net = EvaluatorNet(c, h, w, len(train_set.classes), recipe.widths, recipe.convs_per_stage, recipe.feature_dim,
                       recipe.stem, recipe.residual).to(dev).to(memory_format=torch.channels_last)
    steps_per_epoch = n // recipe.batch_size
    total = max_steps if max_steps is not None else math.ceil((epochs or recipe.epochs) * steps_per_epoch)
    total = max(int(total), 1)
    opt = _optimizer(recipe, net.parameters())
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.max_lr, total_steps=total, pct_start=recipe.warmup,
                                                anneal_strategy=recipe.anneal)
    augment = Augment(crop_padding=recipe.crop_padding, hflip=recipe.hflip)
    x_all, y_all = images.to(dev), labels.to(dev)
    first = torch.arange(recipe.batch_size, device=dev)
    bf16 = _training_precision(net, to_model_range(x_all[first]).contiguous(memory_format=torch.channels_last),
                               y_all[first], recipe.max_lr) == "bf16"
    t0 = time.perf_counter()
    perm, epoch = None, -1
    with progress_bar(progress, f"training the {domain} evaluator", total) as advance:
        for step in range(total):
            e, pos = divmod(step, steps_per_epoch)
            if e != epoch:
                epoch = e
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + e)).to(dev)
            idx = perm[pos * recipe.batch_size:(pos + 1) * recipe.batch_size]
            x = to_model_range(x_all[idx]).contiguous(memory_format=torch.channels_last)
            if augment.enabled():
                x = augment_batch(x, augment, torch.Generator().manual_seed(seed * 7_919 + step))
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y_all[idx], label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            advance(1, f"loss {loss.item():.3f}" if step % 20 == 0 else None)
    seconds = time.perf_counter() - t0

    net.eval()
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp / WEIGHTS_FILE))
    config = {
        "genforge_evaluator": 1,
        "version": VERSION,
        "dataset": domain,
        "classes": list(train_set.classes),
        "image_shape": [h, w, c],
        "arch": recipe.arch(),
        "training": {**asdict(recipe), "widths": list(recipe.widths), "residual": list(recipe.residual), "seed": seed,
                     "steps": total, "epochs_done": round(total * recipe.batch_size / n, 3), "train_images": n,
                     "precision": "bf16" if bf16 else "fp32", "device": str(dev), "seconds": round(seconds, 1),
                     "torch": torch.__version__},
        "weights_sha256": sha256_file(tmp / WEIGHTS_FILE),
    }
    evaluator = Evaluator(domain, tmp, {**config, "test_accuracy": 0.0},
                          _FusedEvaluator(net).to(memory_format=torch.channels_last).requires_grad_(False), dev, data_dir)
    feats, logits = evaluator.extract(test_set.images)
    config["test_accuracy"] = round(float((logits.argmax(1) == test_set.labels).float().mean()), 5)
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    store_reference(tmp, "test", feats, logits, test_set.labels, config["weights_sha256"])
    if target.exists():  # force: swap the old one out only once the new one is complete
        old = root_dir / f".old-{evaluator_name(domain)}-{os.getpid()}"
        os.replace(target, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first: use its evaluator
        shutil.rmtree(tmp, ignore_errors=True)
    return _open(target, domain, data_dir, dev)
