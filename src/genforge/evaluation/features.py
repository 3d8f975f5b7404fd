"""Feature extractors as torchmetrics expects them, and the optional standard Inception-v3.

`EvaluatorFeatures` lets the project's evaluator be plugged into any torchmetrics image metric:

    FrechetInceptionDistance(feature=EvaluatorFeatures(evaluator))

torchmetrics feeds it NCHW images (uint8, or float in [0, 1] with normalize=True) and probes it with
a dummy (1, 3, 299, 299) image, so it accepts any size and channel count and converts to the
evaluator's input.

`InceptionExtractor` is the standard FID network (torch-fidelity's port of the TF Inception-v3, the
one torchmetrics uses), built from a weights file the user supplies, as genforge downloads nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from genforge.errors import UserError
from genforge.files import sha256_file
from genforge.evaluation.evaluator import Evaluator, progress_bar, to_input

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"


class EvaluatorFeatures(nn.Module):
    """torchmetrics `feature=` module: NCHW images of any size / channels -> evaluator features."""

    def __init__(self, evaluator: Evaluator, logits: bool = False):
        super().__init__()
        self.evaluator = evaluator
        self.logits = logits  # True: class logits (for InceptionScore) instead of features
        self.num_features = evaluator.num_classes if logits else evaluator.feature_dim

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float() * 2 - 1
        h, w, c = self.evaluator.image_shape
        features, logits = self.evaluator.net(to_input(x.to(self.evaluator.device), h, w, c))
        return logits if self.logits else features


class InceptionExtractor:
    """Inception-v3 pool features (2048) and logits (1008) as in the standard FID / IS protocol."""

    def __init__(self, weights: str | Path, device: torch.device):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"Inception weights not found: {path}. Fix: download {INCEPTION_URL} on a machine "
                            "with internet access and pass its path to --inception-weights.")
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError:
            raise UserError("The Inception-v3 FID needs torch-fidelity. Fix: pip install 'genforge[inception]' "
                            "(or drop --inception-weights to use the genforge evaluator only).") from None
        # torch-fidelity unpickles the file without restrictions. Loading it first with
        # weights_only=True proves it holds nothing but tensors, so that second load runs no code.
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # not a torch file, or a pickle with code in it
            raise UserError(f"{path} is not a plain PyTorch weights file ({type(e).__name__}). "
                            f"Fix: use {INCEPTION_FILE} from {INCEPTION_URL}.") from None
        if not isinstance(state, dict) or "fc.weight" not in state or tuple(state["fc.weight"].shape) != (1008, 2048):
            raise UserError(f"{path} does not hold the FID Inception-v3 weights. Fix: use {INCEPTION_FILE} "
                            f"from {INCEPTION_URL}.")
        self.weights_sha256 = sha256_file(path)
        self.id = f"inception-v3-{self.weights_sha256[:8]}"
        self.device = device
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=str(path)).to(device).eval()

    @torch.no_grad()
    def extract(self, images_u8_nhwc: torch.Tensor, batch_size: int = 100, progress: bool = False,
                description: str = "inception features") -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (N, H, W, C) -> (pool features, logits); the network resizes to 299x299 itself."""
        feats, logits = [], []
        with progress_bar(progress, description, len(images_u8_nhwc)) as advance:
            for start in range(0, len(images_u8_nhwc), batch_size):
                x = images_u8_nhwc[start:start + batch_size].to(self.device).permute(0, 3, 1, 2)
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                f, lg = self.net(x.contiguous())
                feats.append(f.float().cpu())
                logits.append(lg.float().cpu())
                advance(len(x))
        return torch.cat(feats), torch.cat(logits)
