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

The parts: evaluator_net.py (recipes, networks), evaluator_cache.py (where evaluators are stored, a loaded
`Evaluator`), evaluator_training.py (`train_evaluator`); this module is their public face, with `load_evaluator`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from genforge.data import resolve_data_dir
from genforge.errors import UserError
from genforge.evaluation.evaluator_cache import (_LUMA, CONFIG_FILE, ROOT_ENV, VERSION, WEIGHTS_FILE,  # noqa: F401
                                                 Evaluator, _open, as_uint8_nhwc, default_device, evaluator_name,
                                                 evaluators_root, progress_bar, to_input)
from genforge.evaluation.evaluator_net import (EVALUATOR_DATASETS, RECIPES, SHARED_DOMAIN,  # noqa: F401
                                               EvaluatorNet, Recipe, Residual, _build, _conv_bn_relu,
                                               _fold_batchnorm, _FusedEvaluator, available_text, evaluator_domain)
from genforge.evaluation.evaluator_training import _optimizer, _training_precision, train_evaluator  # noqa: F401
from genforge.evaluation.stored import use_shipped


def load_evaluator(dataset: str, data_dir: str | Path | None = None, *, root: str | Path | None = None,
                   device: str | torch.device | None = None, train_if_missing: bool = True,
                   progress: bool = False) -> Evaluator:
    """The evaluator for `dataset` (a run's dataset name; mnist-mini maps to mnist), trained on first use."""
    domain, _ = evaluator_domain(dataset)
    data_dir = resolve_data_dir(data_dir)
    directory = evaluators_root(data_dir, root) / evaluator_name(domain)
    dev = default_device(device)
    if not (directory / WEIGHTS_FILE).exists() and not use_shipped(directory):
        if not train_if_missing:
            raise UserError(f"No {domain} evaluator in {directory.parent}. Fix: run `genforge evaluator train {domain}`.")
        print(f"No {domain} evaluator in {directory.parent} and genforge ships none for it: training it now, once "
              f"(minutes on a CPU; `genforge evaluator train {domain}` does this ahead).", file=sys.stderr, flush=True)
        return train_evaluator(domain, data_dir, root=root, device=dev, progress=progress)
    return _open(directory, domain, data_dir, dev)
