"""Held-out likelihood of a model that has one (a VAE): the number the VAE literature reports.

The family supplies the per-image terms (`likelihood_terms`: an importance-sampled log p(x) with k
samples, and the ELBO's reconstruction and KL terms); this file picks the real test images, fixes
their binarisation with the seed, batches, averages and converts units: nats per image for binarised
images (as quoted for MNIST), bits per dimension for 8-bit ones (nats / (H * W * C * ln 2)).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from genforge.data import load_image_dataset
from genforge.data.dataset import evenly_spaced
from genforge.errors import UserError


def has_likelihood(model) -> bool:
    return getattr(model, "method", None) is not None and model.method.likelihood_terms is not None


@torch.no_grad()
def likelihood_metrics(model, data_dir=None, k: int = 100, n: int | None = 1000, seed: int = 0,
                       batch_size: int = 250, progress: bool = False) -> tuple[dict, dict]:
    """(metrics, details) on n test images of the run's dataset evenly strided across the split (test files are
    often ordered, by class or writer, so the first n are no fair sample), all of them when n is None."""
    if k < 1:
        raise UserError(f"k (importance samples) must be at least 1, got {k}.")
    meta = model.meta["data"]
    try:
        ds = load_image_dataset(meta["dataset"], data_dir, "test", image_size=meta["height"], channels=meta["channels"])
    except UserError as e:
        raise UserError(f"The likelihood is measured on held-out images, and {meta['dataset']} has none: {e}") from None
    idx = evenly_spaced(len(ds.images), n)
    images = ds.images[idx]
    labels = ds.labels[idx] if ds.labels is not None and model.conditional else None
    method, net, device = model.method, model.net, model.device
    rng = torch.Generator().manual_seed(seed)
    targets = method.likelihood_targets(net, images, rng).to(device)
    terms: dict[str, list[torch.Tensor]] = {}
    chunks = range(0, len(images), batch_size)
    if progress:
        from rich.progress import track

        chunks = track(chunks, description=f"likelihood (k={k}) of {len(images)} test images", transient=True)
    for s in chunks:
        lab = labels[s : s + batch_size].to(device) if labels is not None else None
        for name, v in method.likelihood_terms(net, targets[s : s + batch_size], lab, k, rng).items():
            terms.setdefault(name, []).append(v.double().cpu())
    t = {name: torch.cat(v) for name, v in terms.items()}
    unit = method.likelihood_unit(net)
    dims = int(np.prod(images.shape[1:]))
    scale = 1.0 if unit == "nats" else 1.0 / (dims * math.log(2))
    suffix = "nats" if unit == "nats" else "bpd"
    nll = float(-t["log_likelihood"].mean()) * scale
    rec, kl = float(t["rec"].mean()) * scale, float(t["kl"].mean()) * scale
    recon = model.reconstruct(images.numpy(), labels=labels.numpy() if labels is not None else None)
    mse = float(((torch.from_numpy(recon).double() - images.double()) / 255.0).pow(2).mean())
    metrics = {f"nll_{suffix}": nll, f"neg_elbo_{suffix}": rec + kl, f"rec_{suffix}": rec, f"kl_{suffix}": kl,
               "reconstruction_mse": mse}
    details = {"likelihood_k": k, "likelihood_n": len(images), "likelihood_unit": unit,
               "likelihood_split": "test", "nll_std_error": float(t["log_likelihood"].std() / math.sqrt(len(images))) * scale}
    return metrics, details
