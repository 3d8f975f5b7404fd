"""The evaluators' networks and the recipes that build and train them (see evaluator.py for what an evaluator is).

A Recipe fixes one dataset's architecture and training schedule; `evaluator_domain` says which evaluator serves a
run's dataset. EvaluatorNet is the classifier that is trained; `_FusedEvaluator` is the inference copy with every
BatchNorm folded into the layer before it, which is what a loaded evaluator runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from genforge.data.registry import EMBEDDED_MNIST_MINI, parse_name
from genforge.errors import UserError


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



def _build(config: dict) -> EvaluatorNet:
    a = config["arch"]
    h, w, c = config["image_shape"]
    # stem / residual are absent from evaluators stored before they existed: those are plain nets
    return EvaluatorNet(c, h, w, len(config["classes"]), tuple(a["widths"]), a["convs_per_stage"], a["feature_dim"],
                        a.get("stem", 0), tuple(a.get("residual", ())))
